//! Cron expressions: the five-field syntax and the next fire time in a time zone.
//!
//! The syntax and day rules are those of Vixie cron, the cron of most Linux
//! systems:
//!
//! - fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12,
//!   day-of-week 0-7 (0 and 7 are Sunday);
//! - items: `*`, `n`, `a-b`, each optionally followed by `/step` (`n/step`
//!   means `n-max/step`), joined into lists with `,`;
//! - a day fires when its month matches and, if both day-of-month and
//!   day-of-week are restricted (neither field starts with `*`), either of them
//!   matches; otherwise both must (so `*/2` counts as unrestricted, as in Vixie cron).
//!
//! Expressions are evaluated on the wall clock of an IANA time zone:
//!
//! - a local time skipped by a spring-forward change fires once, at the first
//!   valid instant after the gap (`30 2 * * *` in Berlin fires at 03:00 CEST on
//!   the last Sunday of March);
//! - a local time repeated by a fall-back change fires once, at its first
//!   occurrence, unless the hour field starts with `*`: such hourly-or-faster
//!   schedules keep their rhythm through the repeated hour, as in Vixie cron.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// How far ahead the next fire time is searched. Every expression that can
/// fire at all fires within 28 years (the weekday cycle of a date); this
/// bound only protects against evaluating forever.
const SEARCH_DAYS: u32 = 100 * 366;
/// Longest daylight-saving (or time-zone) gap looked across, in minutes:
/// Samoa skipped a whole day in 2011.
const LONGEST_GAP_MINUTES: i64 = 26 * 60;

/// One field of the expression: its name and the values it accepts.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
    },
    FieldSpec {
        name: "day-of-month",
        min: 1,
        max: 31,
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
    },
    FieldSpec {
        name: "day-of-week",
        min: 0,
        max: 7,
    },
];

/// Why an expression was refused, worded for the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// A parsed five-field cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// Bit `m` set: minute `m` fires.
    minutes: u64,
    /// Bit `h` set: hour `h` fires.
    hours: u64,
    /// Bit `d` set: day of month `d` (1-31) fires.
    days_of_month: u64,
    /// Bit `m` set: month `m` (1-12) fires.
    months: u64,
    /// Bit `w` set: weekday `w` (0 = Sunday .. 6) fires.
    days_of_week: u64,
    /// The day-of-month field does not start with `*`.
    day_of_month_restricted: bool,
    /// The day-of-week field does not start with `*`.
    day_of_week_restricted: bool,
    /// The hour field starts with `*`: an hourly-or-faster rhythm, which keeps
    /// firing through a repeated (fall-back) hour.
    hour_wildcard: bool,
    /// The text it was parsed from, for `Debug` and `Display`.
    text: String,
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, CronError> {
        CronExpr::parse(text)
    }
}

