//! Wall-clock timestamps in the one JSON format of this crate: ISO-8601 UTC
//! with microseconds and a `Z` (`2026-06-04T12:00:00.123456Z`); docs/BACKEND.md, Timestamps (decision D9).

use time::OffsetDateTime;
use time::macros::format_description;

/// Formats a UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn iso(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    // Formatting a valid UTC date with this description cannot fail except for
    // years outside 0..=9999, which `now_utc` never yields; fall back to the Unix timestamp.
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Now, formatted by [`iso`].
pub fn now_iso() -> String {
    iso(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_schemas_event_timestamp_is_iso_utc_with_microseconds_and_z() {
        let t = time::macros::datetime!(2026-06-04 12:00:00.123456 UTC);
        assert_eq!(iso(t), "2026-06-04T12:00:00.123456Z");
        let t = time::macros::datetime!(2026-06-04 14:00:00 +02:00);
        assert_eq!(iso(t), "2026-06-04T12:00:00.000000Z");
        let now = now_iso();
        assert_eq!(now.len(), 27, "{now}");
        assert!(now.ends_with('Z'));
    }
}
