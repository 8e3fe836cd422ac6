//! [`parse_bytes`], [`parse_memory_swap`] and [`human_bytes`]: docker's units in, binary units out.

use super::MIB;
use crate::cgroup::limits::{LimitError, human_bytes, parse_bytes, parse_memory_swap};

#[test]
fn parse_bytes_reads_docker_units() {
    for (input, bytes) in [
        ("1024", 1024),
        ("0", 0),
        ("10b", 10),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("64m", 64 * MIB),
        ("64MB", 64 * MIB),
        ("64MiB", 64 * MIB),
        ("64mi", 64 * MIB),
        ("1g", 1024 * MIB),
        ("1.5g", 1536 * MIB),
        ("1.5k", 1536),
        ("0.5b", 0),
        ("2t", 2 << 40),
        ("1p", 1 << 50),
        (" 3 m ", 3 * MIB),
    ] {
        assert_eq!(parse_bytes(input), Ok(bytes), "{input:?}");
    }
}

#[test]
fn parse_bytes_rejects_what_is_not_a_size() {
    for input in [
        "",
        "m",
        "-1",
        "-1m",
        "1x",
        "1mb2",
        "1.2.3",
        "NaN",
        "inf",
        "1e9",
        ".5m",
        "1 g b",
        "9999999999999t",
        "16e",
    ] {
        let err = parse_bytes(input).unwrap_err();
        assert!(matches!(err, LimitError::Size { .. }), "{input:?}: {err}");
        assert!(err.to_string().contains("e.g. 512k"), "{err}");
    }
}

#[test]
fn memory_swap_accepts_minus_one_and_sizes() {
    assert_eq!(parse_memory_swap("-1"), Ok(-1));
    assert_eq!(parse_memory_swap("1g"), Ok(1 << 30));
    assert!(parse_memory_swap("-2").is_err());
}

#[test]
fn human_bytes_prefers_exact_binary_units() {
    assert_eq!(human_bytes(0), "0");
    assert_eq!(human_bytes(100), "100B");
    assert_eq!(human_bytes(1536), "1.5KiB");
    assert_eq!(human_bytes(6 * MIB), "6MiB");
    assert_eq!(human_bytes(2 << 30), "2GiB");
}
