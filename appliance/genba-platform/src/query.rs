//! Time ranges and aggregations as clients give them: RFC 3339 with an offset, epoch
//! milliseconds, or ThingScale's local `YYYY-MM-DD hh:mm` (the appliance's time zone).

use chrono::{NaiveDateTime, TimeZone};
use genba_store::streams::Resolution;

/// One aggregate function over a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

impl Aggregate {
    pub fn parse(s: &str) -> Option<Aggregate> {
        Some(match s.to_ascii_lowercase().as_str() {
            "avg" | "mean" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "sum" => Aggregate::Sum,
            "count" => Aggregate::Count,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
        }
    }

    pub fn of(self, b: &genba_store::streams::Bucket) -> f64 {
        match self {
            Aggregate::Avg => b.avg,
            Aggregate::Min => b.min,
            Aggregate::Max => b.max,
            Aggregate::Sum => b.sum,
            Aggregate::Count => b.count as f64,
        }
    }
}

pub fn parse_resolution(s: &str) -> Option<Resolution> {
    Some(match s.to_ascii_lowercase().as_str() {
        "minute" | "1m" => Resolution::Minute,
        "hour" | "1h" => Resolution::Hour,
        "day" | "1d" => Resolution::Day,
        _ => return None,
    })
}

/// The finest resolution that keeps a range's chart under about 1,500 buckets.
pub fn resolution_for(from_ms: i64, to_ms: i64) -> Resolution {
    let span = to_ms.saturating_sub(from_ms);
    if span <= 25 * 3_600_000 {
        Resolution::Minute
    } else if span <= 62 * 24 * 3_600_000 {
        Resolution::Hour
    } else {
        Resolution::Day
    }
}

/// A point in time: RFC 3339 (`2026-12-01T09:00:00+09:00`), epoch ms, or local
/// `YYYY-MM-DD hh:mm[:ss]` / `YYYY-MM-DDThh:mm` in the appliance's time zone.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return chrono::Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|t| t.timestamp_millis());
        }
    }
    None
}

/// RFC 3339 UTC with milliseconds, as every `/v2` answer gives times.
pub fn format_time(ms: i64) -> String {
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(parse_time("2026-12-01T00:00:00Z"), Some(1_796_083_200_000));
        assert_eq!(
            parse_time("2026-12-01T09:00:00+09:00"),
            Some(1_796_083_200_000)
        );
        assert_eq!(parse_time("1796083200000"), Some(1_796_083_200_000));
        assert!(parse_time("2026-12-01 09:00").is_some());
        assert_eq!(parse_time("tomorrow"), None);
        assert_eq!(parse_time("-1"), None);
        assert_eq!(format_time(1_796_083_200_000), "2026-12-01T00:00:00.000Z");
    }

    #[test]
    fn resolution_follows_the_range() {
        let h = 3_600_000;
        assert_eq!(resolution_for(0, 24 * h), Resolution::Minute);
        assert_eq!(resolution_for(0, 30 * 24 * h), Resolution::Hour);
        assert_eq!(resolution_for(0, 365 * 24 * h), Resolution::Day);
        assert_eq!(Aggregate::parse("AVG"), Some(Aggregate::Avg));
        assert_eq!(Aggregate::parse("median"), None);
    }
}
