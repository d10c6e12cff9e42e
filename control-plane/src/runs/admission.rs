//! Run admission, free of any transport: a request already converted to
//! domain types is checked against its caller and the catalog, turned into a
//! run spec and created. The gRPC adapters, the scheduler and the lease
//! session call this; none of them builds a [`NewRun`] itself.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Caller;
use crate::catalog::copies::SnapshotCopy;
use crate::catalog::scheduler::{DueTick, FiredTick};
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::configuration::{
    DEFAULT_DOWNLOAD_MAX_BYTES, DEFAULT_GC_MIN_GRACE_SECONDS, DOWNLOAD_MAX_BYTES,
    GC_MIN_GRACE_SECONDS, RETENTION_APPLY_AFTER_BACKUP,
};
use crate::model::limits::OwnerLimit;
use crate::model::retention::plan::RetentionScope;
use crate::model::run::{
    BackupSpec, CopySpec, DownloadSpec, GcSpec, Labels, NewRun, RebuildSpec, RestoreSpec, Run,
    RunSpec, RunState, SnapshotSource, Target, VerifySpec,
};
use crate::runs::grants;
use crate::secrets::Keyring;

/// A run a caller asks for, its fields already converted and checked one by
/// one; what needs the catalog (access, references, snapshots) is checked here.
#[derive(Clone, Debug, PartialEq)]
pub enum RunRequest {
    /// A backup of a job, exactly as the job defines it.
    JobBackup(Uuid),
    /// An ad-hoc backup owned by the caller (its `job_id` is unset).
    AdHocBackup(BackupSpec),
    /// A dry run of a job's backup: admitted like the backup.
    JobBackupDryRun(Uuid),
    /// A dry run of an ad-hoc backup: admitted like the backup.
    AdHocBackupDryRun(BackupSpec),
    /// A restore of a snapshot.
    Restore(RestoreRequest),
    /// A verification of a snapshot.
    Verify(VerifyRequest),
    /// A garbage collection of a repository.
    GarbageCollection(GcRequest),
    /// A download of one file, through this replica.
    Download(DownloadRequest),
    /// A key-slot run of an encrypted repository.
    KeySlots(crate::model::run::KeySlotsSpec),
    /// A copy of a snapshot into another repository.
    Copy(CopyRequest),
}

/// A copy request.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyRequest {
    /// The backup run whose snapshot is copied.
    pub snapshot_run_id: Uuid,
    /// The repository the copy goes to.
    pub target: Target,
}

/// A download request.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadRequest {
    /// The backup run whose snapshot holds the file.
    pub snapshot_run_id: Uuid,
    /// The file, relative to the snapshot's root (checked already).
    pub path: String,
    /// The replica the caller waits on.
    pub replica: Uuid,
}

/// Which snapshot a restore reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotChoice {
    /// The snapshot of this backup run.
    Run(Uuid),
    /// The job's latest snapshot at or before a time (now when unset).
    JobAsOf {
        /// The job.
        job_id: Uuid,
        /// The time; `None` means now.
        as_of: Option<DateTime<Utc>>,
    },
}

/// A restore request.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreRequest {
    /// The snapshot to read.
    pub snapshot: SnapshotChoice,
    /// Relative paths to restore (empty: everything).
    pub paths: Vec<String>,
    /// Where to restore; `None` means the snapshot's source path.
    pub destination_path: Option<String>,
    /// Whether files newer than the snapshot's are overwritten.
    pub overwrite_newer: bool,
    /// A copy's target to read the snapshot from; `None` reads the original.
    pub read_from: Option<Target>,
    /// Download limit in bytes per second; 0 means none.
    pub download_limit_bytes_per_second: i64,
}

/// A verification request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerifyRequest {
    /// The backup run whose snapshot is verified.
    pub snapshot_run_id: Uuid,
    /// Share of the data read back, 0 to 100.
    pub read_data_percent: f64,
}

/// A garbage-collection request.
#[derive(Clone, Debug, PartialEq)]
pub struct GcRequest {
    /// The repository.
    pub target: Target,
    /// How long unreferenced data is kept, in seconds.
    pub grace_seconds: i64,
    /// Pack use below which packs are repacked, in percent.
    pub repack_threshold_percent: f64,
}

/// The dry run of the backup `new`.
fn dry_run(new: NewRun) -> NewRun {
    let spec = match new.spec {
        RunSpec::Backup(backup) => RunSpec::BackupDryRun(backup),
        other => other,
    };
    NewRun { spec, ..new }
}

