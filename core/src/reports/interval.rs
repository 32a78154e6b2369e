//! Time buckets and report intervals. Rollups are kept in 15-minute and hourly UTC
//! buckets and in local days of one configured zone; a report interval in any IANA zone
//! is a union of whole buckets of the finest grain that aligns with it, so daylight saving
//! changes need no special case: the local day of a spring-forward has 92 quarter hours,
//! that of a fall-back 100, and the repeated local hour is two intervals.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A rollup grain (`report_facts.grain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    /// 15-minute UTC buckets (align with every zone in use: offsets are multiples of 15 min).
    Quarter = 0,
    /// UTC hours (align with zones whose offset is a whole number of hours).
    Hour = 1,
    /// Local days of the configured report zone.
    Day = 2,
}

impl Grain {
    /// Every grain, finest first.
    pub const ALL: [Grain; 3] = [Grain::Quarter, Grain::Hour, Grain::Day];

    /// The stored value.
    pub fn id(self) -> i16 {
        self as i16
    }
}

/// A report interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// 15 minutes.
    #[serde(rename = "15m")]
    Quarter,
    /// 30 minutes.
    #[serde(rename = "30m")]
    HalfHour,
    /// Hour.
    Hour,
    /// Local day.
    Day,
    /// ISO week (Monday first), local.
    Week,
    /// Calendar month, local.
    Month,
    /// The whole range as one row.
    Total,
}

impl Interval {
    /// Parses the query value.
    pub fn parse(s: &str) -> Option<Interval> {
        Some(match s {
            "15m" | "15min" => Interval::Quarter,
            "30m" | "30min" => Interval::HalfHour,
            "hour" | "1h" => Interval::Hour,
            "day" => Interval::Day,
            "week" => Interval::Week,
            "month" => Interval::Month,
            "total" | "none" => Interval::Total,
            _ => return None,
        })
    }

    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Quarter => "15m",
            Interval::HalfHour => "30m",
            Interval::Hour => "hour",
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
            Interval::Total => "total",
        }
    }

    /// The SQL expression (over `bucket`, zone in `$tz_param`) that gives the UTC start of
    /// the interval a bucket belongs to. Sub-day intervals step back by the local minutes
    /// past the interval start (the UTC offset is constant within a local hour), so the
    /// repeated hour of a fall-back stays two intervals; days, weeks and months truncate
    /// local time and convert back.
    pub fn start_sql(self, tz_param: &str) -> String {
        match self {
            Interval::Quarter => "bucket".into(),
            Interval::HalfHour => {
                format!("bucket - make_interval(mins => (extract(minute from bucket at time zone {tz_param})::int % 30))")
            }
            Interval::Hour => format!("bucket - make_interval(mins => extract(minute from bucket at time zone {tz_param})::int)"),
            Interval::Day => format!("(date_trunc('day', bucket at time zone {tz_param}) at time zone {tz_param})"),
            Interval::Week => format!("(date_trunc('week', bucket at time zone {tz_param}) at time zone {tz_param})"),
            Interval::Month => format!("(date_trunc('month', bucket at time zone {tz_param}) at time zone {tz_param})"),
            Interval::Total => "null::timestamptz".into(),
        }
    }

    /// The end of the interval that starts at `start`, in `tz`.
    pub fn end_of(self, start: DateTime<Utc>, tz: Tz, range_end: DateTime<Utc>) -> DateTime<Utc> {
        let end = match self {
            Interval::Quarter => start + Duration::minutes(15),
            Interval::HalfHour => start + Duration::minutes(30),
            Interval::Hour => start + Duration::hours(1),
            Interval::Day => local_day_start(start.with_timezone(&tz).date_naive() + Duration::days(1), tz),
            Interval::Week => local_day_start(start.with_timezone(&tz).date_naive() + Duration::days(7), tz),
            Interval::Month => {
                let d = start.with_timezone(&tz).date_naive();
                let (y, m) = if d.month0() == 11 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
                local_day_start(NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d), tz)
            }
            Interval::Total => range_end,
        };
        end.min(range_end)
    }
}

use chrono::Datelike;

/// The 15-minute UTC bucket of an instant.
pub fn quarter(t: DateTime<Utc>) -> DateTime<Utc> {
    let s = t.timestamp();
    Utc.timestamp_opt(s - s.rem_euclid(900), 0).single().unwrap_or(t)
}

/// The UTC hour of an instant.
pub fn hour(t: DateTime<Utc>) -> DateTime<Utc> {
    let s = t.timestamp();
    Utc.timestamp_opt(s - s.rem_euclid(3600), 0).single().unwrap_or(t)
}

