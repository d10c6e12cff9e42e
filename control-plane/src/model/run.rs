//! Domain types for runs: what a run does (its spec, stored as JSON), where it
//! is in its life, and its progress.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::command::BackupCommands;
use super::path::check_normalised_relative;
use super::{check_absolute_path, check_len};
use crate::error::{DomainError, DomainResult, Violations};

/// Labels a worker must carry (`key -> value`).
pub type Labels = BTreeMap<String, String>;

/// Most exclude patterns a job or run may carry.
pub const MAX_EXCLUDES: usize = 256;
/// Longest exclude pattern, in characters.
pub const MAX_EXCLUDE_LEN: usize = 1024;
/// Longest worker-selector key or value, in characters.
pub const MAX_LABEL_LEN: usize = 63;
/// Attempts used when neither the job nor the configuration says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Largest accepted `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;

/// Where backup data is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A registered bucket plus a key prefix inside it.
    Bucket {
        /// The bucket.
        bucket_id: Uuid,
        /// Relative key prefix (may be empty).
        prefix: String,
    },
    /// An absolute filesystem path as the worker sees it.
    Filesystem {
        /// The path.
        path: String,
    },
    /// A path relative to the `nfs_mount_path` configuration value.
    Nfs {
        /// The relative path.
        path: String,
    },
}

impl Target {
    /// The catalog's spelling of the target kind (`jobs.target_kind`).
    pub fn kind_str(&self) -> &'static str {
        match self {
            Target::Bucket { .. } => "bucket",
            Target::Filesystem { .. } => "filesystem",
            Target::Nfs { .. } => "nfs",
        }
    }

    /// The bucket written to, for bucket targets.
    pub fn bucket_id(&self) -> Option<Uuid> {
        match self {
            Target::Bucket { bucket_id, .. } => Some(*bucket_id),
            _ => None,
        }
    }

    /// The repository a backup of this target writes to, as objects are
    /// keyed: one per bucket and prefix, or per filesystem path.
    pub fn repository(&self) -> String {
        match self {
            Target::Bucket { bucket_id, prefix } => {
                format!("bucket:{bucket_id}/{}", prefix.trim_matches('/'))
            }
            Target::Filesystem { path } => format!("filesystem:{path}"),
            Target::Nfs { path } => format!("nfs:{path}"),
        }
    }

    /// The prefix or path (`jobs.target_path`).
    pub fn path(&self) -> &str {
        match self {
            Target::Bucket { prefix, .. } => prefix,
            Target::Filesystem { path } | Target::Nfs { path } => path,
        }
    }

    /// Rebuilds a target from its catalog columns.
    pub fn from_columns(kind: &str, bucket_id: Option<Uuid>, path: String) -> DomainResult<Self> {
        match (kind, bucket_id) {
            ("bucket", Some(bucket_id)) => Ok(Target::Bucket {
                bucket_id,
                prefix: path,
            }),
            ("filesystem", _) => Ok(Target::Filesystem { path }),
            ("nfs", _) => Ok(Target::Nfs { path }),
            (other, _) => Err(DomainError::Internal(format!(
                "target kind {other:?} without a matching bucket in catalog"
            ))),
        }
    }

    /// Checks the path rules; `field` is the path of the proto `Target` (e.g. `job.target`).
    pub fn validate(&self, field: &str) -> DomainResult<()> {
        match self {
            Target::Bucket { prefix, .. } => {
                check_normalised_relative(&format!("{field}.bucket.prefix"), prefix)
            }
            Target::Filesystem { path } => {
                check_absolute_path(&format!("{field}.filesystem_path"), path)
            }
            Target::Nfs { path } => check_normalised_relative(&format!("{field}.nfs_path"), path),
        }
    }
}

/// How a backup reads its source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobOptions {
    /// Glob patterns of paths to skip.
    pub exclude: Vec<String>,
    /// Fail the run when any file cannot be read.
    pub fail_on_file_errors: bool,
    /// Do not cross filesystem boundaries.
    pub one_file_system: bool,
    /// Name of the ignore files; empty means [`DEFAULT_IGNORE_FILE`].
    pub ignore_file_name: String,
    /// Do not read ignore files.
    pub ignore_files_disabled: bool,
    /// Skip the contents of directories tagged `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// File names marking their directory's contents excluded.
    pub exclude_if_present: Vec<String>,
    /// Skip regular files larger than this; 0 means no limit.
    pub max_file_size_bytes: i64,
    /// Upload limit of each backup run in bytes per second; 0 means none.
    pub upload_limit_bytes_per_second: i64,
    /// Download limit of each backup run in bytes per second; 0 means none.
    pub download_limit_bytes_per_second: i64,
    /// The S3 storage class of the packs written; empty means the bucket's.
    pub pack_storage_class: String,
}

