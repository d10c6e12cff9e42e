//! Domain types for jobs: what to back up, where to, how and when.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::check_len;
use super::command::BackupCommands;
use super::run::{BackupSpec, JobOptions, Labels, NewRun, RunSpec, RunState, Target};
use crate::error::{DomainError, DomainResult, Violations};
use crate::scheduler::cron::CronExpr;

/// Longest job name, in characters.
pub const MAX_NAME_LEN: usize = 100;
/// Longest job description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 2000;

/// What the scheduler does with ticks it reached too late (no control plane
/// was up, or none led the scheduler, when they were due).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissedRunPolicy {
    /// One run for all the missed ticks together, as soon as possible.
    #[default]
    RunOnce,
    /// No run; the job next runs at its next tick in the future.
    Skip,
}

impl MissedRunPolicy {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRunPolicy::RunOnce => "run_once",
            MissedRunPolicy::Skip => "skip",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "run_once" => Ok(MissedRunPolicy::RunOnce),
            "skip" => Ok(MissedRunPolicy::Skip),
            other => Err(DomainError::Internal(format!(
                "unknown missed-run policy {other:?} in the catalog"
            ))),
        }
    }
}

/// What the scheduler does when a tick fires while a run of the job is still
/// queued or running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverlapPolicy {
    /// The tick is dropped.
    #[default]
    Skip,
    /// The tick waits and its run is created when the earlier run ends (at
    /// most one tick waits; later ones merge into it).
    Queue,
}

impl OverlapPolicy {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::Queue => "queue",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "skip" => Ok(OverlapPolicy::Skip),
            "queue" => Ok(OverlapPolicy::Queue),
            other => Err(DomainError::Internal(format!(
                "unknown overlap policy {other:?} in the catalog"
            ))),
        }
    }
}

/// When a job runs by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Five-field cron expression; empty means on demand only.
    pub cron: String,
    /// IANA time zone; empty means UTC.
    pub time_zone: String,
    /// Whether the schedule is suspended.
    pub paused: bool,
    /// Ticks missed while no control plane was up.
    pub missed_runs: MissedRunPolicy,
    /// Ticks that fire while a run of the job is still queued or running.
    pub overlap: OverlapPolicy,
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

    /// Whether the scheduler fires this schedule: it has an expression and is not paused.
    pub fn is_active(&self) -> bool {
        !self.cron.is_empty() && !self.paused
    }

    /// The first tick strictly after `after`, or `None` when the schedule is
    /// inactive. A stored schedule that no longer parses is an internal error.
    pub fn next_fire_after(&self, after: DateTime<Utc>) -> DomainResult<Option<DateTime<Utc>>> {
        if !self.is_active() {
            return Ok(None);
        }
        let expr = CronExpr::parse(&self.cron).map_err(|e| {
            DomainError::Internal(format!("stored cron expression {:?}: {e}", self.cron))
        })?;
        let tz = parse_time_zone(&self.time_zone).ok_or_else(|| {
            DomainError::Internal(format!("stored time zone {:?} is unknown", self.time_zone))
        })?;
        Ok(expr.next_after(after, tz))
    }
}

/// The idempotency key of the run the scheduler creates for `job_id`'s tick
/// at `fire_time`. Every replica derives the same key, so a tick can never
/// become two runs (`UNIQUE (owner_id, request_id)`), even with two leaders.
pub fn scheduled_request_id(job_id: Uuid, fire_time: DateTime<Utc>) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"coffer scheduled run\0")
        .chain_update(job_id.as_bytes())
        .chain_update(fire_time.timestamp_micros().to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
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
    /// Command sources and hooks of its backups.
    pub commands: BackupCommands,
    /// A one-shot schedule: the job runs once, at this time.
    pub start_time: Option<DateTime<Utc>>,
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
            commands: BackupCommands::default(),
            start_time: None,
        }
    }

    /// The job's first tick after `now`: its one-shot start time if it has
    /// one (the scheduler fires it once and then finds no next tick, since a
    /// one-shot job has no expression), else its schedule's next tick.
    pub fn first_fire_after(&self, now: DateTime<Utc>) -> DomainResult<Option<DateTime<Utc>>> {
        match self.start_time {
            Some(start) => Ok(Some(start)),
            None => self.schedule.next_fire_after(now),
        }
    }

    /// Checks that a one-shot start time stands alone: no cron expression and
    /// no pause beside it (its policies still apply).
    pub fn check_start_time_combination(&self) -> DomainResult<()> {
        if self.start_time.is_none() {
            return Ok(());
        }
        if !self.schedule.cron.is_empty() {
            return Err(DomainError::invalid(
                "job.start_time",
                "a job runs either once at start_time or on schedule.cron, not both",
            ));
        }
        if self.schedule.paused {
            return Err(DomainError::invalid(
                "job.schedule.paused",
                "a one-shot job cannot be paused; clear start_time to cancel it",
            ));
        }
        Ok(())
    }
}

