//! Executes assigned runs: turns a `RunAssignment` into a backup, restore or
//! verification against the resolved store, reporting through the lease
//! session.

use std::path::PathBuf;
use std::sync::Arc;

use coffer_format::crypto::SlotKind;
use coffer_format::Encryption;
use coffer_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bandwidth::{Direction, Throttle, WorkerLimits};
use crate::class::WorkerClass;
use crate::commands::hooks::{run_post_hooks, run_pre_hooks};
use crate::commands::{AssignedCommands, CommandAllowList};
use crate::paths::grant::{check_path_grant, AllowedPath, PathUse, WorkerRoots};
use crate::report::{to_i64, RecordBatch, ReportError, Reporter, RunFailure};
use crate::repository::{
    KeySlotSummary, NewFormat, PinnedGeneration, Repository, RepositoryAccess,
};
use crate::run_metrics::RunMetrics;
use crate::runs::backup::dry_run::{run_dry_run, DryRunPlan};
use crate::runs::backup::SourceCommands;
use crate::runs::backup::{run_backup, BackupPlan, ParentSnapshot};
use crate::runs::copy::{run_copy, CopyPlan};
use crate::runs::download::{run_download, DownloadPlan, SINK_CLOSED};
use crate::runs::gc::{run_gc, GcPlan};
use crate::runs::key_slots::{run_key_slots, slot_change};
use crate::runs::rebuild::run_rebuild;
use crate::runs::restore::{run_restore, RestorePlan};
use crate::runs::retention::{run_retention, Removal};
use crate::runs::verify::{run_verify, VerifyPlan};
use crate::session::{Executor, RunContext};
use crate::store::{ObjectLock, Store, StoreError};

/// Runs the work the lease session assigns.
#[derive(Debug, Clone, Default)]
pub struct RunExecutor {
    /// Where this worker's runs may read and write, whatever the grants.
    pub roots: WorkerRoots,
    /// Which runs it takes; a backup-class worker's stores refuse deletions.
    pub class: WorkerClass,
    /// The admin-defined commands this worker runs (none by default).
    pub commands: Arc<CommandAllowList>,
    /// The worker's own bandwidth limits, shared by all its runs.
    pub bandwidth: WorkerLimits,
}

struct SessionReporter<'a> {
    context: &'a RunContext,
    metrics: RunMetrics,
    /// The run's bandwidth limits, shown in its progress.
    throttle: Arc<Throttle>,
}

impl Reporter for SessionReporter<'_> {
    fn progress(&self, progress: &pb::RunProgress) {
        self.metrics.advance(progress);
        let mut progress = progress.clone();
        progress.upload_limit_bytes_per_second = to_i64(self.throttle.limit_now(Direction::Upload));
        progress.download_limit_bytes_per_second =
            to_i64(self.throttle.limit_now(Direction::Download));
        progress.throttled = prost_types::Duration::try_from(self.throttle.waited()).ok();
        self.context.set_progress(progress);
    }

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        let sequence = self
            .context
            .send_batch(batch.files, batch.errors, batch.exclusions, batch.snapshot)
            .await
            .map_err(|lost| ReportError {
                message: lost.to_string(),
                retryable: true,
            })?;
        debug_assert_eq!(
            sequence, batch.sequence,
            "batches are numbered by the session in order"
        );
        Ok(())
    }
}

fn failure(error: impl Into<String>, retryable: bool) -> pb::run_completion::Outcome {
    pb::run_completion::Outcome::Failure(pb::RunFailure {
        error: error.into(),
        retryable,
    })
}

fn success(
    size_bytes: i64,
    details: String,
    manifest_key: String,
    parent_run_id: Option<Uuid>,
) -> pb::run_completion::Outcome {
    pb::run_completion::Outcome::Success(pb::RunSuccess {
        size_bytes,
        details,
        manifest_key,
        parent_run_id: parent_run_id.map(|id| id.to_string()).unwrap_or_default(),
        ..Default::default()
    })
}

