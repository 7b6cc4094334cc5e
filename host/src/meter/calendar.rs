//! UTC days and months: the buckets the meter counts in.
//!
//! A [`Day`] is a number of days since 1970-01-01 (UTC), a month is
//! `year * 12 + month - 1`. Both are plain integers so that they can be
//! big-endian key parts (keys sort in time order) and so that a record's
//! buckets cost two divisions, not a calendar library. The conversions are
//! Howard Hinnant's `days_from_civil` / `civil_from_days`, exact for the
//! proleptic Gregorian calendar.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds in a UTC day (no leap seconds: Unix time has none).
const DAY_MS: u64 = 86_400_000;

/// A UTC calendar day, written `YYYY-MM-DD` (in filters, JSON and row keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Day(u32);

impl Day {
    /// The day that contains the Unix time `ms` (milliseconds).
    pub fn from_unix_ms(ms: u64) -> Self {
        // u64::MAX ms is ~2e8 days: always fits.
        Day(u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX))
    }

    /// The day `year-month-day`, if it exists and is not before 1970.
    pub fn from_ymd(year: u32, month: u32, day: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let days = days_from_civil(i64::from(year), month, day);
        u32::try_from(days).ok().map(Day)
    }

    /// Days since 1970-01-01.
    pub fn days_since_epoch(self) -> u32 {
        self.0
    }

    /// The day with this number of days since 1970-01-01.
    pub fn from_days_since_epoch(days: u32) -> Self {
        Day(days)
    }

    /// The Unix time (ms) at which the day starts.
    pub fn start_ms(self) -> u64 {
        u64::from(self.0) * DAY_MS
    }

    /// The day's month as a bucket number (`year * 12 + month - 1`).
    pub(crate) fn month(self) -> u32 {
        let (year, month, _) = civil_from_days(i64::from(self.0));
        // Years from 1970 on: never negative, far below u32::MAX / 12.
        u32::try_from(year).unwrap_or(0) * 12 + month - 1
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(i64::from(self.0));
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

/// A day that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a day (YYYY-MM-DD, from 1970-01-01): {0:?}")]
pub struct BadDay(String);

impl FromStr for Day {
    type Err = BadDay;

    fn from_str(text: &str) -> Result<Self, BadDay> {
        let bad = || BadDay(text.to_owned());
        let mut parts = text.split('-');
        let mut number = |len: usize| {
            parts
                .next()
                .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u32>().ok())
        };
        let (Some(year), Some(month), Some(day)) = (number(4), number(2), number(2)) else {
            return Err(bad());
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Day::from_ymd(year, month, day).ok_or_else(bad)
    }
}

impl TryFrom<String> for Day {
    type Error = BadDay;

    fn try_from(text: String) -> Result<Self, BadDay> {
        text.parse()
    }
}

impl From<Day> for String {
    fn from(day: Day) -> String {
        day.to_string()
    }
}

/// The month bucket that contains the Unix time `ms`.
pub(crate) fn month_of_ms(ms: u64) -> u32 {
    Day::from_unix_ms(ms).month()
}

/// A month bucket written `YYYY-MM`.
pub(crate) fn month_label(month: u32) -> String {
    format!("{:04}-{:02}", month / 12, month % 12 + 1)
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = i64::from((month + 9) % 12); // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a number of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    // Both in range by construction (1..=31, 1..=12).
    let day = u32::try_from(day_of_year - (153 * shifted_month + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_through_text_and_months() {
        let day: Day = "2024-02-29".parse().expect("leap day");
        assert_eq!(day.to_string(), "2024-02-29");
        assert_eq!(month_label(day.month()), "2024-02");
        assert_eq!(Day::from_unix_ms(0).to_string(), "1970-01-01");
        // 2025-01-31T23:59:59.999Z and one millisecond later.
        let before = 1_738_367_999_999;
        assert_eq!(Day::from_unix_ms(before).to_string(), "2025-01-31");
        assert_eq!(Day::from_unix_ms(before + 1).to_string(), "2025-02-01");
        assert_eq!(month_label(month_of_ms(before)), "2025-01");
        assert_eq!(month_label(month_of_ms(before + 1)), "2025-02");
        assert_eq!(Day::from_unix_ms(before + 1).start_ms(), before + 1);
        // Every day of four centuries survives text and back.
        for days in (0..146_097 * 2).step_by(7) {
            let day = Day::from_days_since_epoch(days);
            assert_eq!(day.to_string().parse::<Day>(), Ok(day));
        }
    }

    #[test]
    fn bad_days_are_refused() {
        for text in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "1969-12-31",
            "2024-1-01",
            "2024-01-01x",
            "2024-01-01-01",
            "",
        ] {
            assert!(text.parse::<Day>().is_err(), "{text}");
        }
        let json: Result<Day, _> = serde_json::from_str("\"2024-04-31\"");
        assert!(json.is_err());
        let json: Day = serde_json::from_str("\"2024-04-30\"").expect("day");
        assert_eq!(
            serde_json::to_string(&json).expect("json"),
            "\"2024-04-30\""
        );
    }
}
