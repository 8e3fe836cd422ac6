//! Image names and references, with docker's rules: a name is `repo[:tag]` (`:latest`
//! implied), stored in canonical form so `busybox`, `busybox:latest` and
//! `docker.io/library/busybox` are one name (Docker's familiar form); a
//! reference is a full id (optionally `sha256:`-prefixed), a name, or a unique id prefix.
//! Pure functions over the store's ids and names, so they are tested without a store.

use std::collections::BTreeMap;

use super::ImageError;

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
    // Docker's familiar form: `docker.io/library/busybox` is `busybox`.
    let repo = repo
        .strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("index.docker.io/library/"))
        .or_else(|| repo.strip_prefix("docker.io/"))
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .unwrap_or(repo);
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
pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Resolves a reference against the known ids and names, in docker's order: a full id (with or
/// without `sha256:`), then a name, then a unique id prefix of at least [`MIN_PREFIX`] characters.
pub(crate) fn resolve_reference<'a>(
    reference: &str,
    ids: &'a [String],
    names: &BTreeMap<String, String>,
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
    fn docker_hub_names_take_their_familiar_form() {
        assert_eq!(
            normalize_name("docker.io/library/busybox").unwrap(),
            "busybox:latest"
        );
        assert_eq!(
            normalize_name("docker.io/team/app:v1").unwrap(),
            "team/app:v1"
        );
        assert_eq!(
            normalize_name("index.docker.io/library/busybox:1").unwrap(),
            "busybox:1"
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