/// Sends a download's content through a `SendDownload` call and waits for
/// the control plane to take all of it before the run counts as done.
async fn send_download(
    plan: DownloadPlan,
    context: &RunContext,
    reporter: &SessionReporter<'_>,
    cancel: CancellationToken,
) -> Result<pb::run_completion::Outcome, RunFailure> {
    let (sink, call) = context
        .open_download()
        .await
        .map_err(|lost| RunFailure::permanent(lost.to_string()))?;
    let sent = run_download(plan, sink, reporter, cancel).await;
    // The call ends once the control plane has the last message or has
    // refused the stream; a refusal explains a closed stream best.
    let answer = call
        .await
        .map_err(|e| RunFailure::permanent(format!("download call task failed: {e}")))?;
    let refused = |status: tonic::Status| {
        RunFailure::permanent(format!(
            "the control plane refused the download: {}",
            status.message()
        ))
    };
    match (sent, answer) {
        (Ok(summary), Ok(_)) => {
            context.set_progress(summary.progress.clone());
            Ok(success(
                i64::try_from(summary.bytes).unwrap_or(i64::MAX),
                summary.details,
                String::new(),
                None,
            ))
        }
        (Err(failure), Err(status)) if failure.message == SINK_CLOSED => Err(refused(status)),
        (Err(failure), _) => Err(failure),
        (Ok(_), Err(status)) => Err(refused(status)),
    }
}

/// Grace period of a collection whose spec sets none.
const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Repack threshold of a collection whose spec sets none.
const DEFAULT_REPACK_THRESHOLD_PERCENT: f64 = 50.0;

/// Opens the store of every removal, once per distinct target (the run's
/// own target is already open as `run_store`), as [`StoreAccess`] says.
async fn open_removals(
    removals: Vec<pb::SnapshotRemoval>,
    run_target: &pb::ResolvedTarget,
    run_store: &Arc<Store>,
    access: &StoreAccess,
    cancel: &CancellationToken,
) -> Result<Vec<Removal>, RunFailure> {
    let mut stores: Vec<(pb::ResolvedTarget, Arc<Store>)> =
        vec![(run_target.clone(), Arc::clone(run_store))];
    let mut opened = Vec::with_capacity(removals.len());
    for removal in removals {
        let run_id = Uuid::parse_str(&removal.run_id)
            .map_err(|_| RunFailure::permanent("removal with a malformed run id"))?;
        let target = removal
            .target
            .ok_or_else(|| RunFailure::permanent("removal without a resolved target"))?;
        let store = match stores.iter().find(|(known, _)| *known == target) {
            Some((_, store)) => Arc::clone(store),
            None => {
                let store = access
                    .open(&target, cancel)
                    .await
                    .map_err(|error| RunFailure {
                        message: format!("cannot open the target of snapshot {run_id}: {error}"),
                        retryable: error.is_retryable(),
                    })?;
                let store = Arc::new(store);
                stores.push((target, Arc::clone(&store)));
                store
            }
        };
        opened.push(Removal {
            run_id,
            manifest_key: removal.manifest_key,
            store,
        });
    }
    Ok(opened)
}

/// How a run's stores are opened: with the Object Lock of the run's bucket
/// (checked on the bucket first), and append-only on a backup-class worker.
struct StoreAccess {
    lock: Option<ObjectLock>,
    /// The bucket the lock is for: the run's own.
    lock_bucket: Option<String>,
    refuse_deletes: bool,
    /// The run's bandwidth limits, which every store it opens pays into.
    throttle: Arc<Throttle>,
}

/// The id of a resolved target's bucket, if it has one.
fn bucket_id(target: &pb::ResolvedTarget) -> Option<&str> {
    target.bucket.as_ref().map(|bucket| bucket.id.as_str())
}