/// The slowest bandwidth limit accepted, in bytes per second: the worker's
/// own bound (anything slower would stall requests past their timeouts).
pub const MIN_BANDWIDTH_LIMIT: i64 = coffer_worker::bandwidth::MIN_RATE as i64;
/// The fastest bandwidth limit accepted: the worker's own bound (its token
/// buckets count in `u32`); 0 says "no limit".
pub const MAX_BANDWIDTH_LIMIT: i64 = coffer_worker::bandwidth::MAX_RATE as i64;

/// Checks a bandwidth limit: 0 (none) or within the accepted range.
pub fn check_bandwidth_limit(field: &str, bytes_per_second: i64) -> DomainResult<()> {
    if bytes_per_second == 0
        || (MIN_BANDWIDTH_LIMIT..=MAX_BANDWIDTH_LIMIT).contains(&bytes_per_second)
    {
        return Ok(());
    }
    Err(DomainError::invalid(
        field,
        format!(
            "must be 0 (no limit) or {MIN_BANDWIDTH_LIMIT} to {MAX_BANDWIDTH_LIMIT} bytes per second"
        ),
    ))
}

/// The ignore file read when a job names none.
pub const DEFAULT_IGNORE_FILE: &str = ".cofferignore";
/// Most marker file names a job may carry.
pub const MAX_MARKERS: usize = 32;

/// Checks that `name` is one plain file name: no `/`, not `.` or `..`, at
/// most 255 bytes, no NUL.
fn check_file_name(field: &str, name: &str) -> DomainResult<()> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must be a plain file name (1-255 bytes, no '/', not '.' or '..')",
        ))
    }
}

impl JobOptions {
    /// Checks the exclusions; `field` is the path of the options message.
    pub fn validate(&self, field: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        if self.exclude.len() > MAX_EXCLUDES {
            violations.add(
                format!("{field}.exclude"),
                format!("at most {MAX_EXCLUDES} patterns are allowed"),
            );
        }
        for (index, pattern) in self.exclude.iter().enumerate() {
            violations.absorb(check_len(
                &format!("{field}.exclude[{index}]"),
                pattern,
                1,
                MAX_EXCLUDE_LEN,
            ));
        }
        if !self.ignore_file_name.is_empty() {
            violations.absorb(check_file_name(
                &format!("{field}.ignore_file_name"),
                &self.ignore_file_name,
            ));
        }
        if self.exclude_if_present.len() > MAX_MARKERS {
            violations.add(
                format!("{field}.exclude_if_present"),
                format!("at most {MAX_MARKERS} names are allowed"),
            );
        }
        for (index, name) in self.exclude_if_present.iter().enumerate() {
            violations.absorb(check_file_name(
                &format!("{field}.exclude_if_present[{index}]"),
                name,
            ));
        }
        if self.max_file_size_bytes < 0 {
            violations.add(
                format!("{field}.max_file_size_bytes"),
                "must not be negative (0 means no limit)",
            );
        }
        violations.absorb(check_bandwidth_limit(
            &format!("{field}.upload_limit_bytes_per_second"),
            self.upload_limit_bytes_per_second,
        ));
        violations.absorb(check_bandwidth_limit(
            &format!("{field}.download_limit_bytes_per_second"),
            self.download_limit_bytes_per_second,
        ));
        violations.absorb(crate::model::bucket::check_storage_class(
            &format!("{field}.pack_storage_class"),
            &self.pack_storage_class,
        ));
        violations.finish()
    }
}

/// Checks worker-selector labels: keys and values non-empty, at most 63 characters.
pub fn check_selector(field: &str, labels: &Labels) -> DomainResult<()> {
    let mut violations = Violations::new();
    for (key, value) in labels {
        for (what, text) in [("key", key), ("value", value)] {
            let len = text.chars().count();
            if len == 0 || len > MAX_LABEL_LEN {
                violations.add(
                    field,
                    format!("{what} of label {key:?} must have 1-{MAX_LABEL_LEN} characters"),
                );
            }
        }
    }
    violations.finish()
}

