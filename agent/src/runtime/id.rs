//! Container ids and names: a 64-hex-digit random id (as Docker's), names following Docker's
//! rule, and the default name derived from the id.

/// Whether `name` is a valid container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes.
pub(super) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A fresh id: 32 random bytes from getrandom(2), hex-encoded.
pub(super) fn new_id() -> String {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writing into our own buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of a container run without `--name`: `berth-` and the first 12 digits of its id.
pub(super) fn default_name(id: &str) -> String {
    format!("berth-{}", &id[..12.min(id.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_follow_dockers_rule() {
        for ok in ["web", "a", "media-1", "x_y.z", "A9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_64_hex_characters_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn a_default_name_is_berth_and_the_short_id() {
        let id = new_id();
        let name = default_name(&id);
        assert_eq!(name, format!("berth-{}", &id[..12]));
        assert!(valid_name(&name));
    }
}