impl StoreAccess {
    fn new(
        class: WorkerClass,
        target: &pb::ResolvedTarget,
        lock: Option<&pb::ObjectLockSettings>,
        throttle: Arc<Throttle>,
    ) -> Result<Self, RunFailure> {
        let lock = lock
            .map(ObjectLock::try_from)
            .transpose()
            .map_err(|error| RunFailure::permanent(error.to_string()))?;
        Ok(StoreAccess {
            lock,
            lock_bucket: bucket_id(target).map(str::to_owned),
            refuse_deletes: !class.may_delete(),
            throttle,
        })
    }

    async fn open(
        &self,
        target: &pb::ResolvedTarget,
        cancel: &CancellationToken,
    ) -> Result<Store, StoreError> {
        let mut store = Store::open(target, "").await?;
        let lock = self.lock.filter(|_| {
            bucket_id(target).is_some() && bucket_id(target) == self.lock_bucket.as_deref()
        });
        if let Some(lock) = lock {
            store = store.with_object_lock(lock, cancel).await?;
        }
        if self.refuse_deletes {
            store = store.refusing_deletes();
        }
        Ok(store.throttled(Arc::clone(&self.throttle)))
    }
}

/// The local path a resolved target stores its repository at, if any.
fn filesystem_path(target: &pb::ResolvedTarget) -> Option<&str> {
    Some(target.filesystem_path.as_str())
        .filter(|p| !p.is_empty())
        .or_else(|| {
            target
                .bucket
                .as_ref()
                .map(|b| b.filesystem_path.as_str())
                .filter(|p| !p.is_empty())
        })
}

impl RunExecutor {
    /// An executor with no roots of its own that never touches `state_dir`
    /// (the embedded worker of a standalone control plane and its data
    /// directory).
    pub fn protecting(state_dir: &std::path::Path) -> anyhow::Result<Self> {
        Ok(RunExecutor {
            roots: WorkerRoots {
                protected: crate::config::protected_forms(state_dir)?,
                ..WorkerRoots::default()
            },
            class: WorkerClass::All,
            commands: Arc::default(),
            bandwidth: WorkerLimits::default(),
        })
    }

    /// The run's bandwidth limits: the worker's, and the backup's job
    /// options' or the restore's own. A limit out of range (which the
    /// control plane refuses at creation) fails the run.
    fn throttle(
        &self,
        options: Option<&pb::JobOptions>,
        spec: &pb::run::Spec,
    ) -> Result<Arc<Throttle>, RunFailure> {
        let as_rate = |field: &str, value: i64| {
            u64::try_from(value).map_err(|_| RunFailure::permanent(format!("{field} is negative")))
        };
        let (upload, download) = match spec {
            pb::run::Spec::Backup(_) => (
                options.map_or(0, |o| o.upload_limit_bytes_per_second),
                options.map_or(0, |o| o.download_limit_bytes_per_second),
            ),
            pb::run::Spec::Restore(restore) => (0, restore.download_limit_bytes_per_second),
            _ => (0, 0),
        };
        let upload = as_rate("upload_limit_bytes_per_second", upload)?;
        let download = as_rate("download_limit_bytes_per_second", download)?;
        Throttle::for_run(&self.bandwidth, upload, download).map_err(RunFailure::permanent)
    }

    /// Checks one path against the assignment's grants and this worker's
    /// roots ([`check_path_grant`]); a refusal is permanent.
    fn allow(
        &self,
        grants: &[pb::PathGrant],
        path: &str,
        path_use: PathUse,
    ) -> Result<AllowedPath, RunFailure> {
        check_path_grant(grants, &self.roots, path, path_use)
            .map_err(|refusal| RunFailure::permanent(refusal.to_string()))
    }

    /// Checks the local path of a filesystem target, if it has one.
    fn allow_target(
        &self,
        grants: &[pb::PathGrant],
        target: &pb::ResolvedTarget,
    ) -> Result<(), RunFailure> {
        match filesystem_path(target) {
            Some(path) => self.allow(grants, path, PathUse::Repository).map(drop),
            None => Ok(()),
        }
    }