/// Checks an attempt limit (0 means "use the default").
pub fn check_max_attempts(field: &str, value: i32) -> DomainResult<()> {
    if (0..=MAX_ATTEMPTS_LIMIT).contains(&value) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("must be between 0 and {MAX_ATTEMPTS_LIMIT}"),
        ))
    }
}

/// A backup: the source, the target and how to read, copied from the job for job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSpec {
    /// The job, for job runs.
    pub job_id: Option<Uuid>,
    /// Absolute source path.
    pub source_path: String,
    /// Where the backup goes.
    pub target: Target,
    /// How the source is read.
    #[serde(default)]
    pub options: JobOptions,
    /// Labels a worker must carry.
    #[serde(default)]
    pub worker_selector: Labels,
    /// Command sources and hooks.
    #[serde(default, skip_serializing_if = "BackupCommands::is_empty")]
    pub commands: BackupCommands,
}

/// The snapshot a restore or verify reads, copied from its backup run when
/// the run is created (so the run stays executable if the job changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSource {
    /// The snapshot: a succeeded backup run.
    pub run_id: Uuid,
    /// Its job, if any.
    pub job_id: Option<Uuid>,
    /// The path it backed up.
    pub source_path: String,
    /// Where its data lives.
    pub target: Target,
    /// Storage key of its manifest.
    pub manifest_key: String,
}

/// A restore of (part of) a snapshot to a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// What is restored from.
    pub snapshot: SnapshotSource,
    /// The job named in the request (with `as_of_time`), if any.
    pub job_id: Option<Uuid>,
    /// The point in time named in the request, if any.
    pub as_of_time: Option<DateTime<Utc>>,
    /// Relative paths to restore; empty means everything.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Absolute destination; the snapshot's source path for an in-place restore.
    pub destination_path: String,
    /// Whether files at the destination newer than the snapshot's are replaced.
    #[serde(default)]
    pub overwrite_newer: bool,
    /// The copy read instead of the original (`snapshot` then names the
    /// copy's target and manifest), as the request named it.
    #[serde(default)]
    pub read_from: Option<Target>,
    /// Download limit of the restore in bytes per second; 0 means none.
    #[serde(default)]
    pub download_limit_bytes_per_second: i64,
    /// Labels a worker must carry (the snapshot's job's, so the worker sees the place).
    #[serde(default)]
    pub worker_selector: Labels,
}

/// A download of one file of a snapshot to a caller of this replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadSpec {
    /// What is read.
    pub snapshot: SnapshotSource,
    /// The file, relative to the snapshot's root.
    pub path: String,
    /// Its size as the catalog records it.
    pub size_bytes: i64,
    /// The control-plane replica whose caller waits for the bytes: only
    /// that replica's coordinator leases the run.
    pub replica: Uuid,
    /// Labels a worker must carry (the snapshot's job's).
    #[serde(default)]
    pub worker_selector: Labels,
}

/// A copy of a snapshot into another repository (the run's own target).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySpec {
    /// What is copied, and where it is read from.
    pub snapshot: SnapshotSource,
    /// The repository the copy goes to.
    pub target: Target,
    /// Labels a worker must carry (the snapshot's job's, so it reaches a
    /// local repository), widened by the grants of local paths.
    #[serde(default)]
    pub worker_selector: Labels,
}

/// A verification of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifySpec {
    /// What is verified.
    pub snapshot: SnapshotSource,
    /// Share of the data (0–100) re-read and re-hashed.
    pub read_data_percent: f64,
}

/// What a run does, as stored in `runs.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunSpec {
    /// A backup.
    Backup(BackupSpec),
    /// A restore.
    Restore(RestoreSpec),
    /// A verification.
    Verify(VerifySpec),
    /// A catalog rebuild of one repository (always a bucket target).
    RebuildCatalog(RebuildSpec),
    /// Removing the snapshots a retention plan does not keep.
    Retention(RetentionSpec),
    /// Garbage collection of one repository.
    GarbageCollection(GcSpec),
    /// Sending one file of a snapshot to a caller.
    Download(DownloadSpec),
    /// A backup's dry run: the source walked, nothing stored.
    BackupDryRun(BackupSpec),
    /// A copy of a snapshot into another repository.
    Copy(CopySpec),
    /// Adding, removing or rotating an encrypted repository's key slots.
    KeySlots(KeySlotsSpec),
}