/// Creates runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RunAdmission {
    catalog: Catalog,
    /// Seals the catalog keys of the repositories a run creates.
    secrets: Keyring,
}

impl RunAdmission {
    /// Admission over a catalog; repositories it creates are sealed with
    /// `secrets`.
    pub fn new(catalog: Catalog, secrets: Keyring) -> Self {
        RunAdmission { catalog, secrets }
    }

    /// Creates the run `request` asks for on behalf of `caller`. A repeated
    /// `request_id` returns the run it created first.
    pub async fn create(
        &self,
        caller: &Caller,
        request: RunRequest,
        request_id: Option<Uuid>,
    ) -> DomainResult<Run> {
        let (mut new, prefix) = match request {
            RunRequest::JobBackup(job_id) => (self.job_backup(caller, job_id).await?, "job."),
            RunRequest::AdHocBackup(spec) => (self.ad_hoc_backup(caller, spec).await?, "backup."),
            RunRequest::JobBackupDryRun(job_id) => {
                (dry_run(self.job_backup(caller, job_id).await?), "job.")
            }
            RunRequest::AdHocBackupDryRun(spec) => {
                (dry_run(self.ad_hoc_backup(caller, spec).await?), "backup.")
            }
            RunRequest::Restore(restore) => (self.restore(caller, restore).await?, "restore."),
            RunRequest::Verify(verify) => (self.verify(caller, verify).await?, "verify."),
            RunRequest::GarbageCollection(gc) => (
                self.garbage_collection(caller, gc).await?,
                "garbage_collection.",
            ),
            RunRequest::Download(download) => (self.download(caller, download).await?, ""),
            RunRequest::Copy(copy) => (self.copy(caller, copy).await?, "copy."),
            RunRequest::KeySlots(spec) => (
                super::key_slots::admit(&self.catalog, caller, spec).await?,
                "key_slots.",
            ),
        };
        new.request_id = request_id;
        self.check_nfs(&new.spec).await?;
        self.check_grants(prefix, &mut new).await?;
        if let RunSpec::Backup(backup) = &new.spec {
            super::commands::check(&self.catalog, prefix, new.owner_id, &backup.commands).await?;
        }
        self.check_queue_limit(new.owner_id, new.request_id).await?;
        self.check_repository(caller, prefix, &new).await?;
        Ok(self.catalog.create_run(&new).await?.run)
    }

    /// Queues a retention run removing exactly what a plan made now lists.
    pub async fn apply_retention(
        &self,
        caller: &Caller,
        scope: RetentionScope,
    ) -> DomainResult<Run> {
        self.check_retention_scope(caller, scope).await?;
        let now = self.catalog.now().await?;
        let new = self.catalog.retention_run(scope, now).await?;
        self.check_queue_limit(new.owner_id, None).await?;
        self.insert(&new).await
    }

    /// Checks that the caller may see the scope's job or bucket (else
    /// NOT_FOUND, as for a missing one).
    pub async fn check_retention_scope(
        &self,
        caller: &Caller,
        scope: RetentionScope,
    ) -> DomainResult<()> {
        match self.catalog.retention_scope_owner(scope).await? {
            Some(owner) if caller.can_access(owner) => Ok(()),
            _ => Err(match scope {
                RetentionScope::Job(id) => DomainError::not_found("job", id),
                RetentionScope::Bucket(id) => DomainError::not_found("bucket", id),
            }),
        }
    }

    /// Queues a run that reads a bucket repository's manifests under
    /// `prefix` (relative, already checked) and records every snapshot the
    /// catalog does not know. The run belongs to the bucket's owner.
    pub async fn rebuild_catalog(
        &self,
        caller: &Caller,
        bucket_id: Uuid,
        prefix: &str,
    ) -> DomainResult<Run> {
        let bucket = self
            .catalog
            .get_bucket(bucket_id, caller.owner_scope())
            .await?;
        let mut new = NewRun {
            owner_id: bucket.spec.owner_id,
            job_id: None,
            spec: RunSpec::RebuildCatalog(RebuildSpec {
                target: Target::Bucket {
                    bucket_id,
                    prefix: prefix.trim_matches('/').to_string(),
                },
            }),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        };
        self.check_grants("rebuild.", &mut new).await?;
        self.check_queue_limit(new.owner_id, None).await?;
        self.insert(&new).await
    }

