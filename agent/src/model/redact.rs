//! Env values hidden from readers that may not see secrets (the TCP listener without the
//! bearer token). Works on the model types themselves, so every container the snapshot holds
//! is covered, whatever launched it, and every image.

use super::{Container, image::Image};

/// What an env value is replaced with: the key stays, so a reader still sees what is set.
pub const REDACTED: &str = "<redacted>";

/// `KEY=VALUE` -> `KEY=<redacted>`; an entry without `=` is a key alone and stays as is.
pub fn redact_env(env: &[String]) -> Vec<String> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((key, _)) => format!("{key}={REDACTED}"),
            None => e.clone(),
        })
        .collect()
}

impl Container {
    /// A copy without env values.
    pub fn redacted(&self) -> Container {
        let mut c = self.clone();
        if let Some(b) = &mut c.berth {
            let env = redact_env(&b.env);
            std::sync::Arc::make_mut(b).env = env;
        }
        c
    }
}

impl Image {
    /// A copy without env values (an image's `ENV` can carry secrets as well).
    pub fn redacted(&self) -> Image {
        let mut i = self.clone();
        i.config.env = redact_env(&i.config.env);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_replaced_and_keys_kept() {
        let env = vec!["PASSWORD=hunter2".into(), "EMPTY=".into(), "BARE".into()];
        assert_eq!(
            redact_env(&env),
            vec!["PASSWORD=<redacted>", "EMPTY=<redacted>", "BARE"]
        );
    }

    /// Every `env` list anywhere in the JSON of `v`, however deep (a field a future engine adds
    /// is found too).
    fn env_lists(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k.to_ascii_lowercase().contains("env")
                        && let Some(list) = v.as_array()
                    {
                        out.extend(list.iter().map(|e| e.to_string()));
                    }
                    env_lists(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| env_lists(v, out)),
            _ => {}
        }
    }

    #[test]
    fn no_env_field_of_a_redacted_container_or_image_keeps_a_value() {
        let snap = crate::model::fixture::snapshot();
        let mut entries = Vec::new();
        for c in &snap.containers {
            env_lists(&serde_json::to_value(c.redacted()).unwrap(), &mut entries);
        }
        for i in &snap.images {
            env_lists(&serde_json::to_value(i.redacted()).unwrap(), &mut entries);
        }
        assert!(!entries.is_empty(), "the fixture has env entries to check");
        for e in entries {
            assert!(
                e.ends_with("=<redacted>\"") || !e.contains('='),
                "an env value shows through redaction: {e}; clear the new field in Container::redacted"
            );
        }
    }

    #[test]
    fn a_redacted_container_shows_no_env_value() {
        let snap = crate::model::fixture::snapshot();
        for c in &snap.containers {
            let json = serde_json::to_string(&c.redacted()).unwrap();
            assert!(!json.contains("MODE=fixture"), "{json}");
        }
    }
}
