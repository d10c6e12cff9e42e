//! A bandwidth limit as an operator writes it: one rate, or a timetable of
//! rates by time of day.
//!
//! `10MiB` limits to 10 MiB/s all day; `off` (or `0`, or nothing) does not
//! limit. A timetable is a list of `HH:MM,RATE` entries separated by spaces,
//! each in force from its time of day until the next one's, the last one
//! wrapping round midnight, e.g. `08:00,2MiB 18:00,20MiB 23:30,off` — the
//! syntax rclone's `--bwlimit` made familiar. Times are the worker host's
//! local time. Rates take the units of [`bytesize`]: `KiB`, `MiB`, `GiB`
//! (powers of 1024), `kB`, `MB`, `GB` (powers of 1000), or plain bytes.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use chrono::NaiveTime;

/// The smallest limit accepted: anything slower would stall every request
/// past its timeouts.
pub const MIN_RATE: u64 = 1024;
/// The largest limit accepted, in bytes per second (the token bucket counts
/// in `u32`); faster than any link a worker has, so `off` says the same.
pub const MAX_RATE: u64 = u32::MAX as u64;

/// A rate in bytes per second, within [`MIN_RATE`]..=[`MAX_RATE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(NonZeroU32);

impl Rate {
    /// Checks `bytes_per_second`; 0 means no limit (`None`).
    pub fn new(bytes_per_second: u64) -> Result<Option<Rate>, String> {
        if bytes_per_second == 0 {
            return Ok(None);
        }
        if !(MIN_RATE..=MAX_RATE).contains(&bytes_per_second) {
            return Err(format!(
                "a limit must be between {MIN_RATE} and {MAX_RATE} bytes per second (0 or \"off\" for none), not {bytes_per_second}"
            ));
        }
        let rate = u32::try_from(bytes_per_second).expect("checked against MAX_RATE");
        Ok(Some(Rate(
            NonZeroU32::new(rate).expect("checked against MIN_RATE"),
        )))
    }

    /// Bytes per second.
    pub fn bytes_per_second(self) -> u64 {
        u64::from(self.0.get())
    }

    /// Bytes per second, as the token bucket counts them.
    pub fn as_non_zero(self) -> NonZeroU32 {
        self.0
    }
}

/// Parses one rate: `off`, `0`, or a size per second such as `512KiB`.
fn parse_rate(text: &str) -> Result<Option<Rate>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let text = text.strip_suffix("/s").unwrap_or(text);
    let size: bytesize::ByteSize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. 512KiB, 10MiB, 1.5GB or off)"))?;
    Rate::new(size.as_u64())
}

/// A limit by time of day: the rate in force from each start time on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timetable {
    /// Sorted by start time, at most one entry per start. Empty: no limit.
    entries: Vec<(NaiveTime, Option<Rate>)>,
}

impl Timetable {
    /// One rate all day (`None`: no limit).
    pub fn constant(rate: Option<Rate>) -> Self {
        match rate {
            None => Timetable::default(),
            Some(rate) => Timetable {
                entries: vec![(NaiveTime::MIN, Some(rate))],
            },
        }
    }

    /// Whether it never limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.entries.iter().all(|(_, rate)| rate.is_none())
    }

    /// The entries, by start time.
    pub fn entries(&self) -> &[(NaiveTime, Option<Rate>)] {
        &self.entries
    }

    /// The index of the entry in force at `now` (`None` when empty): the
    /// last one starting at or before it, or the day's last entry before
    /// the first one starts.
    pub fn entry_at(&self, now: NaiveTime) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let started = self.entries.partition_point(|(start, _)| *start <= now);
        Some(started.checked_sub(1).unwrap_or(self.entries.len() - 1))
    }

    /// The rate in force at `now`.
    pub fn rate_at(&self, now: NaiveTime) -> Option<Rate> {
        self.entry_at(now).and_then(|index| self.entries[index].1)
    }
}