    /// A backup's attempt between its pre-hooks and its post-hooks: a
    /// failing pre-hook fails it before anything is read or written, and
    /// the post-hooks' failures are added to its details or its error.
    async fn run_with_hooks(
        &self,
        assignment: pb::RunAssignment,
        context: &RunContext,
    ) -> Result<pb::run_completion::Outcome, RunFailure> {
        // Every command is checked before any I/O.
        let commands = AssignedCommands::from_assignment(&assignment, &self.commands)
            .map_err(RunFailure::permanent)?;
        let cancel = context.cancellation();
        let pre = run_pre_hooks(&commands.pre_hooks, &self.commands, &commands.env, cancel).await;
        let outcome = match pre {
            Err(_) if cancel.is_cancelled() => Err(RunFailure::cancelled()),
            Err(error) => Err(RunFailure::permanent(error)),
            Ok(()) => self.run(assignment, commands.sources, context).await,
        };
        if commands.post_hooks.is_empty() {
            return outcome;
        }
        let error = outcome.as_ref().err().map(|e| e.message.as_str());
        let failures =
            run_post_hooks(&commands.post_hooks, &self.commands, &commands.env, error).await;
        if failures.is_empty() {
            return outcome;
        }
        let recorded = failures.join("; ");
        tracing::warn!(failures = %recorded, "post-hooks failed");
        match outcome {
            Ok(pb::run_completion::Outcome::Success(mut success)) => {
                success.details = format!("{}; {recorded}", success.details);
                Ok(pb::run_completion::Outcome::Success(success))
            }
            Ok(other) => Ok(other),
            Err(failure) => Err(RunFailure {
                message: format!("{}; {recorded}", failure.message),
                retryable: failure.retryable,
            }),
        }
    }

