//! Conversions between the domain types and their protos that more than one
//! gRPC adapter needs (the services in `api/` and the lease session): times,
//! durations, ids, targets, job options, labels and runs. Conversions from a
//! proto validate and name the offending field, so a bad value becomes
//! INVALID_ARGUMENT; those only one service uses stay in that service's file.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use coffer_proto::v1 as pb;
use prost_types::Timestamp;
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::model::run::{
    check_selector, BackupSpec, JobOptions, Labels, NewRunExclusion, Run, RunErrorEntry,
    RunExclusionEntry, RunKind, RunPhase, RunProgress, RunSpec, RunState, Target,
};

/// Converts a time to a protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts an optional time.
pub fn optional_timestamp(time: Option<DateTime<Utc>>) -> Option<Timestamp> {
    time.map(timestamp)
}

/// Converts a protobuf timestamp, rejecting out-of-range values.
pub fn from_timestamp(field: &str, value: &Timestamp) -> DomainResult<DateTime<Utc>> {
    let nanos = u32::try_from(value.nanos)
        .map_err(|_| DomainError::invalid(field, "nanos must not be negative"))?;
    let time = DateTime::from_timestamp(value.seconds, nanos)
        .ok_or_else(|| DomainError::invalid(field, "timestamp out of range"))?;
    // Both catalogs store microseconds.
    Ok(DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time))
}

/// Converts an optional protobuf timestamp.
pub fn optional_time(
    field: &str,
    value: Option<&Timestamp>,
) -> DomainResult<Option<DateTime<Utc>>> {
    value.map(|t| from_timestamp(field, t)).transpose()
}

/// Converts a duration to its proto.
pub fn duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A whole number of seconds as a proto duration.
pub fn seconds(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// Converts a proto duration that must be a whole, non-negative number of
/// seconds (`None` when unset).
pub fn whole_seconds(
    field: &str,
    value: Option<&prost_types::Duration>,
) -> DomainResult<Option<i64>> {
    match value {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            Err(DomainError::invalid(field, "must not be negative"))
        }
        Some(d) if d.nanos != 0 => Err(DomainError::invalid(
            field,
            "must be a whole number of seconds",
        )),
        Some(d) => Ok(Some(d.seconds)),
    }
}

/// Takes a required message field.
pub fn required<T>(field: &str, value: Option<T>) -> DomainResult<T> {
    value.ok_or_else(|| DomainError::invalid(field, "is required"))
}

/// An optional id as the API spells it: empty when unset.
pub fn optional_id(id: Option<Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

/// Converts and validates a target; `field` is the path of the `Target` message.
pub fn target_from_proto(field: &str, target: Option<pb::Target>) -> DomainResult<Target> {
    use pb::target::Destination;
    let destination = required(field, target)?.destination.ok_or_else(|| {
        DomainError::invalid(
            field,
            "exactly one of bucket, filesystem_path or nfs_path must be set",
        )
    })?;
    let target = match destination {
        Destination::Bucket(bucket) => Target::Bucket {
            bucket_id: crate::model::parse_id(
                &format!("{field}.bucket.bucket_id"),
                &bucket.bucket_id,
            )?,
            prefix: bucket.prefix,
        },
        Destination::FilesystemPath(path) => Target::Filesystem { path },
        Destination::NfsPath(path) => Target::Nfs { path },
    };
    target.validate(field)?;
    Ok(target)
}

/// Converts a target to its proto.
pub fn target_to_proto(target: &Target) -> pb::Target {
    use pb::target::Destination;
    let destination = match target {
        Target::Bucket { bucket_id, prefix } => Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket_id.to_string(),
            prefix: prefix.clone(),
        }),
        Target::Filesystem { path } => Destination::FilesystemPath(path.clone()),
        Target::Nfs { path } => Destination::NfsPath(path.clone()),
    };
    pb::Target {
        destination: Some(destination),
    }
}