    /// With the `retention_apply_after_backup` configuration set, a job's
    /// successful backup (scheduled or on demand) is followed by a retention
    /// run for the job when its policy removes anything, as kopia prunes
    /// after each snapshot. Returns the retention run, if one was queued.
    pub async fn retention_after_backup(&self, backup_run_id: Uuid) -> DomainResult<Option<Run>> {
        let enabled = self
            .catalog
            .configuration_value(RETENTION_APPLY_AFTER_BACKUP)
            .await?;
        if enabled.as_deref() != Some("true") {
            return Ok(None);
        }
        let run = self.catalog.get_run(backup_run_id).await?;
        let (RunSpec::Backup(_), Some(job_id)) = (&run.spec, run.job_id) else {
            return Ok(None);
        };
        let now = self.catalog.now().await?;
        let new = self
            .catalog
            .retention_run(RetentionScope::Job(job_id), now)
            .await?;
        if matches!(&new.spec, RunSpec::Retention(spec) if spec.removed.is_empty()) {
            return Ok(None);
        }
        self.insert(&new).await.map(Some)
    }

    /// Admission of scheduled runs for one scheduler round.
    pub fn scheduled(&self) -> ScheduledRuns<'_> {
        ScheduledRuns {
            catalog: &self.catalog,
            default_max_attempts: None,
        }
    }

    /// Creates a run; the catalog announces it.
    async fn insert(&self, new: &NewRun) -> DomainResult<Run> {
        Ok(self.catalog.create_run(new).await?.run)
    }

    /// A run of a job: the job's definition, copied.
    async fn job_backup(&self, caller: &Caller, job_id: Uuid) -> DomainResult<NewRun> {
        let job = self.catalog.get_job(job_id).await?;
        if !caller.can_access(job.draft.owner_id) {
            return Err(DomainError::not_found("job", job_id));
        }
        // The configured default is read only when the job does not say.
        let default_max_attempts = match job.draft.max_attempts {
            n if n > 0 => n,
            _ => self.catalog.run_default_max_attempts().await?,
        };
        Ok(job.backup_run(default_max_attempts, None))
    }

    /// An ad-hoc run owned by the caller, validated like a job.
    async fn ad_hoc_backup(&self, caller: &Caller, spec: BackupSpec) -> DomainResult<NewRun> {
        self.check_references("backup.", caller, &spec.target)
            .await?;
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Backup(spec),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// A restore, owned by the caller, of a snapshot the caller may read.
    async fn restore(&self, caller: &Caller, restore: RestoreRequest) -> DomainResult<NewRun> {
        let (snapshot_id, job_id, as_of_time) = match restore.snapshot {
            SnapshotChoice::Run(id) => (id, None, None),
            SnapshotChoice::JobAsOf { job_id, as_of } => {
                let id = self.job_snapshot(caller, job_id, as_of).await?;
                (id, Some(job_id), as_of)
            }
        };
        let (mut snapshot, worker_selector) = self
            .snapshot_source(caller, "restore.snapshot_run_id", snapshot_id)
            .await?;
        if let Some(read_from) = &restore.read_from {
            let copy = self.copy_at(snapshot.run_id, read_from).await?;
            snapshot.target = copy.target;
            snapshot.manifest_key = copy.manifest_key;
        }
        let destination_path = restore
            .destination_path
            .unwrap_or_else(|| snapshot.source_path.clone());
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Restore(RestoreSpec {
                snapshot,
                job_id,
                as_of_time,
                paths: restore.paths,
                destination_path,
                overwrite_newer: restore.overwrite_newer,
                read_from: restore.read_from,
                download_limit_bytes_per_second: restore.download_limit_bytes_per_second,
                worker_selector,
            }),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// The job's latest snapshot at or before `as_of` (now when unset).
    async fn job_snapshot(
        &self,
        caller: &Caller,
        job_id: Uuid,
        as_of: Option<DateTime<Utc>>,
    ) -> DomainResult<Uuid> {
        let job = self.catalog.get_job(job_id).await?;
        if !caller.can_access(job.draft.owner_id) {
            return Err(DomainError::not_found("job", job_id));
        }
        let as_of = match as_of {
            Some(time) => time,
            None => self.catalog.now().await?,
        };
        self.catalog
            .job_snapshot_as_of(job_id, as_of)
            .await?
            .ok_or_else(|| {
                DomainError::FailedPrecondition(format!(
                    "job {job_id} has no succeeded backup at or before {}",
                    as_of.to_rfc3339()
                ))
            })
    }

    /// The committed copy of snapshot `snapshot_run_id` at `target`.
    async fn copy_at(&self, snapshot_run_id: Uuid, target: &Target) -> DomainResult<SnapshotCopy> {
        let no_copy = || {
            DomainError::FailedPrecondition(format!(
                "restore.read_from: snapshot {snapshot_run_id} has no committed copy there \
                 (see CopyService.ListSnapshotCopies)"
            ))
        };
        let Some(repository) = self.catalog.find_repository(&target.repository()).await? else {
            return Err(no_copy());
        };
        self.catalog
            .snapshot_copy_in(snapshot_run_id, repository.id)
            .await?
            .ok_or_else(no_copy)
    }

    /// A copy, owned by the caller, of a snapshot the caller may read into
    /// a repository the caller owns (checked by [`Self::check_references`]
    /// here and [`Self::check_repository`] once the location is resolved),
    /// other than the snapshot's own.
    async fn copy(&self, caller: &Caller, copy: CopyRequest) -> DomainResult<NewRun> {
        let (snapshot, worker_selector) = self
            .snapshot_source(caller, "copy.snapshot_run_id", copy.snapshot_run_id)
            .await?;
        self.check_references("copy.", caller, &copy.target).await?;
        if copy.target.repository() == snapshot.target.repository() {
            return Err(DomainError::invalid(
                "copy.target",
                "is the snapshot's own repository; a copy goes to another one",
            ));
        }
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Copy(CopySpec {
                snapshot,
                target: copy.target,
                worker_selector,
            }),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// A verification, owned by the caller, of a snapshot the caller may read.
    async fn verify(&self, caller: &Caller, verify: VerifyRequest) -> DomainResult<NewRun> {
        let (snapshot, _) = self
            .snapshot_source(caller, "verify.snapshot_run_id", verify.snapshot_run_id)
            .await?;
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Verify(VerifySpec {
                snapshot,
                read_data_percent: verify.read_data_percent,
            }),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// A download, owned by the caller, of a regular file in a snapshot the
    /// caller may read, within the configured size limit. One attempt: the
    /// caller's stream cannot start over.
    async fn download(&self, caller: &Caller, download: DownloadRequest) -> DomainResult<NewRun> {
        let (snapshot, worker_selector) = self
            .snapshot_source(caller, "snapshot_run_id", download.snapshot_run_id)
            .await?;
        let page = crate::catalog::Page {
            size: 1,
            after: None,
        };
        // The path itself sorts before anything else it prefixes.
        let (files, _) = self
            .catalog
            .list_snapshot_files(snapshot.run_id, None, &download.path, page)
            .await?;
        let Some(file) = files
            .into_iter()
            .find(|file| file.path_text == download.path)
        else {
            return Err(DomainError::NotFound(format!(
                "{} is not in snapshot {}",
                download.path, snapshot.run_id
            )));
        };
        if file.version.attributes.kind != coffer_format::EntryKind::File {
            return Err(DomainError::FailedPrecondition(format!(
                "{} is not a regular file; only files can be downloaded",
                download.path
            )));
        }
        let limit = match self.catalog.configuration_value(DOWNLOAD_MAX_BYTES).await? {
            Some(value) => value.parse().unwrap_or(DEFAULT_DOWNLOAD_MAX_BYTES),
            None => DEFAULT_DOWNLOAD_MAX_BYTES,
        };
        let size_bytes = i64::try_from(file.version.attributes.size).unwrap_or(i64::MAX);
        if limit == 0 {
            return Err(DomainError::FailedPrecondition(
                "downloads are turned off here (configuration download_max_bytes = 0)".into(),
            ));
        }
        if size_bytes > limit {
            return Err(DomainError::FailedPrecondition(format!(
                "{} is {size_bytes} bytes; downloads are limited to {limit} \
                 (configuration download_max_bytes): restore it instead",
                download.path
            )));
        }
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Download(DownloadSpec {
                snapshot,
                path: download.path,
                size_bytes,
                replica: download.replica,
                worker_selector,
            }),
            max_attempts: 1,
            request_id: None,
        })
    }

    /// A garbage collection of a repository the caller owns. Only one
    /// collection of a repository may be queued or running at a time (see
    /// [`Self::check_repository`]).
    async fn garbage_collection(&self, caller: &Caller, gc: GcRequest) -> DomainResult<NewRun> {
        self.check_references("garbage_collection.", caller, &gc.target)
            .await?;
        self.check_gc_grace(caller, gc.grace_seconds).await?;
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::GarbageCollection(GcSpec {
                target: gc.target,
                grace_seconds: gc.grace_seconds,
                repack_threshold_percent: gc.repack_threshold_percent,
            }),
            max_attempts: self.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// Only admins may collect with less grace than `gc_min_grace_seconds`:
    /// a short grace deletes data a running backup may still reference.
    async fn check_gc_grace(&self, caller: &Caller, grace_seconds: i64) -> DomainResult<()> {
        if caller.is_admin() {
            return Ok(());
        }
        let minimum = match self
            .catalog
            .configuration_value(GC_MIN_GRACE_SECONDS)
            .await?
        {
            Some(value) => value.parse().unwrap_or(DEFAULT_GC_MIN_GRACE_SECONDS),
            None => DEFAULT_GC_MIN_GRACE_SECONDS,
        };
        if grace_seconds < minimum {
            return Err(DomainError::PermissionDenied(format!(
                "garbage_collection.grace_period: at least {minimum} s; only admins may ask for \
                 less"
            )));
        }
        Ok(())
    }

    /// Checks that the caller owns what `target` names (`prefix` leads the
    /// field paths of the violations).
    async fn check_references(
        &self,
        prefix: &str,
        caller: &Caller,
        target: &Target,
    ) -> DomainResult<()> {
        let mut violations = Violations::new();
        self.catalog
            .check_job_references(prefix, caller.user.id, Some(target), None, &mut violations)
            .await?;
        violations.finish()
    }

    /// The snapshot `id` names, if the caller may read it and it is complete.
    async fn snapshot_source(
        &self,
        caller: &Caller,
        field: &str,
        id: Uuid,
    ) -> DomainResult<(SnapshotSource, Labels)> {
        let run = self
            .catalog
            .get_run(id)
            .await
            .map_err(|_| DomainError::not_found("run", id))?;
        if !caller.can_access(run.owner_id) {
            return Err(DomainError::not_found("run", id));
        }
        let RunSpec::Backup(backup) = run.spec else {
            return Err(DomainError::invalid(
                field,
                format!("run {id} is a {} run, not a backup", run.kind.as_str()),
            ));
        };
        if run.state != RunState::Succeeded || run.manifest_key.is_empty() {
            return Err(DomainError::FailedPrecondition(format!(
                "run {id} is {}; only a succeeded backup is a snapshot that can be read",
                run.state.as_str()
            )));
        }
        let source = SnapshotSource {
            run_id: run.id,
            job_id: run.job_id,
            source_path: backup.source_path,
            target: backup.target,
            manifest_key: run.manifest_key,
        };
        Ok((source, backup.worker_selector))
    }

    /// The owner's queued runs must stay under `max_queued_runs_per_owner`
    /// (admins' runs are exempt), so one tenant cannot fill the queue. Runs
    /// the system queues on its own (retention after a backup) are not held
    /// to it; the scheduler checks the same limit inside its firing
    /// transaction (`Catalog::fire_tick`). A retried request whose run
    /// exists creates nothing, so it is answered with that run as before.
    async fn check_queue_limit(
        &self,
        owner_id: Uuid,
        request_id: Option<Uuid>,
    ) -> DomainResult<()> {
        let retried = self
            .catalog
            .find_run_by_request(owner_id, request_id)
            .await?;
        if retried.is_some() {
            return Ok(());
        }
        self.catalog
            .check_owner_limit(OwnerLimit::QueuedRuns, owner_id)
            .await
    }

    /// Every local path the run touches must be beneath a grant of the
    /// run's owner allowing that use (admins included: they are exempt only
    /// by a grant of their own); the run's worker selector gains the labels
    /// of the grants used, so only workers they cover lease it.
    async fn check_grants(&self, prefix: &str, new: &mut NewRun) -> DomainResult<()> {
        grants::admit(&self.catalog, prefix, new.owner_id, &mut new.spec).await?;
        Ok(())
    }

    /// One repository's catalog never mixes two owners: a backup goes only
    /// into a repository its owner owns (the first use claims it), and any
    /// other run only into one the caller may access. Backups and garbage
    /// collections resolve the location to the repository's id here, after
    /// every other check (a refused request claims nothing), so that the run
    /// is recorded with it; only one collection of a repository may be
    /// queued or running at a time.
    async fn check_repository(
        &self,
        caller: &Caller,
        prefix: &str,
        new: &NewRun,
    ) -> DomainResult<()> {
        let location = new.spec.target().repository();
        let repository = match new.spec {
            RunSpec::Backup(_) | RunSpec::GarbageCollection(_) | RunSpec::Copy(_) => Some(
                super::repositories::ensure_repository(
                    &self.catalog,
                    &self.secrets,
                    new.spec.target(),
                    new.owner_id,
                )
                .await?,
            ),
            _ => self.catalog.find_repository(&location).await?,
        };
        let Some(repository) = repository else {
            return Ok(());
        };
        let foreign = match repository.owner_id {
            None => false,
            Some(owner)
                if matches!(
                    new.spec,
                    RunSpec::Backup(_) | RunSpec::BackupDryRun(_) | RunSpec::Copy(_)
                ) =>
            {
                owner != new.owner_id
            }
            Some(owner) => !caller.can_access(owner),
        };
        if foreign {
            return Err(DomainError::PermissionDenied(format!(
                "{prefix}target: the repository there belongs to another user"
            )));
        }
        if let RunSpec::Copy(copy) = &new.spec {
            self.check_copy_source(caller, prefix, copy, repository.id)
                .await?;
        }
        if matches!(new.spec, RunSpec::GarbageCollection(_)) {
            if let Some(running) = self
                .catalog
                .active_run_of_kind(repository.id, crate::model::run::RunKind::GarbageCollection)
                .await?
            {
                return Err(DomainError::FailedPrecondition(format!(
                    "garbage collection {running} of this repository is still queued or running"
                )));
            }
        }
        Ok(())
    }

    /// A copy reads a repository the caller may access, and not the one it
    /// writes (two spellings of one location resolve to one repository).
    async fn check_copy_source(
        &self,
        caller: &Caller,
        prefix: &str,
        copy: &CopySpec,
        destination: Uuid,
    ) -> DomainResult<()> {
        let source = self
            .catalog
            .find_repository(&copy.snapshot.target.repository())
            .await?
            .ok_or_else(|| {
                DomainError::FailedPrecondition(format!(
                    "{prefix}snapshot_run_id: the snapshot's repository is not in the catalog"
                ))
            })?;
        if source
            .owner_id
            .is_some_and(|owner| !caller.can_access(owner))
        {
            return Err(DomainError::PermissionDenied(format!(
                "{prefix}snapshot_run_id: the snapshot's repository belongs to another user"
            )));
        }
        if source.id == destination {
            return Err(DomainError::invalid(
                format!("{prefix}target"),
                "is the snapshot's own repository; a copy goes to another one",
            ));
        }
        Ok(())
    }

    /// NFS targets need the `nfs_mount_path` configuration.
    async fn check_nfs(&self, spec: &RunSpec) -> DomainResult<()> {
        if matches!(spec.target(), Target::Nfs { .. })
            && !self.catalog.nfs_mount_configured().await?
        {
            return Err(DomainError::FailedPrecondition(
                "NFS targets need the configuration `nfs_mount_path`; create it with \
                 ConfigurationService.CreateConfiguration first"
                    .to_string(),
            ));
        }
        Ok(())
    }
}

/// The scheduler's admissions during one round. Firing a tick is one catalog
/// transaction (compare-and-set on the job's next run time, then the run),
/// so the run is built there from the job; this reads the configured default
/// attempt count once per round, when the first run needs it.
pub struct ScheduledRuns<'a> {
    catalog: &'a Catalog,
    default_max_attempts: Option<i32>,
}

impl ScheduledRuns<'_> {
    /// Fires a due tick by its job's policies; see `Catalog::fire_tick`.
    pub async fn fire_tick(
        &mut self,
        tick: &DueTick,
        now: DateTime<Utc>,
        misfire_grace: std::time::Duration,
    ) -> DomainResult<Option<FiredTick>> {
        let attempts = self.default_max_attempts().await?;
        self.catalog
            .fire_tick(tick, now, misfire_grace, attempts)
            .await
    }

    /// Starts a waiting tick whose job is idle now; see
    /// `Catalog::start_pending_tick`.
    pub async fn start_pending_tick(
        &mut self,
        job_id: Uuid,
        fire_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> DomainResult<Option<Uuid>> {
        let attempts = self.default_max_attempts().await?;
        self.catalog
            .start_pending_tick(job_id, fire_time, now, attempts)
            .await
    }

    async fn default_max_attempts(&mut self) -> DomainResult<i32> {
        if let Some(attempts) = self.default_max_attempts {
            return Ok(attempts);
        }
        let attempts = self.catalog.run_default_max_attempts().await?;
        Ok(*self.default_max_attempts.insert(attempts))
    }
}
