//! Checks for values that come from outside — a configuration file, a request body — so that
//! every such value is range-checked where it enters and the error names the field, the value
//! and what is allowed (STYLE.md, "the door validates, the core asserts").

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `value` must lie in `allowed`: the error names `field`, the value and the range.
pub fn check_range<T: PartialOrd + Display + Copy>(
    field: &str,
    value: T,
    allowed: RangeInclusive<T>,
) -> Result<(), String> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(format!(
        "field `{field}` is {value}; it must be from {} to {}",
        allowed.start(),
        allowed.end()
    ))
}

/// A name of 1 to `max_len` ASCII letters, digits, `-` or `_` (node, cluster and database
/// names: they appear in ids, file contents and messages, so nothing that needs quoting).
pub fn check_name(field: &str, value: &str, max_len: usize) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= max_len
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    let shown: String = value.chars().take(40).collect();
    let ellipsis = if value.chars().count() > 40 { "…" } else { "" };
    Err(format!(
        "field `{field}` is {shown:?}{ellipsis} ({} bytes); it must be 1 to {max_len} letters, digits, `-` or `_`",
        value.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_the_error_names_the_field() {
        assert!(check_range("vote_ms", 1u64, 1..=10).is_ok());
        assert!(check_range("vote_ms", 10u64, 1..=10).is_ok());
        let error = check_range("vote_ms", 11u64, 1..=10).unwrap_err();
        assert_eq!(error, "field `vote_ms` is 11; it must be from 1 to 10");
        assert!(check_range("vote_ms", 0u64, 1..=10).is_err());
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(check_name("cluster", "prod-eu_1", 64).is_ok());
        assert!(check_name("cluster", &"x".repeat(64), 64).is_ok());
        for bad in ["", "a b", "a:b", "é", "a/b"] {
            assert!(check_name("cluster", bad, 64).is_err(), "{bad:?}");
        }
        let error = check_name("cluster", &"x".repeat(2_000), 64).unwrap_err();
        assert!(error.contains("2000 bytes") && error.len() < 200, "{error}");
    }
}
