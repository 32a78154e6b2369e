//! Campaign time arithmetic (pure): when a birthday message is due in the customer's zone
//! (29 February → 28 February in common years), quiet hours in the recipient's local time,
//! and the injectable clock the planner and dispatcher read `now` from.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::sync::{Arc, Mutex};

/// Where the campaign engine reads the time from: the system clock in production, a clock
/// a test moves by hand so a birthday morning or a quiet night passes in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock set by hand (tests, demos).
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock showing `t`.
    pub fn new(t: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(t)))
    }
    /// Sets the time.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
    /// Moves the time forward.
    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A zone by IANA name, else the fallback.
pub fn zone_or(name: Option<&str>, fallback: Tz) -> Tz {
    name.and_then(|n| n.parse::<Tz>().ok()).unwrap_or(fallback)
}

/// A local wall-clock time as an instant: a time skipped by a DST jump moves forward by the
/// jump (02:30 on a spring-forward night is 03:30), an ambiguous one takes the earlier.
pub fn local_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        LocalResult::None => {
            // Inside a gap: the same wall time an hour later exists in every real zone.
            let later = local + Duration::hours(1);
            tz.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc)).unwrap_or_else(|| Utc.from_utc_datetime(&local))
        }
    }
}

/// The day a birthday is celebrated in `year`: 29 February falls on 28 February in common
/// years.
pub fn birthday_in(birthday: NaiveDate, year: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, birthday.month(), birthday.day())
        .or_else(|| (birthday.month() == 2 && birthday.day() == 29).then(|| NaiveDate::from_ymd_opt(year, 2, 28)).flatten())
}

/// When the birthday message of `year` is due: `send_time` on the birthday in `tz`.
pub fn birthday_send_at(birthday: NaiveDate, year: i32, tz: Tz, send_time: NaiveTime) -> Option<DateTime<Utc>> {
    birthday_in(birthday, year).map(|d| local_instant(tz, d.and_time(send_time)))
}

/// Quiet hours: from `start` to `end` local time (crossing midnight when `end <= start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Local time the quiet period begins.
    pub start: NaiveTime,
    /// Local time sending may resume.
    pub end: NaiveTime,
}

impl QuietHours {
    fn contains(&self, t: NaiveTime) -> bool {
        if self.start == self.end {
            false
        } else if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a message due at `at` may go out to a recipient in `tz`: `None` when `at` is
    /// outside quiet hours, else the end of this quiet period (deferred, never dropped).
    pub fn defer(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz).naive_local();
        if !self.contains(local.time()) {
            return None;
        }
        let day = if local.time() >= self.end { local.date() + Duration::days(1) } else { local.date() };
        Some(local_instant(tz, day.and_time(self.end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    #[test]
    fn leap_day_birthdays_move_to_the_28th_in_common_years() {
        let b = NaiveDate::from_ymd_opt(2000, 2, 29).expect("date");
        assert_eq!(birthday_in(b, 2027), NaiveDate::from_ymd_opt(2027, 2, 28));
        assert_eq!(birthday_in(b, 2028), NaiveDate::from_ymd_opt(2028, 2, 29));
        let plain = NaiveDate::from_ymd_opt(1990, 12, 31).expect("date");
        assert_eq!(birthday_in(plain, 2027), NaiveDate::from_ymd_opt(2027, 12, 31));
    }

    #[test]
    fn birthday_is_due_at_local_time_in_the_customer_zone() {
        let b = NaiveDate::from_ymd_opt(1985, 6, 15).expect("date");
        let madrid = birthday_send_at(b, 2027, chrono_tz::Europe::Madrid, t(9, 0)).expect("due");
        assert_eq!(madrid.to_rfc3339(), "2027-06-15T07:00:00+00:00");
        let ny = birthday_send_at(b, 2027, chrono_tz::America::New_York, t(9, 0)).expect("due");
        assert_eq!(ny.to_rfc3339(), "2027-06-15T13:00:00+00:00");
    }

    #[test]
    fn quiet_hours_defer_to_the_local_morning() {
        let q = QuietHours { start: t(21, 0), end: t(8, 0) };
        let tz = chrono_tz::Europe::Berlin; // UTC+1 in December
        let late = Utc.with_ymd_and_hms(2026, 12, 3, 21, 30, 0).unwrap(); // 22:30 local
        assert_eq!(q.defer(late, tz).map(|d| d.to_rfc3339()).as_deref(), Some("2026-12-04T07:00:00+00:00"));
        let early = Utc.with_ymd_and_hms(2026, 12, 4, 5, 0, 0).unwrap(); // 06:00 local
        assert_eq!(q.defer(early, tz).map(|d| d.to_rfc3339()).as_deref(), Some("2026-12-04T07:00:00+00:00"));
        let day = Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap();
        assert_eq!(q.defer(day, tz), None);
        let daytime_quiet = QuietHours { start: t(12, 0), end: t(14, 0) };
        assert!(daytime_quiet.defer(day, tz).is_some());
    }

    #[test]
    fn a_time_in_a_dst_gap_moves_forward() {
        // 2027-03-28 02:30 does not exist in Berlin.
        let gap = NaiveDate::from_ymd_opt(2027, 3, 28).expect("d").and_time(t(2, 30));
        assert_eq!(local_instant(chrono_tz::Europe::Berlin, gap).to_rfc3339(), "2027-03-28T01:30:00+00:00");
    }
}
