//! When a fence is active: `properties.schedule`.
//!
//! ```json
//! {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "07:00", "to": "19:00", "tz": "+01:00"}
//! ```
//!
//! - `days`: the local days on which a window *starts* (default: every day).
//! - `from`, `to`: local `HH:MM`, `from` inclusive, `to` exclusive; `to` may
//!   be `24:00`. Both or neither (neither = the whole day). `to` earlier than
//!   `from` is a window across midnight that belongs to the day it starts:
//!   `{"days":["fri"],"from":"22:00","to":"06:00"}` is Friday 22:00 to
//!   Saturday 06:00. `from` equal to `to` is refused (an empty window).
//! - `tz`: `Z`/`UTC` (default) or a fixed offset `±HH:MM`. IANA zone names
//!   are not taken yet: a fixed offset does not follow daylight saving time,
//!   which an operator must know; chrono-tz would make names cheap to add
//!   (it was left out of this slice to keep the build small).
//!
//! Outside its schedule a fence contains nothing. The test is integer
//! arithmetic on the epoch milliseconds (no calendar library on the hot
//! path): 1970-01-01 was a Thursday.

use crate::error::{FenceError, Problem};
use crate::json::Obj;
use serde_json::{json, Value};

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: i64 = 86_400_000;
const MINUTES_PER_DAY: u16 = 1440;

/// A validated weekly schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Bit `d` set = the window starts on day `d` (0 = Monday).
    days: u8,
    /// Minutes after local midnight; `to == 1440` is `24:00`.
    from: u16,
    to: u16,
    /// Local time = UTC + `offset_min`.
    offset_min: i16,
}

impl Schedule {
    pub(crate) fn parse(v: &Value, path: &str) -> Result<Self, FenceError> {
        let obj = Obj::new(v, path, &["days", "from", "to", "tz"])?;
        let days = match obj.get("days") {
            None => 0x7f,
            Some(d) => {
                let list = d
                    .as_array()
                    .ok_or_else(|| obj.err("days", Problem::Type("a list of days")))?;
                if list.is_empty() {
                    return Err(obj.err("days", Problem::Type("a non-empty list of days")));
                }
                let mut bits = 0u8;
                for (i, day) in list.iter().enumerate() {
                    let field = format!("{path}.days[{i}]");
                    let name = day
                        .as_str()
                        .ok_or_else(|| FenceError::new(&field, Problem::Day))?;
                    let n = DAY_NAMES
                        .iter()
                        .position(|d| d.eq_ignore_ascii_case(name))
                        .ok_or_else(|| FenceError::new(&field, Problem::Day))?;
                    if bits & (1 << n) != 0 {
                        return Err(FenceError::new(&field, Problem::DuplicateDay));
                    }
                    bits |= 1 << n;
                }
                bits
            }
        };
        let from = obj.get("from").map(|t| parse_time(t, &obj.path("from")));
        let to = obj.get("to").map(|t| parse_time(t, &obj.path("to")));
        let (from, to) = match (from, to) {
            (None, None) => (0, MINUTES_PER_DAY),
            (Some(f), Some(t)) => (f?, t?),
            (Some(_), None) => return Err(obj.err("to", Problem::HalfWindow)),
            (None, Some(_)) => return Err(obj.err("from", Problem::HalfWindow)),
        };
        // 00:00 to 24:00 is the whole day; otherwise equal ends (07:00 to
        // 07:00, or 24:00 to 00:00 after wrapping) leave no time at all.
        if from % MINUTES_PER_DAY == to % MINUTES_PER_DAY && !(from == 0 && to == MINUTES_PER_DAY) {
            return Err(FenceError::new(path, Problem::EmptyWindow));
        }
        if from == MINUTES_PER_DAY {
            return Err(obj.err("from", Problem::Time));
        }
        let offset_min = match obj.get("tz") {
            None => 0,
            Some(tz) => parse_offset(tz).ok_or_else(|| obj.err("tz", Problem::Offset))?,
        };
        Ok(Schedule {
            days,
            from,
            to,
            offset_min,
        })
    }