    async fn run(
        &self,
        mut assignment: pb::RunAssignment,
        command_sources: Vec<crate::commands::Invocation>,
        context: &RunContext,
    ) -> Result<pb::run_completion::Outcome, RunFailure> {
        let mut repository = repository_access(&mut assignment)?;
        let run = assignment
            .run
            .ok_or_else(|| RunFailure::permanent("assignment without a run"))?;
        let run_id = Uuid::parse_str(&run.id)
            .map_err(|_| RunFailure::permanent("assignment with a malformed run id"))?;
        let spec = run
            .spec
            .ok_or_else(|| RunFailure::permanent("assignment without a spec"))?;
        let grants = &assignment.path_grants;
        if let pb::run::Spec::BackupDryRun(backup) = &spec {
            // A dry run has no target: it touches no storage.
            let plan = DryRunPlan {
                lease_token: context.lease().lease_token,
                source: PathBuf::from(&backup.source_path),
                options: assignment.options.unwrap_or_default(),
                access: Some(self.allow(grants, &backup.source_path, PathUse::BackupSource)?),
            };
            return dry_run(run_id, run.kind, plan, context).await;
        }
        let target = assignment
            .target
            .ok_or_else(|| RunFailure::permanent("assignment without a resolved target"))?;
        // Every local path is checked before any I/O: the repository's (the
        // run's own target and every removal's), then the source or the
        // destination.
        self.allow_target(grants, &target)?;
        for removal in &assignment.removals {
            if let Some(removal_target) = &removal.target {
                self.allow_target(grants, removal_target)?;
            }
        }
        if let Some(source_target) = assignment
            .copy_source
            .as_ref()
            .and_then(|source| source.target.as_ref())
        {
            self.allow_target(grants, source_target)?;
        }
        let access = match &spec {
            // Command sources alone read no local path.
            pb::run::Spec::Backup(backup)
                if backup.source_path.is_empty() && !command_sources.is_empty() =>
            {
                None
            }
            pb::run::Spec::Backup(backup) => {
                Some(self.allow(grants, &backup.source_path, PathUse::BackupSource)?)
            }
            pb::run::Spec::Restore(restore) => Some(self.allow(
                grants,
                &restore.destination_path,
                PathUse::RestoreDestination,
            )?),
            _ => None,
        };
        let deletes = matches!(
            spec,
            pb::run::Spec::Retention(_)
                | pb::run::Spec::GarbageCollection(_)
                | pb::run::Spec::KeySlots(_)
        );
        if deletes && !self.class.may_delete() {
            return Err(RunFailure::permanent(
                "this worker is of class backup (append-only): it runs no retention, \
                 garbage collection or key-slot run",
            ));
        }
        let slot_change = match &spec {
            pb::run::Spec::KeySlots(key_slots) => Some(slot_change(
                key_slots,
                std::mem::take(&mut assignment.new_slot_passphrase),
                std::mem::take(&mut assignment.kept_slot_passphrases),
            )?),
            _ => None,
        };
        let cancel = context.cancellation().clone();
        let throttle = self.throttle(assignment.options.as_ref(), &spec)?;
        let store_access = StoreAccess::new(
            self.class,
            &target,
            assignment.object_lock.as_ref(),
            Arc::clone(&throttle),
        )?;
        let store = store_access
            .open(&target, &cancel)
            .await
            .map_err(|error| RunFailure {
                message: format!("cannot open the target: {error}"),
                retryable: error.is_retryable(),
            })?;
        let store = Arc::new(store);
        let target_description = store.describe();
        let reporter = SessionReporter {
            context,
            metrics: RunMetrics::new(run.kind),
            throttle,
        };
        let lease_token = context.lease().lease_token;
        // A copy writes a snapshot into its target as a backup does.
        let is_backup = matches!(spec, pb::run::Spec::Backup(_) | pb::run::Spec::Copy(_));
        repository.adopt = matches!(spec, pb::run::Spec::RebuildCatalog(_));
        // A backup never writes into a v1 repository where the catalog
        // expects v2 (unencrypted data where it expects encrypted).
        repository.v1_fallback = !is_backup;
        let identity = if matches!(spec, pb::run::Spec::RebuildCatalog(_)) {
            Repository::adopt_identity(Arc::clone(&store), &repository, &cancel).await
        } else {
            Repository::check_identity(Arc::clone(&store), &repository, is_backup, &cancel).await
        };
        let key_slots = identity.map_err(|error| RunFailure {
            message: format!("checking the repository at {target_description}: {error}"),
            retryable: error.is_retryable(),
        })?;
        // The passphrase was needed only to create or recover the
        // repository: wiped before the run proper starts.
        repository.passphrase = None;
        let outcome = match spec {
            pb::run::Spec::Backup(backup) => {
                tracing::info!(run = %run_id, source = %backup.source_path, target = %target_description, "backup started");
                let parent = Uuid::parse_str(&assignment.parent_run_id)
                    .ok()
                    .filter(|_| !assignment.parent_manifest_key.is_empty())
                    .map(|run_id| ParentSnapshot {
                        run_id,
                        manifest_key: assignment.parent_manifest_key.clone(),
                    });
                let plan = BackupPlan {
                    run_id,
                    job_id: Uuid::parse_str(&backup.job_id).ok(),
                    lease_token,
                    source: PathBuf::from(&backup.source_path),
                    options: assignment.options.unwrap_or_default(),
                    store,
                    repository,
                    parent,
                    access,
                    commands: SourceCommands {
                        env: crate::commands::hooks::run_environment(
                            run_id,
                            Uuid::parse_str(&backup.job_id).ok(),
                            "backup",
                            &backup.source_path,
                        ),
                        sources: command_sources,
                        allow: Arc::clone(&self.commands),
                    },
                };
                run_backup(plan, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "backup finished");
                    reporter.progress(&summary.progress);
                    snapshot_success(
                        success(
                            summary.size_bytes,
                            summary.details,
                            summary.manifest_key,
                            summary.parent_run_id,
                        ),
                        summary.generation,
                    )
                })
            }
            pb::run::Spec::Restore(restore) => {
                tracing::info!(run = %run_id, destination = %restore.destination_path, target = %target_description, "restore started");
                let plan = RestorePlan {
                    run_id,
                    lease_token,
                    store,
                    repository,
                    manifest_key: assignment.snapshot_manifest_key,
                    paths: restore.paths,
                    destination: PathBuf::from(&restore.destination_path),
                    overwrite_newer: restore.overwrite_newer,
                    access,
                };
                run_restore(plan, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "restore finished");
                    reporter.progress(&summary.progress);
                    success(
                        i64::try_from(summary.bytes).unwrap_or(i64::MAX),
                        summary.details,
                        String::new(),
                        None,
                    )
                })
            }
            pb::run::Spec::Download(download) => {
                tracing::info!(run = %run_id, path = %download.path, target = %target_description, "download started");
                let plan = DownloadPlan {
                    lease_token,
                    store,
                    repository,
                    manifest_key: assignment.snapshot_manifest_key,
                    path: download.path,
                    size_bytes: u64::try_from(download.size_bytes).unwrap_or(0),
                };
                send_download(plan, context, &reporter, cancel).await
            }
            pb::run::Spec::RebuildCatalog(_) => {
                tracing::info!(run = %run_id, target = %target_description, "catalog rebuild started");
                run_rebuild(store, &repository, lease_token, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "catalog rebuild finished");
                    reporter.progress(&summary.progress);
                    let mut outcome = success(0, summary.details, String::new(), None);
                    if let pb::run_completion::Outcome::Success(success) = &mut outcome {
                        (success.repository_format, success.repository_id) = summary.found;
                        success.repository_generation = summary.generation.map(generation_to_proto);
                    }
                    outcome
                })
            }
            pb::run::Spec::Retention(_) => {
                tracing::info!(run = %run_id, snapshots = assignment.removals.len(), "retention started");
                let removals =
                    open_removals(assignment.removals, &target, &store, &store_access, &cancel)
                        .await?;
                run_retention(removals, lease_token, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "retention finished");
                    reporter.progress(&summary.progress);
                    success(0, summary.details, String::new(), None)
                })
            }
            pb::run::Spec::GarbageCollection(gc) => {
                tracing::info!(run = %run_id, target = %target_description, "garbage collection started");
                let plan = GcPlan {
                    run_id,
                    lease_token,
                    store,
                    repository,
                    grace: gc
                        .grace_period
                        .and_then(|grace| std::time::Duration::try_from(grace).ok())
                        .unwrap_or(DEFAULT_GRACE),
                    repack_threshold_percent: if gc.repack_threshold_percent > 0.0 {
                        gc.repack_threshold_percent
                    } else {
                        DEFAULT_REPACK_THRESHOLD_PERCENT
                    },
                    oldest_in_flight: assignment.oldest_in_flight_start_time.and_then(|t| {
                        chrono::DateTime::from_timestamp(
                            t.seconds,
                            u32::try_from(t.nanos).unwrap_or(0),
                        )
                    }),
                    lock_kept: assignment
                        .lock_kept_run_ids
                        .iter()
                        .filter_map(|id| Uuid::parse_str(id).ok())
                        .collect(),
                };
                run_gc(plan, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "garbage collection finished");
                    reporter.progress(&summary.progress);
                    success(to_i64(summary.bytes_reclaimed), summary.details, String::new(), None)
                })
            }
            pb::run::Spec::Copy(copy) => {
                tracing::info!(run = %run_id, snapshot = %copy.snapshot_run_id, target = %target_description, "copy started");
                let source = assignment
                    .copy_source
                    .take()
                    .ok_or_else(|| RunFailure::permanent("copy assignment without its source"))?;
                let plan = copy_plan(
                    run_id,
                    lease_token,
                    source,
                    store,
                    repository,
                    &store_access,
                    &cancel,
                )
                .await?;
                run_copy(plan, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "copy finished");
                    reporter.progress(&summary.progress);
                    let outcome = success(
                        summary.size_bytes,
                        summary.details,
                        summary.manifest_key,
                        None,
                    );
                    snapshot_success(outcome, summary.generation)
                })
            }
            pb::run::Spec::KeySlots(_) => {
                let change = slot_change
                    .ok_or_else(|| RunFailure::permanent("a key-slot run without its change"))?;
                tracing::info!(run = %run_id, target = %target_description, "key-slot run started");
                run_key_slots(store, &repository, change, lease_token, &reporter, cancel)
                    .await
                    .map(|outcome| {
                        tracing::info!(run = %run_id, details = %outcome.details, "key-slot run finished");
                        let mut done = success(0, outcome.details, String::new(), None);
                        if let pb::run_completion::Outcome::Success(success) = &mut done {
                            success.repository_generation =
                                outcome.generation.map(generation_to_proto);
                            success.key_slots =
                                outcome.key_slots.iter().map(key_slot_to_proto).collect();
                        }
                        done
                    })
            }
            pb::run::Spec::BackupDryRun(_) => Err(RunFailure::permanent(
                "a dry run is executed without a target; it cannot get here",
            )),
            pb::run::Spec::Verify(verify) => {
                tracing::info!(run = %run_id, target = %target_description, "verify started");
                let plan = VerifyPlan {
                    run_id,
                    lease_token,
                    store,
                    repository,
                    manifest_key: assignment.snapshot_manifest_key,
                    read_data_percent: verify.read_data_percent,
                };
                run_verify(plan, &reporter, cancel).await.map(|summary| {
                    tracing::info!(run = %run_id, details = %summary.details, "verify finished");
                    reporter.progress(&summary.progress);
                    success(0, summary.details, String::new(), None)
                })
            }
        };
        let outcome = outcome.map(|mut outcome| {
            if let pb::run_completion::Outcome::Success(success) = &mut outcome {
                // A key-slot run reports the slots as it left them.
                if success.key_slots.is_empty() {
                    success.key_slots = key_slots.iter().map(key_slot_to_proto).collect();
                }
            }
            outcome
        });
        outcome.map_err(|error| {
            tracing::warn!(run = %run_id, error = %error.message, retryable = error.retryable, "run failed");
            RunFailure {
                message: format!("{} (target: {target_description})", error.message),
                retryable: error.retryable,
            }
        })
    }
}

