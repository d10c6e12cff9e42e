//! Domain types for jobs: what to back up, where to, how and when.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::check_len;
use super::run::{JobOptions, Labels, RunState, Target};
use crate::error::{DomainError, DomainResult, Violations};

/// Longest job name, in characters.
pub const MAX_NAME_LEN: usize = 100;
/// Longest job description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 2000;

/// When a job runs by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Five-field cron expression; empty means on demand only.
    pub cron: String,
    /// IANA time zone; empty means UTC.
    pub time_zone: String,
    /// Whether the schedule is suspended.
    pub paused: bool,
}

impl Schedule {
    /// Checks the expression and the time zone; `field` is the schedule's path.
    pub fn validate(&self, field: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        if !self.cron.is_empty() {
            violations.absorb(check_cron(&format!("{field}.cron"), &self.cron));
        }
        violations.absorb(check_time_zone(
            &format!("{field}.time_zone"),
            &self.time_zone,
        ));
        violations.finish()
    }
}

/// The editable fields of a job: what CreateJob stores and UpdateJob replaces.
#[derive(Clone, Debug, PartialEq)]
pub struct JobDraft {
    /// Owner.
    pub owner_id: Uuid,
    /// Name, unique per owner.
    pub name: String,
    /// Free-form description.
    pub description: String,
    /// Absolute source path.
    pub source_path: String,
    /// Where backups go.
    pub target: Target,
    /// How the source is read.
    pub options: JobOptions,
    /// When the job runs by itself.
    pub schedule: Schedule,
    /// Retention policy of the job's snapshots.
    pub retention_policy_id: Option<Uuid>,
    /// Labels a worker must carry.
    pub worker_selector: Labels,
    /// Attempts before a run fails; 0 uses the configured default.
    pub max_attempts: i32,
}

impl JobDraft {
    /// A draft with every field empty, to be filled field by field. The target
    /// is a placeholder that conversion must replace (it is not a valid path).
    pub fn empty(owner_id: Uuid) -> Self {
        JobDraft {
            owner_id,
            name: String::new(),
            description: String::new(),
            source_path: String::new(),
            target: Target::Filesystem {
                path: String::new(),
            },
            options: JobOptions::default(),
            schedule: Schedule::default(),
            retention_policy_id: None,
            worker_selector: Labels::new(),
            max_attempts: 0,
        }
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Id.
    pub id: Uuid,
    /// The editable fields.
    pub draft: JobDraft,
    /// Next time the schedule fires.
    pub next_run_time: Option<DateTime<Utc>>,
    /// The latest run, if any.
    pub last_run: Option<JobRunSummary>,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// The state of a job's latest run.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRunSummary {
    /// The run.
    pub run_id: Uuid,
    /// Its state.
    pub state: RunState,
    /// Its error.
    pub error: String,
    /// When it finished.
    pub finish_time: Option<DateTime<Utc>>,
}

/// Filters of ListJobs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFilter {
    /// Only jobs of this owner.
    pub owner_id: Option<Uuid>,
    /// Only jobs writing to this bucket.
    pub bucket_id: Option<Uuid>,
    /// Only jobs whose name starts with this.
    pub name_prefix: String,
}

/// Checks a job name (1-100 characters).
pub fn check_job_name(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 1, MAX_NAME_LEN)?;
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Inclusive numeric range of each cron field, in order.
const CRON_FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Checks a five-field cron expression (numbers, `*`, ranges `a-b`, steps `/n`, lists `a,b`).
pub fn check_cron(field: &str, value: &str) -> DomainResult<()> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != CRON_FIELDS.len() {
        return Err(DomainError::invalid(
            field,
            "must have 5 fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *`",
        ));
    }
    for (part, (name, min, max)) in parts.iter().zip(CRON_FIELDS) {
        check_cron_field(part, min, max)
            .map_err(|why| DomainError::invalid(field, format!("{name} field {part:?}: {why}")))?;
    }
    Ok(())
}

fn check_cron_field(part: &str, min: u32, max: u32) -> Result<(), String> {
    for item in part.split(',') {
        check_cron_item(item, min, max)?;
    }
    Ok(())
}

fn check_cron_item(item: &str, min: u32, max: u32) -> Result<(), String> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        let step = cron_number(step)?;
        if step == 0 || step > max {
            return Err(format!("step must be between 1 and {max}"));
        }
    }
    if base == "*" {
        return Ok(());
    }
    let (low, high) = match base.split_once('-') {
        Some((low, high)) => (cron_number(low)?, cron_number(high)?),
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
    Ok(())
}

fn cron_number(text: &str) -> Result<u32, String> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{text:?} is not a number, `*`, a range or a step"));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is out of range"))
}

/// Parses a time zone: empty or `UTC` is UTC, anything else an IANA name
/// from the tz database compiled into the binary.
pub fn parse_time_zone(value: &str) -> Option<chrono_tz::Tz> {
    if value.is_empty() {
        return Some(chrono_tz::UTC);
    }
    value.parse().ok()
}

/// Checks a time zone: empty, `UTC`, or an IANA name like `Europe/Berlin`.
pub fn check_time_zone(field: &str, value: &str) -> DomainResult<()> {
    if value.len() <= 64 && parse_time_zone(value).is_some() {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must be empty, `UTC` or an IANA time zone like `Europe/Berlin`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_accepts_common_expressions() {
        for cron in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0-6/2 1,15 * 1-5",
            "5 4 * 12 7",
        ] {
            assert!(check_cron("c", cron).is_ok(), "{cron}");
        }
    }

    #[test]
    fn cron_rejects_bad_expressions() {
        for cron in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "* * * * * *",
            "1,,2 * * * *",
        ] {
            assert!(check_cron("c", cron).is_err(), "{cron}");
        }
    }

    #[test]
    fn time_zones() {
        for tz in [
            "",
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert!(check_time_zone("tz", tz).is_ok(), "{tz}");
        }
        for tz in [
            "utc",
            "Berlin",
            "Europe/",
            "europe/berlin",
            "Europe/Ber lin",
            "Mars/Olympus_Mons",
        ] {
            assert!(check_time_zone("tz", tz).is_err(), "{tz}");
        }
    }
}