    /// Whether the schedule is on at `at_ms` (epoch milliseconds).
    pub fn is_active(&self, at_ms: i64) -> bool {
        let local = at_ms.saturating_add(i64::from(self.offset_min) * MS_PER_MINUTE);
        let day = local.div_euclid(MS_PER_DAY);
        // `rem_euclid` keeps both in range for dates before 1970 too.
        let minute = (local.rem_euclid(MS_PER_DAY) / MS_PER_MINUTE) as u16;
        let weekday = (day + 3).rem_euclid(7) as u8; // 1970-01-01: Thursday (3)
        let yesterday = (weekday + 6) % 7;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from < self.to {
            on(weekday) && (self.from..self.to).contains(&minute)
        } else {
            // Across midnight: the evening part today, the morning part of
            // a window that started yesterday.
            (on(weekday) && minute >= self.from) || (on(yesterday) && minute < self.to)
        }
    }

    /// The schedule as `properties.schedule` writes it (canonical: days in
    /// week order, `tz` as `Z` or `±HH:MM`).
    pub fn to_json(&self) -> Value {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAY_NAMES[d])
            .collect();
        let tz = if self.offset_min == 0 {
            "Z".to_string()
        } else {
            let sign = if self.offset_min < 0 { '-' } else { '+' };
            let m = self.offset_min.unsigned_abs();
            format!("{sign}{:02}:{:02}", m / 60, m % 60)
        };
        json!({
            "days": days,
            "from": format_time(self.from),
            "to": format_time(self.to),
            "tz": tz,
        })
    }
}

fn format_time(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// `HH:MM`, `00:00..=24:00`, in minutes.
fn parse_time(v: &Value, field: &str) -> Result<u16, FenceError> {
    let err = || FenceError::new(field, Problem::Time);
    let s = v.as_str().ok_or_else(err)?;
    let (h, m) = two_digits_pair(s).ok_or_else(err)?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(err());
    }
    Ok(h * 60 + m)
}

