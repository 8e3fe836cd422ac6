//! Local image store: imports image archives (`docker save` output or an OCI image layout tar,
//! either possibly gzip-compressed) and hands out unpacked root filesystems, used read-only as
//! the overlayfs lower dir of containers. No registry pulls: offline hosts are normal.
//!
//! Layout under the store root (e.g. /var/lib/berth/images):
//! ```text
//! images/<id>/image.json   metadata (id = hex sha256 of the config blob, docker's image id)
//! images/<id>/rootfs/      all layers applied, unpacked once per id
//! names.json               {"name:tag": "<id>"}: one id per name, so a name moves like a tag
//! tmp/                     imports in progress and removals; emptied by `ImageStore::open`
//! lock, names.lock         flock(2) files coordinating processes that share the store
//! ```
//! An import unpacks into `tmp/`, writes `image.json` (temp file + fsync + rename), syncs the
//! filesystem and renames the directory into `images/`: `list` never sees half an image. Names
//! are updated afterwards in one atomic rewrite of `names.json`.
//!
//! Archives are untrusted: digests are verified (blob digests where the archive names them, the
//! config's `rootfs.diff_ids` for every layer), and layers are applied by [`layer`] without ever
//! leaving the rootfs (see there).

mod archive;
mod compression;
mod digest;
mod layer;
mod store;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use store::ImageStore;

/// Errors importing, finding or removing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image archive {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("{path} is not a tar archive (plain or gzip-compressed): {source}")]
    NotTar {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} looks gzip-compressed but cannot be decompressed: {source}")]
    CorruptGzip {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is compressed with {format}; berth reads plain and gzip-compressed tar only")]
    UnsupportedCompression { path: PathBuf, format: &'static str },
    #[error(
        "{path} contains neither manifest.json (`docker save`) nor index.json (OCI image layout)"
    )]
    NoManifest { path: PathBuf },
    #[error("{path}: {file} is not valid JSON of the expected shape: {source}")]
    BadJson {
        path: PathBuf,
        file: String,
        source: serde_json::Error,
    },
    #[error("{path}: {file}: {reason}")]
    InvalidManifest {
        path: PathBuf,
        file: String,
        reason: String,
    },
    #[error("{path}: {file} is {size} bytes, more than the {limit} bytes allowed for metadata")]
    TooLarge {
        path: PathBuf,
        file: String,
        size: u64,
        limit: u64,
    },
    #[error("{path}: blob {blob} is missing from the archive")]
    MissingBlob { path: PathBuf, blob: String },
    #[error("{path}: digest mismatch for {blob}: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        path: PathBuf,
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: size mismatch for {blob}: expected {expected} bytes, found {actual}")]
    SizeMismatch {
        path: PathBuf,
        blob: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: digest {digest} uses an unsupported algorithm (only sha256 is supported)")]
    UnsupportedDigest { path: PathBuf, digest: String },
    #[error("layer {layer}: cannot read it: {source}")]
    LayerRead {
        layer: String,
        source: std::io::Error,
    },
    #[error("layer {layer}: entry {entry} would escape the root filesystem; refusing the image")]
    UnsafePath { layer: String, entry: String },
    #[error("layer {layer}: entry {entry}: {reason}")]
    InvalidLayer {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("store metadata {path} is corrupt: {source}")]
    Metadata {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "no image matches {reference}: give a name (name:tag), an id or an id prefix of at least \
         {MIN_PREFIX} hex characters"
    )]
    UnknownReference { reference: String },
    #[error("{reference} matches {} images ({}); give more characters", candidates.len(), candidates.join(", "))]
    AmbiguousReference {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A durable write into berth's own store failed; the message names the step and path.
    #[error("image store: {source}")]
    Persist {
        #[from]
        source: crate::fsutil::FsError,
    },
}

impl ImageError {
    /// Whether the error is about the client's input (a bad archive, an unknown reference)
    /// rather than the host (I/O on berth's own store).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            ImageError::Io { .. } | ImageError::Metadata { .. } | ImageError::Persist { .. }
        )
    }
}

pub use crate::model::image::{Image, ImageConfig};

/// Shortest id prefix accepted as a reference.
pub const MIN_PREFIX: usize = 6;