/// Converts and validates job options (unset means the defaults).
pub fn options_from_proto(
    field: &str,
    options: Option<pb::JobOptions>,
) -> DomainResult<JobOptions> {
    let options = options.map_or_else(JobOptions::default, |o| JobOptions {
        exclude: o.exclude,
        fail_on_file_errors: o.fail_on_file_errors,
        one_file_system: o.one_file_system,
        // Ignore files and exclusions.
        ignore_file_name: o.ignore_file_name,
        ignore_files_disabled: o.ignore_files_disabled,
        exclude_caches: o.exclude_caches,
        exclude_if_present: o.exclude_if_present,
        max_file_size_bytes: o.max_file_size_bytes,
        upload_limit_bytes_per_second: o.upload_limit_bytes_per_second,
        download_limit_bytes_per_second: o.download_limit_bytes_per_second,
        pack_storage_class: o.pack_storage_class,
    });
    options.validate(field)?;
    Ok(options)
}

/// Converts job options to their proto.
pub fn options_to_proto(options: &JobOptions) -> pb::JobOptions {
    pb::JobOptions {
        exclude: options.exclude.clone(),
        fail_on_file_errors: options.fail_on_file_errors,
        one_file_system: options.one_file_system,
        // Ignore files and exclusions.
        ignore_file_name: options.ignore_file_name.clone(),
        ignore_files_disabled: options.ignore_files_disabled,
        exclude_caches: options.exclude_caches,
        exclude_if_present: options.exclude_if_present.clone(),
        max_file_size_bytes: options.max_file_size_bytes,
        upload_limit_bytes_per_second: options.upload_limit_bytes_per_second,
        download_limit_bytes_per_second: options.download_limit_bytes_per_second,
        pack_storage_class: options.pack_storage_class.clone(),
    }
}

/// Converts and validates a worker selector.
pub fn selector_from_proto(field: &str, labels: HashMap<String, String>) -> DomainResult<Labels> {
    let labels: Labels = labels.into_iter().collect();
    check_selector(field, &labels)?;
    Ok(labels)
}