/// `Z`, `UTC` or `±HH:MM` up to 14:00 (the widest offset in use), in
/// minutes east of UTC.
fn parse_offset(v: &Value) -> Option<i16> {
    let s = v.as_str()?;
    if s == "Z" || s.eq_ignore_ascii_case("UTC") {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = two_digits_pair(s.get(1..)?)?;
    if m > 59 || h * 60 + m > 14 * 60 {
        return None;
    }
    Some(sign * (h * 60 + m) as i16)
}

/// `DD:DD` as two numbers.
fn two_digits_pair(s: &str) -> Option<(u16, u16)> {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return None;
    }
    let digit = |i: usize| b[i].is_ascii_digit().then(|| u16::from(b[i] - b'0'));
    Some((digit(0)? * 10 + digit(1)?, digit(3)? * 10 + digit(4)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(v: Value) -> Result<Schedule, FenceError> {
        Schedule::parse(&v, "properties.schedule")
    }

    /// 2025-11-24 is a Monday; `h` hours (UTC) after its midnight.
    fn monday_plus_hours(h: f64) -> i64 {
        1_763_942_400_000 + (h * 3_600_000.0) as i64
    }

    #[test]
    fn monday_is_monday() {
        // Pins the weekday arithmetic against a known date.
        let s = sched(json!({"days": ["mon"]})).unwrap();
        assert!(s.is_active(monday_plus_hours(0.0)));
        assert!(s.is_active(monday_plus_hours(23.99)));
        assert!(!s.is_active(monday_plus_hours(24.0)));
        assert!(!s.is_active(monday_plus_hours(-0.01)));
    }

    #[test]
    fn window_is_half_open() {
        let s = sched(json!({"days": ["mon"], "from": "07:00", "to": "19:00"})).unwrap();
        assert!(!s.is_active(monday_plus_hours(6.99)));
        assert!(s.is_active(monday_plus_hours(7.0)));
        assert!(s.is_active(monday_plus_hours(18.99)));
        assert!(!s.is_active(monday_plus_hours(19.0)));
        // Tuesday: not a listed day.
        assert!(!s.is_active(monday_plus_hours(24.0 + 8.0)));
    }

    #[test]
    fn window_across_midnight_belongs_to_its_start_day() {
        let s = sched(json!({"days": ["sun"], "from": "22:00", "to": "06:00"})).unwrap();
        // Monday 03:00 is the tail of Sunday's window.
        assert!(s.is_active(monday_plus_hours(3.0)));
        assert!(!s.is_active(monday_plus_hours(6.0)));
        // Monday 23:00: Monday is not listed.
        assert!(!s.is_active(monday_plus_hours(23.0)));
        // Sunday 22:30 (the day before).
        assert!(s.is_active(monday_plus_hours(-1.5)));
        assert!(!s.is_active(monday_plus_hours(-2.5)));
    }

    #[test]
    fn offset_moves_the_day_boundary() {
        // Monday 00:30 in +01:00 is Sunday 23:30 UTC.
        let s = sched(json!({"days": ["mon"], "from": "00:00", "to": "01:00", "tz": "+01:00"}))
            .unwrap();
        assert!(s.is_active(monday_plus_hours(-0.5)));
        assert!(!s.is_active(monday_plus_hours(0.5)));
        let west = sched(json!({"days": ["mon"], "tz": "-05:00"})).unwrap();
        assert!(!west.is_active(monday_plus_hours(4.0)));
        assert!(west.is_active(monday_plus_hours(5.0)));
    }

    #[test]
    fn whole_day_and_until_midnight() {
        let all = sched(json!({"from": "00:00", "to": "24:00"})).unwrap();
        assert_eq!(all, sched(json!({})).unwrap());
        let evening = sched(json!({"days": ["mon"], "from": "18:00", "to": "24:00"})).unwrap();
        assert!(evening.is_active(monday_plus_hours(23.99)));
        assert!(!evening.is_active(monday_plus_hours(24.0)));
    }

    #[test]
    fn round_trips_canonically() {
        let s =
            sched(json!({"days": ["fri", "MON"], "from": "07:30", "to": "19:00", "tz": "-03:30"}))
                .unwrap();
        let out = s.to_json();
        assert_eq!(
            out,
            json!({"days": ["mon", "fri"], "from": "07:30", "to": "19:00", "tz": "-03:30"})
        );
        assert_eq!(sched(out).unwrap(), s);
    }

    #[test]
    fn rejects_bad_schedules_naming_the_field() {
        for (v, field, problem) in [
            (
                json!({"days": ["mon", "funday"]}),
                "properties.schedule.days[1]",
                Problem::Day,
            ),
            (
                json!({"days": ["mon", "mon"]}),
                "properties.schedule.days[1]",
                Problem::DuplicateDay,
            ),
            (
                json!({"days": []}),
                "properties.schedule.days",
                Problem::Type("a non-empty list of days"),
            ),
            (
                json!({"days": "mon"}),
                "properties.schedule.days",
                Problem::Type("a list of days"),
            ),
            (
                json!({"from": "7:00", "to": "19:00"}),
                "properties.schedule.from",
                Problem::Time,
            ),
            (
                json!({"from": "07:00", "to": "24:30"}),
                "properties.schedule.to",
                Problem::Time,
            ),
            (
                json!({"from": "07:60", "to": "19:00"}),
                "properties.schedule.from",
                Problem::Time,
            ),
            (
                json!({"from": "24:00", "to": "01:00"}),
                "properties.schedule.from",
                Problem::Time,
            ),
            (
                json!({"from": 7, "to": "19:00"}),
                "properties.schedule.from",
                Problem::Time,
            ),
            (
                json!({"from": "07:00", "to": "07:00"}),
                "properties.schedule",
                Problem::EmptyWindow,
            ),
            (
                json!({"from": "00:00", "to": "00:00"}),
                "properties.schedule",
                Problem::EmptyWindow,
            ),
            (
                json!({"from": "07:00"}),
                "properties.schedule.to",
                Problem::HalfWindow,
            ),
            (
                json!({"tz": "Europe/Paris"}),
                "properties.schedule.tz",
                Problem::Offset,
            ),
            (
                json!({"tz": "+15:00"}),
                "properties.schedule.tz",
                Problem::Offset,
            ),
            (
                json!({"hours": 3}),
                "properties.schedule.hours",
                Problem::Unknown,
            ),
            (
                json!(["mon"]),
                "properties.schedule",
                Problem::Type("an object"),
            ),
        ] {
            let e = sched(v.clone()).unwrap_err();
            assert_eq!((e.field(), e.problem()), (field, &problem), "{v}");
        }
    }
}