/// Runs a backup's dry run (`plan`) for run `run_id`.
async fn dry_run(
    run_id: Uuid,
    kind: i32,
    plan: DryRunPlan,
    context: &RunContext,
) -> Result<pb::run_completion::Outcome, RunFailure> {
    tracing::info!(run = %run_id, source = %plan.source.display(), "dry run started");
    let reporter = SessionReporter {
        context,
        metrics: RunMetrics::new(kind),
        // A dry run touches no storage.
        throttle: Throttle::unlimited(),
    };
    let cancel = context.cancellation().clone();
    let summary = run_dry_run(plan, &reporter, cancel)
        .await
        .inspect_err(|error| {
            tracing::warn!(run = %run_id, error = %error.message, "dry run failed");
        })?;
    tracing::info!(run = %run_id, details = %summary.details, "dry run finished");
    context.set_progress(summary.progress.clone());
    Ok(success(
        summary.size_bytes,
        summary.details,
        String::new(),
        None,
    ))
}

#[tonic::async_trait]
impl Executor for RunExecutor {
    async fn execute(
        &self,
        assignment: pb::RunAssignment,
        context: RunContext,
    ) -> pb::run_completion::Outcome {
        self.run_with_hooks(assignment, &context)
            .await
            .unwrap_or_else(|error| failure(error.message, error.retryable))
    }
}