/// Converts labels to their proto map.
pub fn labels_to_proto(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Every run state, to look a proto value up.
const RUN_STATES: [RunState; 5] = [
    RunState::Queued,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
];

/// Every run kind, to look a proto value up.
const RUN_KINDS: [RunKind; 10] = [
    RunKind::Backup,
    RunKind::Restore,
    RunKind::Verify,
    RunKind::Retention,
    RunKind::GarbageCollection,
    RunKind::RebuildCatalog,
    RunKind::Download,
    RunKind::BackupDryRun,
    RunKind::Copy,
    RunKind::KeySlots,
];

/// The API spelling of a run state (`RUN_STATE_QUEUED`, ...).
pub fn run_state_to_proto(state: RunState) -> pb::RunState {
    match state {
        RunState::Queued => pb::RunState::Queued,
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
    }
}

/// The proto of a run kind.
pub fn run_kind_to_proto(kind: RunKind) -> pb::RunKind {
    match kind {
        RunKind::Backup => pb::RunKind::Backup,
        RunKind::Restore => pb::RunKind::Restore,
        RunKind::Verify => pb::RunKind::Verify,
        RunKind::Retention => pb::RunKind::Retention,
        RunKind::GarbageCollection => pb::RunKind::GarbageCollection,
        RunKind::RebuildCatalog => pb::RunKind::RebuildCatalog,
        RunKind::Download => pb::RunKind::Download,
        RunKind::BackupDryRun => pb::RunKind::BackupDryRun,
        RunKind::Copy => pb::RunKind::Copy,
        RunKind::KeySlots => pb::RunKind::KeySlots,
    }
}

/// A run-state filter: `None` for UNSPECIFIED, an error for unknown values.
pub fn run_state_from_proto(value: i32) -> DomainResult<Option<RunState>> {
    enum_filter(&RUN_STATES, |s| run_state_to_proto(s) as i32, value)
        .ok_or_else(|| DomainError::invalid("state", "unknown run state"))
}

/// A run-kind filter: `None` for UNSPECIFIED, an error for unknown values.
pub fn run_kind_from_proto(value: i32) -> DomainResult<Option<RunKind>> {
    enum_filter(&RUN_KINDS, |k| run_kind_to_proto(k) as i32, value)
        .ok_or_else(|| DomainError::invalid("kind", "unknown run kind"))
}

/// The domain value whose proto is `value`: `Some(None)` for the proto's
/// UNSPECIFIED (zero), `None` for a value no domain value has.
fn enum_filter<T: Copy>(all: &[T], to_proto: impl Fn(T) -> i32, value: i32) -> Option<Option<T>> {
    if value == 0 {
        return Some(None);
    }
    all.iter()
        .copied()
        .find(|v| to_proto(*v) == value)
        .map(Some)
}

impl From<RunProgress> for pb::RunProgress {
    fn from(p: RunProgress) -> Self {
        pb::RunProgress {
            files_seen: p.files_seen,
            files_done: p.files_done,
            bytes_seen: p.bytes_seen,
            bytes_done: p.bytes_done,
            bytes_uploaded: p.bytes_uploaded,
            error_count: p.error_count,
            bytes_per_second: p.bytes_per_second,
            current_path: p.current_path,
            phase: phase_to_proto(p.phase) as i32,
            bytes_read: p.bytes_read,
            bytes_deduplicated: p.bytes_deduplicated,
            totals_known: p.totals_known,
            eta: p
                .eta_seconds
                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            upload_limit_bytes_per_second: p.upload_limit_bytes_per_second,
            download_limit_bytes_per_second: p.download_limit_bytes_per_second,
            throttled: (p.throttled_millis > 0).then(|| prost_types::Duration {
                seconds: p.throttled_millis / 1000,
                nanos: i32::try_from(p.throttled_millis % 1000 * 1_000_000).unwrap_or(0),
            }),
        }
    }
}

/// Progress as a worker reports it: an unknown phase reads as unspecified and
/// a negative estimate as none (the worker is not trusted to be sane).
impl From<pb::RunProgress> for RunProgress {
    fn from(p: pb::RunProgress) -> Self {
        RunProgress {
            files_seen: p.files_seen,
            files_done: p.files_done,
            bytes_seen: p.bytes_seen,
            bytes_done: p.bytes_done,
            bytes_uploaded: p.bytes_uploaded,
            error_count: p.error_count,
            bytes_per_second: p.bytes_per_second,
            current_path: p.current_path,
            phase: phase_from_proto(p.phase),
            bytes_read: p.bytes_read,
            bytes_deduplicated: p.bytes_deduplicated,
            totals_known: p.totals_known,
            eta_seconds: p.eta.map(|eta| eta.seconds).filter(|s| *s >= 0),
            upload_limit_bytes_per_second: p.upload_limit_bytes_per_second.max(0),
            download_limit_bytes_per_second: p.download_limit_bytes_per_second.max(0),
            throttled_millis: p
                .throttled
                .filter(|d| d.seconds >= 0 && d.nanos >= 0)
                .map_or(0, |d| {
                    d.seconds
                        .saturating_mul(1000)
                        .saturating_add(i64::from(d.nanos / 1_000_000))
                }),
        }
    }
}

fn phase_to_proto(phase: RunPhase) -> pb::RunPhase {
    match phase {
        RunPhase::Unspecified => pb::RunPhase::Unspecified,
        RunPhase::Preparing => pb::RunPhase::Preparing,
        RunPhase::Scanning => pb::RunPhase::Scanning,
        RunPhase::Transferring => pb::RunPhase::Transferring,
        RunPhase::Finishing => pb::RunPhase::Finishing,
    }
}

fn phase_from_proto(phase: i32) -> RunPhase {
    match pb::RunPhase::try_from(phase) {
        Ok(pb::RunPhase::Preparing) => RunPhase::Preparing,
        Ok(pb::RunPhase::Scanning) => RunPhase::Scanning,
        Ok(pb::RunPhase::Transferring) => RunPhase::Transferring,
        Ok(pb::RunPhase::Finishing) => RunPhase::Finishing,
        Ok(pb::RunPhase::Unspecified) | Err(_) => RunPhase::Unspecified,
    }
}

fn backup_to_proto(backup: &BackupSpec, dry_run: bool) -> pb::BackupSpec {
    pb::BackupSpec {
        job_id: optional_id(backup.job_id),
        source_path: backup.source_path.clone(),
        target: Some(target_to_proto(&backup.target)),
        options: Some(options_to_proto(&backup.options)),
        worker_selector: labels_to_proto(&backup.worker_selector),
        dry_run,
        command_sources: super::commands::sources_to_proto(&backup.commands),
        pre_hook_command_ids: super::commands::ids_to_proto(&backup.commands.pre_hooks),
        post_hook_command_ids: super::commands::ids_to_proto(&backup.commands.post_hooks),
    }
}

fn spec_to_proto(spec: &RunSpec) -> pb::run::Spec {
    match spec {
        RunSpec::Backup(backup) => pb::run::Spec::Backup(backup_to_proto(backup, false)),
        RunSpec::BackupDryRun(backup) => pb::run::Spec::BackupDryRun(backup_to_proto(backup, true)),
        RunSpec::Restore(restore) => pb::run::Spec::Restore(pb::RestoreSpec {
            snapshot_run_id: restore.snapshot.run_id.to_string(),
            job_id: optional_id(restore.job_id),
            as_of_time: optional_timestamp(restore.as_of_time),
            paths: restore.paths.clone(),
            destination_path: restore.destination_path.clone(),
            overwrite_newer: restore.overwrite_newer,
            read_from: restore.read_from.as_ref().map(target_to_proto),
            download_limit_bytes_per_second: restore.download_limit_bytes_per_second,
        }),
        RunSpec::Download(download) => pb::run::Spec::Download(pb::DownloadSpec {
            snapshot_run_id: download.snapshot.run_id.to_string(),
            path: download.path.clone(),
            size_bytes: download.size_bytes,
        }),
        RunSpec::Verify(verify) => pb::run::Spec::Verify(pb::VerifySpec {
            snapshot_run_id: verify.snapshot.run_id.to_string(),
            read_data_percent: verify.read_data_percent,
        }),
        RunSpec::RebuildCatalog(rebuild) => pb::run::Spec::RebuildCatalog(pb::RebuildCatalogSpec {
            bucket_id: optional_id(rebuild.target.bucket_id()),
            prefix: rebuild.target.path().to_string(),
        }),
        RunSpec::Retention(retention) => pb::run::Spec::Retention(pb::RetentionSpec {
            job_id: optional_id(retention.job_id),
            bucket_id: optional_id(retention.bucket_id),
            plan_time: Some(timestamp(retention.plan_time)),
            removed_run_ids: retention
                .removed
                .iter()
                .map(|snapshot| snapshot.run_id.to_string())
                .collect(),
        }),
        RunSpec::GarbageCollection(gc) => {
            pb::run::Spec::GarbageCollection(pb::GarbageCollectionSpec {
                target: Some(target_to_proto(&gc.target)),
                grace_period: Some(seconds(gc.grace_seconds)),
                repack_threshold_percent: gc.repack_threshold_percent,
            })
        }
        RunSpec::Copy(copy) => pb::run::Spec::Copy(pb::CopySpec {
            snapshot_run_id: copy.snapshot.run_id.to_string(),
            target: Some(target_to_proto(&copy.target)),
        }),
        RunSpec::KeySlots(key_slots) => {
            pb::run::Spec::KeySlots(crate::api::key_slots::spec_to_proto(key_slots))
        }
    }
}

impl From<Run> for pb::Run {
    fn from(run: Run) -> Self {
        pb::Run {
            id: run.id.to_string(),
            owner_id: run.owner_id.to_string(),
            kind: run_kind_to_proto(run.kind) as i32,
            job_id: optional_id(run.job_id),
            state: run_state_to_proto(run.state) as i32,
            spec: Some(spec_to_proto(&run.spec)),
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            cancel_requested: run.cancel_requested,
            progress: Some(run.progress.into()),
            error: run.error,
            worker_id: optional_id(run.worker_id),
            not_before_time: Some(timestamp(run.not_before_time)),
            create_time: Some(timestamp(run.create_time)),
            start_time: optional_timestamp(run.start_time),
            finish_time: optional_timestamp(run.finish_time),
            worker_selector: labels_to_proto(&run.worker_selector),
            // Filled by the RunService, which knows the connected workers.
            waiting_reason: pb::WaitingReason::Unspecified as i32,
            waiting_message: String::new(),
        }
    }
}

impl From<RunErrorEntry> for pb::RunError {
    fn from(entry: RunErrorEntry) -> Self {
        pb::RunError {
            path: entry.path,
            message: entry.message,
            attempt: entry.attempt,
            create_time: Some(timestamp(entry.create_time)),
        }
    }
}

/// Prefix of the exclusion reasons' proto names, left out in the catalog.
const EXCLUSION_REASON_PREFIX: &str = "EXCLUSION_REASON_";

/// A dry run's exclusion as the worker reported it, for the catalog.
pub fn exclusion_from_proto(exclusion: &pb::RunExclusion) -> NewRunExclusion {
    let reason = pb::ExclusionReason::try_from(exclusion.reason)
        .unwrap_or(pb::ExclusionReason::Unspecified)
        .as_str_name();
    NewRunExclusion {
        path: exclusion.path.clone(),
        reason: reason
            .trim_start_matches(EXCLUSION_REASON_PREFIX)
            .to_ascii_lowercase(),
        rule: exclusion.rule.clone(),
        source: exclusion.source.clone(),
        size_bytes: exclusion.size_bytes,
    }
}

impl From<RunExclusionEntry> for pb::RunExclusion {
    fn from(entry: RunExclusionEntry) -> Self {
        let name = format!(
            "{EXCLUSION_REASON_PREFIX}{}",
            entry.reason.to_ascii_uppercase()
        );
        let reason =
            pb::ExclusionReason::from_str_name(&name).unwrap_or(pb::ExclusionReason::Unspecified);
        pb::RunExclusion {
            path: entry.path,
            reason: reason as i32,
            rule: entry.rule,
            source: entry.source,
            attempt: entry.attempt,
            size_bytes: entry.size_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_filters_map_every_proto_value_and_refuse_unknown_ones() {
        assert_eq!(run_state_from_proto(0).ok(), Some(None));
        assert_eq!(run_kind_from_proto(0).ok(), Some(None));
        for state in RUN_STATES {
            let value = run_state_to_proto(state) as i32;
            assert_eq!(run_state_from_proto(value).ok(), Some(Some(state)));
        }
        for kind in RUN_KINDS {
            let value = run_kind_to_proto(kind) as i32;
            assert_eq!(run_kind_from_proto(value).ok(), Some(Some(kind)));
        }
        assert!(run_state_from_proto(99).is_err());
        assert!(run_kind_from_proto(-1).is_err());
    }

    #[test]
    fn durations_must_be_whole_non_negative_seconds() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(whole_seconds("f", None).ok(), Some(None));
        assert_eq!(whole_seconds("f", Some(&d(90, 0))).ok(), Some(Some(90)));
        assert!(whole_seconds("f", Some(&d(-1, 0))).is_err());
        assert!(whole_seconds("f", Some(&d(1, 5))).is_err());
    }
}