impl CronExpr {
    /// Parses an expression, refusing one that can never fire (`0 0 30 2 *`).
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = parts[..] else {
            return Err(CronError(
                "must have 5 fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *`"
                    .to_string(),
            ));
        };
        let [minute_spec, hour_spec, dom_spec, month_spec, dow_spec] = &FIELDS;
        let mut days_of_week = parse_field(day_of_week, dow_spec)?;
        // 7 is another name for Sunday.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let expr = CronExpr {
            minutes: parse_field(minute, minute_spec)?,
            hours: parse_field(hour, hour_spec)?,
            days_of_month: parse_field(day_of_month, dom_spec)?,
            months: parse_field(month, month_spec)?,
            days_of_week,
            day_of_month_restricted: !day_of_month.starts_with('*'),
            day_of_week_restricted: !day_of_week.starts_with('*'),
            hour_wildcard: hour.starts_with('*'),
            text: parts.join(" "),
        };
        if !expr.can_fire() {
            return Err(CronError(
                "never fires: none of the selected months has any of the selected days of the month"
                    .to_string(),
            ));
        }
        Ok(expr)
    }

    /// Whether some date matches. Only a day-of-month that must match (not
    /// OR-ed with a restricted day-of-week) can rule every date out; every
    /// weekday falls on every valid date within a 28-year cycle.
    fn can_fire(&self) -> bool {
        if self.day_of_month_restricted && self.day_of_week_restricted {
            return true;
        }
        (1..=12u32).filter(|m| bit(self.months, *m)).any(|month| {
            let longest = longest_month(month);
            (1..=longest).any(|day| bit(self.days_of_month, day))
        })
    }

    /// Whether the schedule fires on `date` (at some of its times).
    pub fn matches_day(&self, date: NaiveDate) -> bool {
        if !bit(self.months, date.month()) {
            return false;
        }
        let day_of_month = bit(self.days_of_month, date.day());
        let day_of_week = bit(self.days_of_week, date.weekday().num_days_from_sunday());
        if self.day_of_month_restricted && self.day_of_week_restricted {
            day_of_month || day_of_week
        } else {
            day_of_month && day_of_week
        }
    }

    /// The first fire time strictly after `after`, evaluated on the wall clock
    /// of `tz`. `None` only if nothing fires in the next century.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Start a day early: a gap or a repeated hour can move a late local
        // time of the previous day past `after`.
        let mut date = after.with_timezone(&tz).date_naive().pred_opt()?;
        for _ in 0..SEARCH_DAYS {
            if self.matches_day(date) {
                if let Some(found) = self.first_on_day(date, tz, after) {
                    return Some(found);
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// The earliest fire instant after `after` among the times of `date`.
    /// Instants of a day all precede those of the next day, so the search
    /// can stop at the first day that has one.
    fn first_on_day(&self, date: NaiveDate, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut best: Option<DateTime<Utc>> = None;
        for hour in (0..24u32).filter(|h| bit(self.hours, *h)) {
            for minute in (0..60u32).filter(|m| bit(self.minutes, *m)) {
                let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                    continue;
                };
                let (first, second) = self.instants_of(local, tz);
                for instant in [first, second].into_iter().flatten() {
                    if instant > after && best.is_none_or(|b| instant < b) {
                        best = Some(instant);
                    }
                }
            }
        }
        best
    }

    /// The instants a local wall-clock time fires at: one normally; the first
    /// valid instant after a gap; one or both occurrences of a repeated time.
    fn instants_of(
        &self,
        local: NaiveDateTime,
        tz: Tz,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(instant) => (Some(instant.with_timezone(&Utc)), None),
            LocalResult::Ambiguous(first, second) => {
                let second = self.hour_wildcard.then(|| second.with_timezone(&Utc));
                (Some(first.with_timezone(&Utc)), second)
            }
            LocalResult::None => (first_valid_after_gap(local, tz), None),
        }
    }
}

/// The first instant whose local time is valid after a local time that a
/// gap skipped: the moment the clocks jumped (transitions fall on whole minutes).
fn first_valid_after_gap(local: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    (1..=LONGEST_GAP_MINUTES).find_map(|minutes| {
        let later = local.checked_add_signed(Duration::minutes(minutes))?;
        tz.from_local_datetime(&later)
            .earliest()
            .map(|instant| instant.with_timezone(&Utc))
    })
}

/// Days of the longest instance of `month` (February: 29).
fn longest_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn bit(mask: u64, value: u32) -> bool {
    value < 64 && mask & (1 << value) != 0
}

/// Parses one field into a bit mask of its values.
fn parse_field(part: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let mut mask = 0u64;
    for item in part.split(',') {
        mask |= parse_item(item, spec.min, spec.max)
            .map_err(|why| CronError(format!("{} field {part:?}: {why}", spec.name)))?;
    }
    Ok(mask)
}

/// Parses `*`, `n`, `a-b`, each with an optional `/step`.
fn parse_item(item: &str, min: u32, max: u32) -> Result<u64, String> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    let step = match step {
        Some(step) => {
            let step = cron_number(step)?;
            if step == 0 || step > max {
                return Err(format!("step must be between 1 and {max}"));
            }
            step
        }
        None => 1,
    };
    let (low, high) = if base == "*" {
        (min, max)
    } else {
        let (low, high) = match base.split_once('-') {
            Some((low, high)) => (cron_number(low)?, cron_number(high)?),
            // `n/step` runs from n to the maximum.
            None if item.contains('/') => (cron_number(base)?, max),
            None => {
                let value = cron_number(base)?;
                (value, value)
            }
        };
        if low < min || high > max {
            return Err(format!("values must be between {min} and {max}"));
        }
        if low > high {
            return Err(format!("range {low}-{high} is reversed"));
        }
        (low, high)
    };
    let mut mask = 0u64;
    let mut value = low;
    while value <= high {
        mask |= 1 << value;
        value += step;
    }
    Ok(mask)
}