/// A copy attempt's plan: the source's store opened (its local path was
/// checked with the run's) and its repository described as the lease says.
async fn copy_plan(
    run_id: Uuid,
    lease_token: i64,
    mut source: pb::CopySource,
    store: Arc<Store>,
    repository: RepositoryAccess,
    access: &StoreAccess,
    cancel: &CancellationToken,
) -> Result<CopyPlan, RunFailure> {
    let target = source
        .target
        .take()
        .ok_or_else(|| RunFailure::permanent("copy source without a resolved target"))?;
    let source_store = access
        .open(&target, cancel)
        .await
        .map_err(|error| RunFailure {
            message: format!("cannot open the snapshot's repository: {error}"),
            retryable: error.is_retryable(),
        })?;
    // Described as an assignment describes its own repository, so that the
    // source is pinned and checked exactly like any other.
    let mut described = pb::RunAssignment {
        repository_id: std::mem::take(&mut source.repository_id),
        repository_format: source.repository_format,
        repository_encryption: source.repository_encryption,
        repository_generation: source.repository_generation.take(),
        catalog_key: std::mem::take(&mut source.catalog_key),
        ..Default::default()
    };
    let mut source_access = repository_access(&mut described)?;
    source_access.v1_fallback = true;
    Ok(CopyPlan {
        run_id,
        lease_token,
        source_store: Arc::new(source_store),
        source: source_access,
        source_manifest_key: source.manifest_key,
        store,
        repository,
    })
}