/// How far before the control plane's clock a new start time may lie and
/// still be taken (it fires at once): room for a client's clock running
/// behind, not a way to backdate runs.
pub const START_TIME_TOLERANCE: chrono::Duration = chrono::Duration::minutes(1);

/// Checks a start time being set at `now` (the catalog's clock): one more
/// than [`START_TIME_TOLERANCE`] in the past is refused rather than fired,
/// because it is more likely a mistake (a stale example, a wrong zone) than
/// a wish to run now, which CreateRun does.
pub fn check_start_time(field: &str, start: DateTime<Utc>, now: DateTime<Utc>) -> DomainResult<()> {
    if start >= now - START_TIME_TOLERANCE {
        return Ok(());
    }
    Err(DomainError::invalid(
        field,
        format!(
            "{} is in the past (the control plane's clock reads {}); \
             choose a later time, or start a run now with RunService.CreateRun",
            start.to_rfc3339(),
            now.to_rfc3339()
        ),
    ))
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
    /// A tick waiting for the job's earlier run to end (overlap policy queue).
    pub pending_fire_time: Option<DateTime<Utc>>,
    /// The latest run, if any.
    pub last_run: Option<JobRunSummary>,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

impl Job {
    /// A backup run of this job as it is defined now, owned by the job's owner.
    /// `default_max_attempts` applies when the job does not set its own.
    pub fn backup_run(&self, default_max_attempts: i32, request_id: Option<Uuid>) -> NewRun {
        let draft = &self.draft;
        let max_attempts = match draft.max_attempts {
            n if n > 0 => n,
            _ => default_max_attempts,
        };
        NewRun {
            owner_id: draft.owner_id,
            job_id: Some(self.id),
            spec: RunSpec::Backup(BackupSpec {
                job_id: Some(self.id),
                source_path: draft.source_path.clone(),
                target: draft.target.clone(),
                options: draft.options.clone(),
                worker_selector: draft.worker_selector.clone(),
                commands: draft.commands.clone(),
            }),
            max_attempts,
            request_id,
        }
    }
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

/// Checks a five-field cron expression (numbers, `*`, ranges `a-b`, steps `/n`,
/// lists `a,b`) that fires on some date.
pub fn check_cron(field: &str, value: &str) -> DomainResult<()> {
    CronExpr::parse(value)
        .map(|_| ())
        .map_err(|e| DomainError::invalid(field, e.to_string()))
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
    fn scheduled_request_ids_are_the_same_on_every_replica_and_differ_per_tick() {
        let job = Uuid::now_v7();
        let tick = DateTime::from_timestamp(1_714_536_000, 0).expect("valid time");
        let id = scheduled_request_id(job, tick);
        assert_eq!(id, scheduled_request_id(job, tick));
        assert_eq!(id.get_version_num(), 8);
        assert_ne!(id, scheduled_request_id(Uuid::now_v7(), tick));
        let next = tick + chrono::Duration::minutes(1);
        assert_ne!(id, scheduled_request_id(job, next));
    }

    #[test]
    fn paused_or_empty_schedules_have_no_next_fire_time() {
        let now = Utc::now();
        let mut schedule = Schedule {
            cron: "* * * * *".into(),
            ..Default::default()
        };
        assert!(schedule.next_fire_after(now).expect("valid").is_some());
        schedule.paused = true;
        assert_eq!(schedule.next_fire_after(now).expect("valid"), None);
        let empty = Schedule::default();
        assert_eq!(empty.next_fire_after(now).expect("valid"), None);
    }

    #[test]
    fn start_times_up_to_the_tolerance_in_the_past_are_taken() {
        let now = DateTime::from_timestamp(1_714_536_000, 0).expect("valid time");
        let later = now + chrono::Duration::days(3);
        assert!(check_start_time("s", later, now).is_ok());
        assert!(check_start_time("s", now - START_TIME_TOLERANCE, now).is_ok());
        let stale = now - START_TIME_TOLERANCE - chrono::Duration::seconds(1);
        let refused = check_start_time("s", stale, now).expect_err("in the past");
        assert!(refused.to_string().contains("in the past"), "{refused}");
    }

    #[test]
    fn a_one_shot_job_fires_at_its_start_time_whatever_the_clock() {
        let now = Utc::now();
        let start = now + chrono::Duration::hours(2);
        let mut draft = JobDraft::empty(Uuid::now_v7());
        draft.start_time = Some(start);
        assert_eq!(draft.first_fire_after(now).expect("valid"), Some(start));
        assert!(draft.check_start_time_combination().is_ok());
        draft.schedule.cron = "0 3 * * *".into();
        assert!(draft.check_start_time_combination().is_err());
        draft.schedule.cron.clear();
        draft.schedule.paused = true;
        assert!(draft.check_start_time_combination().is_err());
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
