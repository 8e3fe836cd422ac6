//! Label values escaped, and label sets rendered once per encode. A container's five [`ids`]
//! labels are on every one of its series, a dozen families over, and its cgroup's (the path in
//! front) on 30-odd more: rendering them once per container, escaped, and writing that text
//! whole keeps prometheus-client's label encoder (a dynamic write for each key, `="`, value
//! and `"`) out of the per-sample path, where it was most of an encode at hundreds of
//! containers. The bytes are the ones the encoder writes for the same labels (`tests.rs` and
//! the golden exposition check it).

use std::fmt::Write as _;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use super::containers::ids;
use crate::model::Container;

/// A label value escaped as the exposition format requires (`\\`, `\"`, `\n`): cgroup names
/// are chosen by whoever created them, and prometheus-client writes values verbatim.
pub(super) struct Escaped<'a>(pub(super) &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        escape(self.0, encoder)
    }
}

/// Writes `value` escaped, in runs: nearly every value needs no escape and is one write (not
/// one per character, which was most of an encode at hundreds of containers).
fn escape(value: &str, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..i])?;
        out.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[i + 1..];
    }
    out.write_str(rest)
}

/// Labels rendered as the exposition shows them: `key="value",…`, values escaped.
#[derive(Debug, Clone, Default)]
pub(super) struct Rendered {
    /// Every pair, the last one without its closing quote.
    text: String,
    /// Where the last value starts in `text`.
    last_value: usize,
}

impl Rendered {
    /// `labels`, in order.
    pub(super) fn of<'v>(labels: impl IntoIterator<Item = (&'static str, &'v str)>) -> Self {
        let mut r = Rendered::default();
        for (key, value) in labels {
            if !r.text.is_empty() {
                r.text.push_str("\",");
            }
            r.text.push_str(key);
            r.text.push_str("=\"");
            r.last_value = r.text.len();
            // Writing into a String cannot fail.
            let _ = escape(value, &mut r.text);
        }
        r
    }

    /// A container's [`ids`].
    pub(super) fn ids(c: Option<&Container>) -> Self {
        Self::of(ids(c))
    }

    /// `cgroup="path"` followed by `ids` (its container's, rendered).
    pub(super) fn cgroup(path: &str, ids: &Rendered) -> Self {
        let mut r = Self::of([("cgroup", path)]);
        r.text.push_str("\",");
        r.last_value = r.text.len() + ids.last_value;
        r.text.push_str(&ids.text);
        r
    }
}

impl EncodeLabelSet for &Rendered {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client writes label text only through one label's key and value writers:
        // everything before the last value goes out as the key (less the `="` the encoder
        // adds), the last value through the value writer, which closes its quote.
        if self.text.is_empty() {
            return Ok(());
        }
        let mut label = encoder.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(&self.text[..self.last_value - 2])?;
        let mut value = key.encode_label_value()?;
        value.write_str(&self.text[self.last_value..])?;
        value.finish()
    }
}