fn cron_number(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{text:?} is not a number, `*`, a range or a step"));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test times are RFC 3339")
            .with_timezone(&Utc)
    }

    fn zone(name: &str) -> Tz {
        name.parse().expect("test zones exist")
    }

    /// The next `n` fire times after `after`, as RFC 3339 UTC strings.
    fn fires(cron: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let expr = CronExpr::parse(cron).expect("test expressions are valid");
        let tz = zone(tz);
        let mut at = utc(after);
        let mut out = Vec::new();
        for _ in 0..n {
            at = expr.next_after(at, tz).expect("fires");
            out.push(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        out
    }

    #[test]
    fn next_fire_times_follow_the_expression() {
        // (cron, zone, after, expected next fire times in UTC)
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // Every minute; strictly after, even on a boundary.
            (
                "* * * * *",
                "UTC",
                "2024-05-01T10:00:00Z",
                &["2024-05-01T10:01:00Z", "2024-05-01T10:02:00Z"],
            ),
            (
                "* * * * *",
                "UTC",
                "2024-05-01T10:00:30Z",
                &["2024-05-01T10:01:00Z"],
            ),
            // Steps and lists.
            (
                "*/15 * * * *",
                "UTC",
                "2024-05-01T10:07:00Z",
                &[
                    "2024-05-01T10:15:00Z",
                    "2024-05-01T10:30:00Z",
                    "2024-05-01T10:45:00Z",
                    "2024-05-01T11:00:00Z",
                ],
            ),
            (
                "5,35 8-9 * * *",
                "UTC",
                "2024-05-01T08:10:00Z",
                &[
                    "2024-05-01T08:35:00Z",
                    "2024-05-01T09:05:00Z",
                    "2024-05-01T09:35:00Z",
                    "2024-05-02T08:05:00Z",
                ],
            ),
            (
                "0 0-12/6 * * *",
                "UTC",
                "2024-05-01T00:00:00Z",
                &[
                    "2024-05-01T06:00:00Z",
                    "2024-05-01T12:00:00Z",
                    "2024-05-02T00:00:00Z",
                ],
            ),
            // `n/step` runs from n to the maximum.
            (
                "10/20 * * * *",
                "UTC",
                "2024-05-01T10:00:00Z",
                &[
                    "2024-05-01T10:10:00Z",
                    "2024-05-01T10:30:00Z",
                    "2024-05-01T10:50:00Z",
                    "2024-05-01T11:10:00Z",
                ],
            ),
            // Month and year boundaries.
            (
                "0 0 1 * *",
                "UTC",
                "2024-12-15T00:00:00Z",
                &["2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"],
            ),
            (
                "59 23 31 * *",
                "UTC",
                "2024-04-01T00:00:00Z",
                &["2024-05-31T23:59:00Z", "2024-07-31T23:59:00Z"],
            ),
            (
                "30 12 * 12 *",
                "UTC",
                "2024-12-31T12:30:00Z",
                &["2025-12-01T12:30:00Z"],
            ),
            // February 29 only in leap years.
            (
                "0 12 29 2 *",
                "UTC",
                "2024-03-01T00:00:00Z",
                &["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"],
            ),
            (
                "0 12 29 2 *",
                "UTC",
                "2096-03-01T00:00:00Z",
                &["2104-02-29T12:00:00Z"],
            ),
            // Weekdays; 7 is Sunday too. 2024-05-01 is a Wednesday.
            (
                "0 9 * * 1-5",
                "UTC",
                "2024-05-03T09:00:00Z",
                &["2024-05-06T09:00:00Z", "2024-05-07T09:00:00Z"],
            ),
            (
                "0 9 * * 7",
                "UTC",
                "2024-05-01T00:00:00Z",
                &["2024-05-05T09:00:00Z", "2024-05-12T09:00:00Z"],
            ),
            // Both day fields restricted: either matches (the 13th, or a Friday).
            (
                "0 0 13 * 5",
                "UTC",
                "2024-09-01T00:00:00Z",
                &[
                    "2024-09-06T00:00:00Z",
                    "2024-09-13T00:00:00Z",
                    "2024-09-20T00:00:00Z",
                    "2024-09-27T00:00:00Z",
                    "2024-10-04T00:00:00Z",
                    "2024-10-11T00:00:00Z",
                    "2024-10-13T00:00:00Z",
                ],
            ),
            // A day field starting with `*` counts as unrestricted, so both must
            // match: odd days (any weekday), then odd days that are Mondays.
            (
                "0 0 1-31/2 * */1",
                "UTC",
                "2024-05-01T00:00:00Z",
                &["2024-05-03T00:00:00Z", "2024-05-05T00:00:00Z"],
            ),
            (
                "0 0 */2 * 1",
                "UTC",
                "2024-05-01T00:00:00Z",
                &["2024-05-13T00:00:00Z", "2024-05-27T00:00:00Z"],
            ),
            // Time zones without daylight saving.
            (
                "0 3 * * *",
                "Asia/Kolkata",
                "2024-05-01T00:00:00Z",
                &["2024-05-01T21:30:00Z", "2024-05-02T21:30:00Z"],
            ),
        ];
        for (cron, tz, after, expected) in cases {
            assert_eq!(
                fires(cron, tz, after, expected.len()),
                *expected,
                "{cron} in {tz} after {after}"
            );
        }
    }

    #[test]
    fn daylight_saving_changes_neither_lose_nor_repeat_fixed_times() {
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // Berlin springs forward 2024-03-31 02:00 CET -> 03:00 CEST: 02:30 does
            // not exist and fires at the first valid instant after the gap.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2024-03-29T12:00:00Z",
                &[
                    "2024-03-30T01:30:00Z",
                    "2024-03-31T01:00:00Z",
                    "2024-04-01T00:30:00Z",
                ],
            ),
            // Times around the gap keep their wall-clock meaning.
            (
                "0 1,3 * * *",
                "Europe/Berlin",
                "2024-03-30T12:00:00Z",
                &["2024-03-31T00:00:00Z", "2024-03-31T01:00:00Z"],
            ),
            // Several skipped times fire once, at the end of the gap.
            (
                "0,30 2 * * *",
                "Europe/Berlin",
                "2024-03-30T12:00:00Z",
                &["2024-03-31T01:00:00Z", "2024-04-01T00:00:00Z"],
            ),
            // Berlin falls back 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 happens
            // twice and fires once, at its first occurrence.
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2024-10-26T12:00:00Z",
                &["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"],
            ),
            // An hourly-or-faster rhythm keeps going through the repeated hour.
            (
                "*/30 * * * *",
                "Europe/Berlin",
                "2024-10-27T00:00:00Z",
                &[
                    "2024-10-27T00:30:00Z",
                    "2024-10-27T01:00:00Z",
                    "2024-10-27T01:30:00Z",
                    "2024-10-27T02:00:00Z",
                ],
            ),
            // ...and across the gap it does not fire twice at the jump.
            (
                "*/30 * * * *",
                "Europe/Berlin",
                "2024-03-31T00:00:00Z",
                &[
                    "2024-03-31T00:30:00Z",
                    "2024-03-31T01:00:00Z",
                    "2024-03-31T01:30:00Z",
                ],
            ),
            // New York springs forward 2024-03-10 02:00 EST -> 03:00 EDT.
            (
                "15 2 * * *",
                "America/New_York",
                "2024-03-09T00:00:00Z",
                &[
                    "2024-03-09T07:15:00Z",
                    "2024-03-10T07:00:00Z",
                    "2024-03-11T06:15:00Z",
                ],
            ),
            (
                "15 2 * * *",
                "America/New_York",
                "2024-03-10T07:15:00Z",
                &["2024-03-11T06:15:00Z"],
            ),
            (
                "15 2 * * *",
                "America/New_York",
                "2024-03-10T05:00:00Z",
                &["2024-03-10T07:00:00Z", "2024-03-11T06:15:00Z"],
            ),
            // New York falls back 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 once.
            (
                "30 1 * * *",
                "America/New_York",
                "2024-11-02T12:00:00Z",
                &["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"],
            ),
            // Midnight and 23:00 on both sides of a change are ordinary.
            (
                "0 0 * * *",
                "America/New_York",
                "2024-11-02T12:00:00Z",
                &["2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"],
            ),
        ];
        for (cron, tz, after, expected) in cases {
            assert_eq!(
                fires(cron, tz, after, expected.len()),
                *expected,
                "{cron} in {tz} after {after}"
            );
        }
    }

    #[test]
    fn a_repeated_hour_fires_a_fixed_time_once_even_when_asked_from_inside_it() {
        // After the first 01:30 EDT (05:30Z), the second 01:30 EST (06:30Z) is skipped.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2024-11-03T05:30:00Z", 1),
            ["2024-11-04T06:30:00Z"]
        );
    }

    #[test]
    fn expressions_that_can_never_fire_are_refused() {
        for cron in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 */7"] {
            let error = CronExpr::parse(cron).expect_err(cron);
            assert!(error.to_string().contains("never fires"), "{cron}: {error}");
        }
        // February 29 fires in leap years; with a restricted weekday either matches.
        for cron in ["0 0 29 2 *", "0 0 30 2 1", "0 0 29 2 */7"] {
            assert!(CronExpr::parse(cron).is_ok(), "{cron}");
        }
    }

    #[test]
    fn malformed_expressions_name_the_field() {
        let cases = [
            ("* * * *", "must have 5 fields"),
            (
                "60 * * * *",
                "minute field \"60\": values must be between 0 and 59",
            ),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("*/0 * * * *", "step must be between 1 and 59"),
            ("5-1 * * * *", "range 5-1 is reversed"),
            ("a * * * *", "is not a number"),
            ("1,,2 * * * *", "is not a number"),
            ("99999999999 * * * *", "is out of range"),
        ];
        for (cron, expected) in cases {
            let error = CronExpr::parse(cron).expect_err(cron).to_string();
            assert!(error.contains(expected), "{cron}: {error}");
        }
    }
}