impl FromStr for Timetable {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.contains(',') {
            return parse_rate(text).map(Timetable::constant);
        }
        let mut entries = Vec::new();
        for entry in text.split_whitespace() {
            let (time, rate) = entry
                .split_once(',')
                .ok_or_else(|| format!("{entry:?} is not a timetable entry (HH:MM,RATE)"))?;
            let start = NaiveTime::parse_from_str(time, "%H:%M")
                .map_err(|_| format!("{time:?} is not a time of day (HH:MM)"))?;
            entries.push((start, parse_rate(rate)?));
        }
        entries.sort_by_key(|(start, _)| *start);
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(format!(
                "two entries start at {}",
                pair[0].0.format("%H:%M")
            ));
        }
        Ok(Timetable { entries })
    }
}

impl fmt::Display for Timetable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |rate: &Option<Rate>| match rate {
            None => "off".to_owned(),
            Some(rate) => bytesize::ByteSize(rate.bytes_per_second()).to_string(),
        };
        match self.entries.as_slice() {
            [] => f.write_str("off"),
            [(start, only)] if *start == NaiveTime::MIN => f.write_str(&rate(only)),
            entries => {
                let parts: Vec<String> = entries
                    .iter()
                    .map(|(start, r)| format!("{},{}", start.format("%H:%M"), rate(r)))
                    .collect();
                f.write_str(&parts.join(" "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveTime {
        NaiveTime::parse_from_str(text, "%H:%M").expect("a time")
    }

    fn rate(bytes: u64) -> Option<Rate> {
        Rate::new(bytes).expect("a valid rate")
    }

    #[test]
    fn a_single_rate_holds_all_day() {
        let table: Timetable = "10MiB".parse().expect("parses");
        assert_eq!(table.rate_at(at("00:00")), rate(10 << 20));
        assert_eq!(table.rate_at(at("23:59")), rate(10 << 20));
        assert_eq!(
            "512KiB/s"
                .parse::<Timetable>()
                .expect("parses")
                .rate_at(at("12:00")),
            rate(512 << 10)
        );
        assert_eq!(
            "2MB"
                .parse::<Timetable>()
                .expect("parses")
                .rate_at(at("12:00")),
            rate(2_000_000)
        );
        assert_eq!(
            "65536"
                .parse::<Timetable>()
                .expect("parses")
                .rate_at(at("12:00")),
            rate(65536)
        );
    }

    #[test]
    fn off_zero_and_nothing_do_not_limit() {
        for text in ["", "off", "OFF", "0", " 0 "] {
            let table: Timetable = text.parse().expect("parses");
            assert!(table.is_unlimited(), "{text:?}");
            assert_eq!(table.rate_at(at("12:00")), None);
        }
    }

    #[test]
    fn a_timetable_switches_at_its_times_and_wraps_round_midnight() {
        let table: Timetable = "18:00,20MiB 08:00,2MiB 23:30,off".parse().expect("parses");
        assert_eq!(
            table.rate_at(at("07:59")),
            None,
            "before the first entry: the last one's"
        );
        assert_eq!(table.rate_at(at("08:00")), rate(2 << 20));
        assert_eq!(table.rate_at(at("17:59")), rate(2 << 20));
        assert_eq!(table.rate_at(at("18:00")), rate(20 << 20));
        assert_eq!(table.rate_at(at("23:30")), None);
        assert!(!table.is_unlimited());
        assert_eq!(table.to_string(), "08:00,2.0 MiB 18:00,20.0 MiB 23:30,off");
    }

    #[test]
    fn malformed_limits_are_refused_with_the_reason() {
        for (text, says) in [
            ("fast", "not a rate"),
            ("10 parsecs", "not a rate"),
            ("100", "between 1024"),
            ("8GiB", "between 1024"),
            ("25:00,1MiB", "not a time of day"),
            ("08:00,1MiB 8:00,2MiB", "two entries start at 08:00"),
            ("08:00,1MiB 18:00", "not a timetable entry"),
            ("08:00,slow", "not a rate"),
        ] {
            let error = text.parse::<Timetable>().expect_err(text);
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