/// What the lease says about the run's repository. The catalog key is
/// taken out of the assignment, so that it lives only here (wiped when
/// dropped).
fn repository_access(assignment: &mut pb::RunAssignment) -> Result<RepositoryAccess, RunFailure> {
    let catalog_key = std::mem::take(&mut assignment.catalog_key);
    let catalog_key = zeroize::Zeroizing::new(catalog_key);
    let passphrase = zeroize::Zeroizing::new(std::mem::take(&mut assignment.passphrase));
    let format = match assignment.repository_format {
        // Control planes from before format v2 send no format: v1.
        0 | 1 => NewFormat::V1 {
            chunk_key: assignment.repository_key.clone(),
        },
        2 => NewFormat::V2 {
            encryption: match pb::RepositoryEncryption::try_from(assignment.repository_encryption) {
                Ok(pb::RepositoryEncryption::None) => Encryption::None,
                Ok(pb::RepositoryEncryption::Aes256Gcm) => Encryption::Aes256Gcm,
                _ => {
                    return Err(RunFailure::permanent(
                        "the lease names a format v2 repository without its encryption",
                    ))
                }
            },
        },
        other => {
            return Err(RunFailure::permanent(format!(
                "the lease names repository format {other}, which this worker does not know"
            )))
        }
    };
    let catalog_key = match catalog_key.len() {
        0 => None,
        32 => {
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            key.copy_from_slice(&catalog_key);
            Some(key)
        }
        other => {
            return Err(RunFailure::permanent(format!(
                "the lease carries a catalog key of {other} bytes, not 32"
            )))
        }
    };
    Ok(RepositoryAccess {
        repository_id: assignment.repository_id.clone(),
        v1_fallback: true,
        adopt: false,
        passphrase: (!passphrase.is_empty()).then_some(passphrase),
        format,
        catalog_key,
        pinned: assignment
            .repository_generation
            .as_ref()
            .map(|pinned| PinnedGeneration {
                generation: pinned.generation,
                fingerprint: pinned.fingerprint.clone(),
            }),
    })
}

fn key_slot_to_proto(slot: &KeySlotSummary) -> pb::RepositoryKeySlot {
    pb::RepositoryKeySlot {
        slot_id: slot.id.to_string(),
        kind: match slot.kind {
            SlotKind::Passphrase => pb::KeySlotKind::Passphrase,
            SlotKind::Catalog => pb::KeySlotKind::Catalog,
        }
        .into(),
        generations: slot.generations.clone(),
        create_time: Some(prost_types::Timestamp {
            seconds: slot.created.timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A success that wrote a snapshot, reporting the key generation its
/// repository opened to (for the catalog to pin when it has none yet).
fn snapshot_success(
    mut outcome: pb::run_completion::Outcome,
    generation: Option<PinnedGeneration>,
) -> pb::run_completion::Outcome {
    if let pb::run_completion::Outcome::Success(success) = &mut outcome {
        success.repository_generation = generation.map(generation_to_proto);
    }
    outcome
}

fn generation_to_proto(pinned: PinnedGeneration) -> pb::RepositoryGeneration {
    pb::RepositoryGeneration {
        generation: pinned.generation,
        fingerprint: pinned.fingerprint,
    }
}