/// The instant a local date starts in `tz` (the first existing instant of that date when
/// midnight is skipped by a DST change).
pub fn local_day_start(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    for mins in (0..=180).step_by(15) {
        let t = d.and_time(NaiveTime::MIN) + Duration::minutes(mins);
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.with_timezone(&Utc),
            LocalResult::Ambiguous(a, _) => return a.with_timezone(&Utc),
            LocalResult::None => continue,
        }
    }
    Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))
}

/// The start of the local day (in `tz`) an instant falls in.
pub fn day(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    local_day_start(t.with_timezone(&tz).date_naive(), tz)
}

/// The bucket of an instant in a grain.
pub fn bucket(g: Grain, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    match g {
        Grain::Quarter => quarter(t),
        Grain::Hour => hour(t),
        Grain::Day => day(t, tz),
    }
}

/// The bucket after `b` in a grain.
pub fn next_bucket(g: Grain, b: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    match g {
        Grain::Quarter => b + Duration::minutes(15),
        Grain::Hour => b + Duration::hours(1),
        Grain::Day => local_day_start(b.with_timezone(&tz).date_naive() + Duration::days(1), tz),
    }
}

/// Splits `[from, to)` into its pieces per bucket of a grain: (bucket, milliseconds).
/// Bounded: at most `max_pieces` pieces (the rest goes to the last one).
pub fn split(g: Grain, from: DateTime<Utc>, to: DateTime<Utc>, tz: Tz, max_pieces: usize) -> Vec<(DateTime<Utc>, i64)> {
    let mut out = Vec::new();
    if to <= from {
        return out;
    }
    let mut b = bucket(g, from, tz);
    let mut at = from;
    while at < to {
        let next = next_bucket(g, b, tz);
        let end = if out.len() + 1 >= max_pieces { to } else { next.min(to) };
        out.push((b, (end - at).num_milliseconds()));
        at = end;
        b = next;
    }
    out
}

/// Whether `tz`'s UTC offset is a whole number of hours throughout `[from, to)` (then
/// hourly UTC buckets align with its local hours and days). Samples twice a month.
pub fn whole_hour_offsets(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
    let mut t = from;
    let mut n = 0;
    while t <= to && n < 2000 {
        if tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc() % 3600 != 0 {
            return false;
        }
        t += Duration::days(15);
        n += 1;
    }
    tz.offset_from_utc_datetime(&to.naive_utc()).fix().local_minus_utc() % 3600 == 0
}

/// The coarsest grain whose buckets are whole parts of the requested intervals in `tz`.
pub fn grain_for(iv: Interval, tz: Tz, day_zone: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Grain {
    let day_aligned = |t: DateTime<Utc>| day(t, tz) == t;
    let whole_days =
        matches!(iv, Interval::Day | Interval::Week | Interval::Month) || (iv == Interval::Total && day_aligned(from) && day_aligned(to));
    if whole_days && tz == day_zone {
        return Grain::Day;
    }
    let whole_hours = matches!(iv, Interval::Hour) || whole_days || (iv == Interval::Total && hour(from) == from && hour(to) == to);
    if whole_hours && whole_hour_offsets(tz, from, to) {
        return Grain::Hour;
    }
    Grain::Quarter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn local_days_follow_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29: clocks go 02:00 → 03:00 in Berlin; the day has 23 hours.
        let d0 = local_day_start(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(), berlin);
        let d1 = next_bucket(Grain::Day, d0, berlin);
        assert_eq!(d0, utc("2026-03-28T23:00:00Z"));
        assert_eq!((d1 - d0).num_hours(), 23);
        // 2026-10-25: back 03:00 → 02:00; 25 hours.
        let f0 = local_day_start(NaiveDate::from_ymd_opt(2026, 10, 25).unwrap(), berlin);
        assert_eq!((next_bucket(Grain::Day, f0, berlin) - f0).num_hours(), 25);
        let pieces = split(Grain::Quarter, d0, d1, berlin, 1000);
        assert_eq!(pieces.len(), 92);
        assert!(pieces.iter().all(|p| p.1 == 900_000));
    }

    #[test]
    fn grains_align_only_where_they_can() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let (a, b) = (utc("2026-01-01T00:00:00Z"), utc("2026-02-01T00:00:00Z"));
        assert_eq!(grain_for(Interval::Day, berlin, berlin, a, b), Grain::Day);
        assert_eq!(grain_for(Interval::Day, kolkata, berlin, a, b), Grain::Quarter);
        assert_eq!(grain_for(Interval::Hour, berlin, kolkata, a, b), Grain::Hour);
        assert_eq!(grain_for(Interval::HalfHour, berlin, berlin, a, b), Grain::Quarter);
        assert_eq!(quarter(utc("2026-01-01T10:14:59Z")), utc("2026-01-01T10:00:00Z"));
    }
}
