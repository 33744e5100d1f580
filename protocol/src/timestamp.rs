//! RFC 3339 timestamps (`ts`, cursors, `issued_at`, `observed_at`, URL expiry).
//!
//! Timestamps travel as strings and are kept as the device wrote them (so re-encoding is exact);
//! comparisons parse them and compare instants, so `…T09:00:00Z` and `…T11:00:00+02:00` are equal.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Error of [`parse()`] / [`format()`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 timestamp: {0}")]
pub struct TimestampError(pub String);

/// Parses an RFC 3339 timestamp (any offset; fractional seconds of any length).
pub fn parse(s: &str) -> Result<OffsetDateTime, TimestampError> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| TimestampError(e.to_string()))
}

/// Formats as RFC 3339 in UTC with a `Z` suffix (nanoseconds only when non-zero).
pub fn format(t: OffsetDateTime) -> Result<String, TimestampError> {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| TimestampError(e.to_string()))
}

/// True when both parse and denote the same instant.
pub fn same_instant(a: &str, b: &str) -> bool {
    matches!((parse(a), parse(b)), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_instants_not_text() {
        assert!(same_instant(
            "2026-04-28T09:00:00Z",
            "2026-04-28T11:00:00+02:00"
        ));
        assert!(same_instant(
            "2026-04-28T09:00:00Z",
            "2026-04-28T09:00:00.000Z"
        ));
        assert!(!same_instant(
            "2026-04-28T09:00:00Z",
            "2026-04-28T09:00:01Z"
        ));
        assert!(!same_instant("garbage", "garbage"));
    }

    #[test]
    fn formats_utc_z() {
        let t = parse("2026-04-28T11:00:00.5+02:00").unwrap();
        assert_eq!(format(t).unwrap(), "2026-04-28T09:00:00.5Z");
    }
}