/// What a key-slot run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySlotOperation {
    /// Adds a passphrase slot holding every generation.
    Add,
    /// A rotation that leaves one slot out, then that slot's deletion.
    Remove,
    /// A new key generation for the slots the run can open.
    Rotate,
}

/// A key-slot run of one repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlotsSpec {
    /// The repository.
    pub target: Target,
    /// What the run does.
    pub operation: KeySlotOperation,
    /// Add: the passphrase secret the new slot opens with.
    pub passphrase_secret_id: Option<Uuid>,
    /// Remove: the slot (32 lowercase hex digits).
    pub slot_id: Option<String>,
    /// Remove and rotate: passphrase secrets whose slots are kept, besides
    /// the catalog's and the bucket's.
    #[serde(default)]
    pub keep_passphrase_secret_ids: Vec<Uuid>,
}

/// A retention run: exactly the snapshots its plan did not keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSpec {
    /// The job planned, for a job plan.
    pub job_id: Option<Uuid>,
    /// The bucket planned, for a bucket plan.
    pub bucket_id: Option<Uuid>,
    /// The time the plan was computed for.
    pub plan_time: DateTime<Utc>,
    /// The run's own target: the bucket planned, or the job's target.
    pub target: Target,
    /// The snapshots removed, with where their manifests live.
    pub removed: Vec<SnapshotSource>,
}

/// A garbage collection of one repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcSpec {
    /// The repository.
    pub target: Target,
    /// Seconds condemned packs wait before deletion.
    pub grace_seconds: i64,
    /// Garbage share (1–100) at which a pack is repacked.
    pub repack_threshold_percent: f64,
}

/// A catalog rebuild: the repository whose manifests are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildSpec {
    /// The repository.
    pub target: Target,
}

/// Verify runs need no particular worker.
static NO_LABELS: Labels = Labels::new();

impl RunSpec {
    /// The kind of run this spec describes.
    pub fn kind(&self) -> RunKind {
        match self {
            RunSpec::Backup(_) => RunKind::Backup,
            RunSpec::Restore(_) => RunKind::Restore,
            RunSpec::Verify(_) => RunKind::Verify,
            RunSpec::RebuildCatalog(_) => RunKind::RebuildCatalog,
            RunSpec::Retention(_) => RunKind::Retention,
            RunSpec::GarbageCollection(_) => RunKind::GarbageCollection,
            RunSpec::Download(_) => RunKind::Download,
            RunSpec::BackupDryRun(_) => RunKind::BackupDryRun,
            RunSpec::Copy(_) => RunKind::Copy,
            RunSpec::KeySlots(_) => RunKind::KeySlots,
        }
    }

    /// The storage target the run reads or writes.
    pub fn target(&self) -> &Target {
        match self {
            RunSpec::Backup(backup) | RunSpec::BackupDryRun(backup) => &backup.target,
            RunSpec::Restore(restore) => &restore.snapshot.target,
            RunSpec::Verify(verify) => &verify.snapshot.target,
            RunSpec::RebuildCatalog(rebuild) => &rebuild.target,
            RunSpec::Retention(retention) => &retention.target,
            RunSpec::GarbageCollection(gc) => &gc.target,
            RunSpec::Download(download) => &download.snapshot.target,
            RunSpec::Copy(copy) => &copy.target,
            RunSpec::KeySlots(key_slots) => &key_slots.target,
        }
    }

    /// The bucket the run reads or writes, if any.
    pub fn target_bucket_id(&self) -> Option<Uuid> {
        self.target().bucket_id()
    }

    /// The local path a worker must be able to reach (source of a backup,
    /// destination of a restore), if any.
    pub fn local_path(&self) -> Option<&str> {
        match self {
            RunSpec::Backup(backup) | RunSpec::BackupDryRun(backup) => Some(&backup.source_path),
            RunSpec::Restore(restore) => Some(&restore.destination_path),
            RunSpec::Verify(_)
            | RunSpec::RebuildCatalog(_)
            | RunSpec::Retention(_)
            | RunSpec::GarbageCollection(_)
            | RunSpec::Download(_)
            | RunSpec::Copy(_) => None,
            RunSpec::KeySlots(_) => None,
        }
    }

