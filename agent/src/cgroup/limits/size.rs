//! Sizes as users type them and as berth shows them: `--memory 64m`, `--memory-swap -1`, and
//! "64MiB" in error messages. Kept apart from [`super::Limits`] because the CLI parses flags with
//! it before any limits exist, and validation messages format with it.

use super::LimitError;

/// Parses a size as docker does (go-units `RAMInBytes`): a number, optionally fractional, and an
/// optional case-insensitive unit `b`, `k`, `m`, `g`, `t` or `p` (powers of 1024; `kb`, `kib`
/// and `ki` mean the same as `k`). Fractional bytes are dropped: "1.5k" is 1536.
pub fn parse_bytes(s: &str) -> Result<u64, LimitError> {
    let err = |reason| LimitError::Size {
        input: s.to_string(),
        reason,
    };
    let input = s.trim();
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(err("it does not start with a digit"));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let exponent = match unit.as_str() {
        "" | "b" => 0,
        u => ["k", "m", "g", "t", "p"]
            .iter()
            .position(|l| {
                u.strip_prefix(l)
                    .is_some_and(|rest| matches!(rest, "" | "b" | "i" | "ib"))
            })
            .map(|i| i as u32 + 1)
            .ok_or_else(|| err("unknown unit"))?,
    };
    let multiplier = 1024u64.pow(exponent);
    let bytes = if number.contains('.') {
        if number.matches('.').count() > 1 {
            return Err(err("more than one decimal point"));
        }
        let value: f64 = number.parse().map_err(|_| err("not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= i64::MAX as f64 {
            return Err(err("too large"));
        }
        bytes as u64
    } else {
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(|| err("too large"))?
    };
    if bytes > i64::MAX as u64 {
        return Err(err("too large"));
    }
    Ok(bytes)
}

/// Parses `--memory-swap`: `-1` (unlimited swap) or a size as [`parse_bytes`] reads it.
pub fn parse_memory_swap(s: &str) -> Result<i64, LimitError> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    // parse_bytes caps at i64::MAX.
    parse_bytes(s).map(|b| b as i64)
}

/// `12582912` -> "12MiB", `1536` -> "1.5KiB", `100` -> "100B", `0` -> "0".
pub fn human_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value}{}", units[unit])
    } else {
        format!("{value:.1}{}", units[unit])
    }
}
