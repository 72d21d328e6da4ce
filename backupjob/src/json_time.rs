//! Times in the runner's JSON output: one format everywhere, RFC 3339 in UTC (docs/json.md).
//! The state keeps epoch seconds (VM moves: milliseconds); these turn them into text, `null`
//! for "never" (none, or 0 and below, as the state writes it).

use serde_json::Value;

/// An epoch in seconds as RFC 3339 (`2026-12-07T10:55:09Z`); `null` for none.
pub fn seconds(at: Option<i64>) -> Value {
    at.filter(|t| *t > 0)
        .and_then(|t| jiff::Timestamp::from_second(t).ok())
        .map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// An epoch in milliseconds as RFC 3339 with its fraction (`2026-12-07T10:55:09.123Z`).
pub fn millis(at: Option<i64>) -> Value {
    at.filter(|t| *t > 0)
        .and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
        .map_or(Value::Null, |t| Value::String(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_format_and_null_for_never() {
        assert_eq!(seconds(Some(1_796_640_343)), "2026-12-07T10:45:43Z");
        assert_eq!(millis(Some(1_796_640_343_120)), "2026-12-07T10:45:43.12Z");
        assert_eq!(millis(Some(1_796_640_343_000)), "2026-12-07T10:45:43Z");
        for never in [None, Some(0), Some(-5)] {
            assert_eq!(seconds(never), Value::Null);
            assert_eq!(millis(never), Value::Null);
        }
    }
}