    /// The worker selector of the run.
    pub fn worker_selector(&self) -> &Labels {
        match self {
            RunSpec::Backup(backup) | RunSpec::BackupDryRun(backup) => &backup.worker_selector,
            RunSpec::Restore(restore) => &restore.worker_selector,
            RunSpec::Download(download) => &download.worker_selector,
            RunSpec::Copy(copy) => &copy.worker_selector,
            RunSpec::Verify(_)
            | RunSpec::RebuildCatalog(_)
            | RunSpec::Retention(_)
            | RunSpec::GarbageCollection(_)
            | RunSpec::KeySlots(_) => &NO_LABELS,
        }
    }
}

impl RunSpec {
    /// The worker selector of the run, for the kinds that carry one; grant
    /// checks widen it with the labels their grants require.
    pub fn worker_selector_mut(&mut self) -> Option<&mut Labels> {
        match self {
            RunSpec::Backup(backup) | RunSpec::BackupDryRun(backup) => {
                Some(&mut backup.worker_selector)
            }
            RunSpec::Restore(restore) => Some(&mut restore.worker_selector),
            RunSpec::Download(download) => Some(&mut download.worker_selector),
            RunSpec::Copy(copy) => Some(&mut copy.worker_selector),
            RunSpec::Verify(_)
            | RunSpec::RebuildCatalog(_)
            | RunSpec::Retention(_)
            | RunSpec::GarbageCollection(_)
            | RunSpec::KeySlots(_) => None,
        }
    }
}

/// What kind of work a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// A backup.
    Backup,
    /// A restore.
    Restore,
    /// A verification.
    Verify,
    /// Applying a retention policy.
    Retention,
    /// Garbage collection.
    GarbageCollection,
    /// Rebuilding the catalog from a repository.
    RebuildCatalog,
    /// Sending one file of a snapshot to a caller.
    Download,
    /// A backup's dry run.
    BackupDryRun,
    /// A copy of a snapshot into another repository.
    Copy,
    /// Adding, removing or rotating key slots.
    KeySlots,
}

impl RunKind {
    /// Whether runs of this kind delete from storage: only maintenance
    /// workers (class `maintenance` or `all`) take them. Key-slot runs
    /// delete a removed slot and the keyring objects of an unfinished
    /// rotation.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            RunKind::Retention | RunKind::GarbageCollection | RunKind::KeySlots
        )
    }

    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Restore => "restore",
            RunKind::Verify => "verify",
            RunKind::Retention => "retention",
            RunKind::GarbageCollection => "garbage_collection",
            RunKind::RebuildCatalog => "rebuild_catalog",
            RunKind::Download => "download",
            RunKind::BackupDryRun => "backup_dry_run",
            RunKind::Copy => "copy",
            RunKind::KeySlots => "key_slots",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "backup" => Ok(RunKind::Backup),
            "restore" => Ok(RunKind::Restore),
            "verify" => Ok(RunKind::Verify),
            "retention" => Ok(RunKind::Retention),
            "garbage_collection" => Ok(RunKind::GarbageCollection),
            "rebuild_catalog" => Ok(RunKind::RebuildCatalog),
            "download" => Ok(RunKind::Download),
            "backup_dry_run" => Ok(RunKind::BackupDryRun),
            "copy" => Ok(RunKind::Copy),
            "key_slots" => Ok(RunKind::KeySlots),
            other => Err(DomainError::Internal(format!(
                "unknown run kind {other:?} in catalog"
            ))),
        }
    }
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for a worker.
    Queued,
    /// Leased and executing.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl RunState {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "queued" => Ok(RunState::Queued),
            "running" => Ok(RunState::Running),
            "succeeded" => Ok(RunState::Succeeded),
            "failed" => Ok(RunState::Failed),
            "cancelled" => Ok(RunState::Cancelled),
            other => Err(DomainError::Internal(format!(
                "unknown run state {other:?} in catalog"
            ))),
        }
    }

    /// Whether the run can no longer change.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }
}

/// Counters reported by the worker, stored as JSON in `runs.progress`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunProgress {
    /// Entries found so far.
    pub files_seen: i64,
    /// Entries processed so far.
    pub files_done: i64,
    /// Content bytes found so far.
    pub bytes_seen: i64,
    /// Content bytes processed so far.
    pub bytes_done: i64,
    /// Bytes written to storage.
    pub bytes_uploaded: i64,
    /// Per-file errors so far.
    pub error_count: i64,
    /// Current rate.
    pub bytes_per_second: f64,
    /// The file being processed.
    pub current_path: String,
    /// The stage the run is in.
    pub phase: RunPhase,
    /// Bytes read from the source or from storage, within files.
    pub bytes_read: i64,
    /// Content bytes that needed no upload.
    pub bytes_deduplicated: i64,
    /// Whether `files_seen` and `bytes_seen` are final.
    pub totals_known: bool,
    /// Estimated seconds left, when the worker could tell.
    pub eta_seconds: Option<i64>,
    /// Tightest upload limit in force, bytes per second (0: none).
    pub upload_limit_bytes_per_second: i64,
    /// Tightest download limit in force, bytes per second (0: none).
    pub download_limit_bytes_per_second: i64,
    /// Milliseconds transfers waited for the limits.
    pub throttled_millis: i64,
}

