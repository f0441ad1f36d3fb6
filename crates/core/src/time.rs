//! Epoch-millisecond time, the one unit of time in every JSON Fieldcast
//! writes.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parses an RFC 3339 string into epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Epoch milliseconds as RFC 3339 in UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses a time given as epoch milliseconds or RFC 3339 (HTTP query
/// parameters use both).
pub fn parse_ms_or_rfc3339(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| parse_rfc3339_ms(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let ms = 1_763_800_000_123;
        assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        assert_eq!(parse_ms_or_rfc3339("1763800000123"), Some(ms));
        assert_eq!(
            parse_ms_or_rfc3339("2025-11-22T08:26:40.123+00:00"),
            Some(ms)
        );
        assert_eq!(parse_ms_or_rfc3339("yesterday"), None);
    }
}