/// Checks an image name and returns it in canonical form: `repo[:tag]` with `:latest` added when
/// the tag is missing. The repository follows docker's rules (lowercase path components
/// separated by `/`, an optional leading registry host with port); it may not be 64 hex
/// characters, which would read as an image id.
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let invalid = |reason| ImageError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > 255 {
        return Err(invalid("it is longer than 255 characters"));
    }
    if name.contains('@') {
        return Err(invalid(
            "digest references (name@sha256:...) cannot be names",
        ));
    }
    let (repo, tag) = match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !tag.starts_with(['.', '-']);
    if !tag_ok {
        return Err(invalid(
            "the tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with . or -",
        ));
    }
    let components: Vec<&str> = repo.split('/').collect();
    let first_is_host = components.len() > 1
        && (components[0].contains(['.', ':']) || components[0] == "localhost");
    for (i, component) in components.iter().enumerate() {
        let ok = if i == 0 && first_is_host {
            valid_host(component)
        } else {
            valid_path_component(component)
        };
        if !ok {
            return Err(invalid(
                "the repository must be lowercase components of [a-z0-9._-] separated by /, \
                 each starting and ending with a letter or digit, optionally after a registry \
                 host[:port]",
            ));
        }
    }
    if repo.len() == 64 && is_hex(repo) {
        return Err(invalid("64 hex characters read as an image id, not a name"));
    }
    Ok(format!("{repo}:{tag}"))
}

fn valid_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn valid_host(c: &str) -> bool {
    let (host, port) = match c.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port
        .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|ch| ch.is_ascii_digit()));
    host_ok && port_ok
}

/// True for a non-empty string of lowercase hex digits.
fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Resolves a reference against the known ids and names, in docker's order: a full id (with or
/// without `sha256:`), then a name, then a unique id prefix of at least [`MIN_PREFIX`] characters.
fn resolve_reference<'a>(
    reference: &str,
    ids: &'a [String],
    names: &std::collections::BTreeMap<String, String>,
) -> Result<&'a str, ImageError> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() == 64
        && let Some(id) = ids.iter().find(|id| *id == hex)
    {
        return Ok(id);
    }
    if let Ok(name) = normalize_name(reference)
        && let Some(target) = names.get(&name)
        && let Some(id) = ids.iter().find(|id| *id == target)
    {
        return Ok(id);
    }
    if hex.len() >= MIN_PREFIX && is_hex(hex) {
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(hex)).collect();
        match matches.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(ImageError::AmbiguousReference {
                    reference: reference.to_string(),
                    candidates: many.iter().map(|id| id[..12].to_string()).collect(),
                });
            }
        }
    }
    Err(ImageError::UnknownReference {
        reference: reference.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_name_without_tag_gets_latest() {
        assert_eq!(normalize_name("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize_name("library/busybox:1.36").unwrap(),
            "library/busybox:1.36"
        );
    }

    #[test]
    fn a_registry_host_with_port_is_not_read_as_a_tag() {
        assert_eq!(
            normalize_name("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_name("registry.example.com:443/team/app:v2").unwrap(),
            "registry.example.com:443/team/app:v2"
        );
    }

    #[test]
    fn bad_names_are_rejected_with_a_reason() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "-a",
            "a:",
            "a:-x",
            "a b",
            "../etc",
            "name@sha256:abcd",
            "/abs",
            &"a".repeat(300),
            &"ab".repeat(32),
        ] {
            assert!(
                matches!(normalize_name(bad), Err(ImageError::InvalidName { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    fn ids() -> Vec<String> {
        vec![
            format!("abcdef01{}", "0".repeat(56)),
            format!("abcdef02{}", "0".repeat(56)),
            format!("123456{}", "f".repeat(58)),
        ]
    }

    #[test]
    fn a_reference_resolves_by_full_id_name_and_unique_prefix() {
        let ids = ids();
        let names = BTreeMap::from([("app:v1".to_string(), ids[2].clone())]);
        assert_eq!(resolve_reference(&ids[0], &ids, &names).unwrap(), ids[0]);
        let prefixed = format!("sha256:{}", ids[1]);
        assert_eq!(resolve_reference(&prefixed, &ids, &names).unwrap(), ids[1]);
        assert_eq!(resolve_reference("app:v1", &ids, &names).unwrap(), ids[2]);
        assert_eq!(resolve_reference("abcdef01", &ids, &names).unwrap(), ids[0]);
        assert_eq!(resolve_reference("123456", &ids, &names).unwrap(), ids[2]);
    }

    #[test]
    fn a_shared_prefix_is_ambiguous_and_lists_the_candidates() {
        let err = resolve_reference("abcdef", &ids(), &BTreeMap::new()).unwrap_err();
        match err {
            ImageError::AmbiguousReference { candidates, .. } => assert_eq!(candidates.len(), 2),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn short_prefixes_and_unknown_names_are_unknown_references() {
        let names = BTreeMap::new();
        for reference in ["abcde", "nope:latest", "ffffff", "../x"] {
            assert!(
                matches!(
                    resolve_reference(reference, &ids(), &names),
                    Err(ImageError::UnknownReference { .. })
                ),
                "{reference}"
            );
        }
    }

    #[test]
    fn a_name_pointing_at_a_missing_id_is_ignored() {
        let names = BTreeMap::from([("ghost:latest".to_string(), "f".repeat(64))]);
        assert!(matches!(
            resolve_reference("ghost", &ids(), &names),
            Err(ImageError::UnknownReference { .. })
        ));
    }
}