/// The stage a running run is in, as its worker reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Not reported.
    #[default]
    Unspecified,
    /// Opening the repository, loading the index and the parent.
    Preparing,
    /// Listing and reading what the run works on.
    Scanning,
    /// Moving file content.
    Transferring,
    /// Writing the index and manifest, reporting.
    Finishing,
}

/// One run as stored in the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Id.
    pub id: Uuid,
    /// Owner (the job's owner, or the creator of an ad-hoc run).
    pub owner_id: Uuid,
    /// What the run does.
    pub kind: RunKind,
    /// The job, for job runs (cleared when the job is deleted).
    pub job_id: Option<Uuid>,
    /// Life-cycle state.
    pub state: RunState,
    /// The definition.
    pub spec: RunSpec,
    /// The bucket written to, if any.
    pub target_bucket_id: Option<Uuid>,
    /// Client idempotency key.
    pub request_id: Option<Uuid>,
    /// Current or last attempt (0 before the first lease).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Cancellation requested while running.
    pub cancel_requested: bool,
    /// Progress of the current or last attempt.
    pub progress: RunProgress,
    /// Final or last error.
    pub error: String,
    /// Worker holding the lease.
    pub worker_id: Option<Uuid>,
    /// Fencing token of the current lease.
    pub lease_token: i64,
    /// When the current lease lapses.
    pub lease_expire_time: Option<DateTime<Utc>>,
    /// Hard deadline, if any.
    pub deadline_time: Option<DateTime<Utc>>,
    /// Earliest lease time.
    pub not_before_time: DateTime<Utc>,
    /// Labels a worker must carry.
    pub worker_selector: Labels,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Start of the current or last attempt.
    pub start_time: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finish_time: Option<DateTime<Utc>>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
    /// Storage key of the snapshot manifest of a succeeded backup ('' otherwise).
    pub manifest_key: String,
    /// The repository of its target, once the catalog knows it (at
    /// admission, or at the first lease of a run into a new repository).
    pub repository_id: Option<Uuid>,
}

/// A run to queue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    /// Owner.
    pub owner_id: Uuid,
    /// The job, for job runs.
    pub job_id: Option<Uuid>,
    /// The definition.
    pub spec: RunSpec,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Client idempotency key.
    pub request_id: Option<Uuid>,
}

/// Filters of ListRuns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job_id: Option<Uuid>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this kind.
    pub kind: Option<RunKind>,
    /// Only runs tagged with this key.
    pub tag_key: Option<String>,
    /// ... and this value.
    pub tag_value: Option<String>,
}

/// One per-file error a run reported.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RunErrorEntry {
    /// Position in the catalog (the page token).
    pub id: i64,
    /// Path relative to the source root.
    pub path: String,
    /// What went wrong.
    pub message: String,
    /// Attempt that reported it.
    pub attempt: i32,
    /// When it was reported.
    pub create_time: DateTime<Utc>,
}

/// One path a backup's dry run found excluded.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RunExclusionEntry {
    /// Position in the catalog (the page token).
    pub id: i64,
    /// Path relative to the source root.
    pub path: String,
    /// Why: the API's enum name without its prefix, e.g. `ignore_file`.
    pub reason: String,
    /// The rule as written.
    pub rule: String,
    /// Where the rule comes from.
    pub source: String,
    /// Size of an excluded regular file.
    pub size_bytes: i64,
    /// Attempt that reported it.
    pub attempt: i32,
    /// When it was reported.
    pub create_time: DateTime<Utc>,
}

/// A path a dry run's worker reported excluded, as it is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRunExclusion {
    /// Path relative to the source root.
    pub path: String,
    /// Why (see [`RunExclusionEntry::reason`]).
    pub reason: String,
    /// The rule as written.
    pub rule: String,
    /// Where the rule comes from.
    pub source: String,
    /// Size of an excluded regular file.
    pub size_bytes: i64,
}
