//! Completing an attempt that made a snapshot: a backup's plan is applied
//! in the transaction that records the run's success (see
//! [`Catalog::finish_attempt`]); a rebuild records every snapshot it found.

use coffer_format::layout;

use super::apply::{claim_generation_in_tx, copy_plan_in_tx, PlannedCommit};
use super::staging::{decode_rebuild, RebuiltSnapshot};
use super::{lease_commit_key, SnapshotScope, PLAN_ATTEMPTS};
use crate::catalog::error::from_sqlx;
use crate::catalog::leases::{AttemptOutcome, CompletionResult, LeaseSettings, WorkerLease};
use crate::catalog::{in_transaction, new_id, now_micros, on_pool, to_json, Catalog};
use crate::error::{DomainError, DomainResult};
use crate::model::object::{EntryKind, SnapshotCommit, SnapshotEntry};
use crate::model::run::{BackupSpec, JobOptions, Labels, Run, RunKind, RunSpec, RunState};

impl Catalog {
    /// Ends an attempt as the worker reported it. A successful backup's staged
    /// file batches become the snapshot's objects and versions in the same
    /// transaction as the run's final state and metadata, so a failed,
    /// cancelled or fenced-off attempt leaves no half-visible versions. A
    /// success whose batches did not all arrive is recorded as a retryable failure.
    pub async fn commit_attempt(
        &self,
        lease: WorkerLease,
        outcome: &AttemptOutcome,
        progress_json: &str,
        batch_count: i64,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let WorkerLease {
            run_id,
            token: lease_token,
            ..
        } = lease;
        let AttemptOutcome::Success { parent_run_id, .. } = outcome else {
            return self
                .complete_attempt(lease, outcome, progress_json, settings)
                .await;
        };
        let run = self.get_run(run_id).await?;
        if held_by_another(&run, lease) {
            return Ok(CompletionResult::HeldByAnother);
        }
        check_manifest_key(&run, lease_token, outcome)?;
        if let RunSpec::Retention(retention) = &run.spec {
            // Only the current attempt removes anything; a stale one is
            // refused by `complete_attempt` as usual.
            if run.state == RunState::Running && run.lease_token == lease_token {
                let stats = self.remove_snapshots(&retention.removed).await?;
                tracing::info!(run = %run_id, ?stats, "snapshots removed from the catalog");
            }
            return self
                .complete_attempt(lease, outcome, progress_json, settings)
                .await;
        }
        if let RunSpec::Copy(copy) = &run.spec {
            let record = crate::catalog::copies::CopyCommit::of_run(&run, copy)?;
            return Ok(self
                .finish_attempt(lease, outcome, progress_json, settings, None, Some(&record))
                .await?
                .unwrap_or(CompletionResult::Rejected {
                    reason: "the copy's commit went stale".into(),
                }));
        }
        if !matches!(run.kind, RunKind::Backup | RunKind::RebuildCatalog) {
            return self
                .complete_attempt(lease, outcome, progress_json, settings)
                .await;
        }
        let received = self.staged_batch_count(run_id, lease_token).await?;
        if received != batch_count {
            return self
                .incomplete(lease, received, batch_count, progress_json, settings)
                .await;
        }
        if run.kind == RunKind::RebuildCatalog {
            let batches = self.staged_batches(run_id, lease_token).await?;
            return self
                .commit_rebuild(&run, lease, outcome, progress_json, &batches, settings)
                .await;
        }
        let Some(scope) = SnapshotScope::of_run(&run) else {
            return Err(DomainError::Internal(format!(
                "run {run_id} is not a backup leased into a known repository"
            )));
        };
        if let Some(parent) = parent_run_id {
            let latest = self
                .latest_snapshot(scope.repository_id, run.job_id)
                .await?;
            if latest.as_ref().map(|s| s.id) != Some(*parent) {
                let failure = AttemptOutcome::Failure {
                    error: format!(
                        "the incremental was taken against snapshot {parent}, which is no \
                         longer the latest of this job in repository {}",
                        scope.repository_id
                    ),
                    retryable: true,
                };
                return self
                    .complete_attempt(lease, &failure, progress_json, settings)
                    .await;
            }
        }
        let result = self
            .commit_snapshot(
                &scope,
                lease,
                outcome,
                progress_json,
                settings,
                parent_run_id.is_none(),
            )
            .await;
        // Whatever the outcome, this lease's plans are spent.
        self.discard_plans(run_id, lease_token).await?;
        result
    }

    /// Applies a backup's snapshot with the run's success: with the plan
    /// made while its batches arrived if that is still current, else with
    /// a new one (a few times, should the repository keep changing).
    async fn commit_snapshot(
        &self,
        scope: &SnapshotScope,
        lease: WorkerLease,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
        full: bool,
    ) -> DomainResult<CompletionResult> {
        let run_id = scope.run_id;
        let lease_token = lease.token;
        let _serialized = self.lock_commits(scope).await;
        for attempt in 0..PLAN_ATTEMPTS {
            if attempt > 0 {
                self.stale_plan_pause().await;
            }
            let current = if attempt == 0 {
                self.lease_plan_generation(run_id, lease_token, scope)
                    .await?
            } else {
                None
            };
            let (key, generation) = match current {
                Some(generation) => (lease_commit_key(run_id, lease_token), generation),
                None => self.replan_lease(run_id, lease_token, scope).await?,
            };
            if full {
                if self.plan_has_deletions(&key).await? {
                    return Err(DomainError::invalid(
                        "file_batch.files.kind",
                        "`deleted` records belong to incremental backups only",
                    ));
                }
                self.plan_deletions(scope, &key).await?;
            }
            let planned = PlannedCommit {
                key: &key,
                scope,
                generation,
            };
            if let Some(result) = self
                .finish_attempt(
                    lease,
                    outcome,
                    progress_json,
                    settings,
                    Some(&planned),
                    None,
                )
                .await?
            {
                return Ok(result);
            }
            tracing::info!(run = %run_id, "the repository changed while the snapshot was planned; planning again");
        }
        let failure = AttemptOutcome::Failure {
            error: "the repository kept changing while the snapshot was committed".into(),
            retryable: true,
        };
        self.complete_attempt(lease, &failure, progress_json, settings)
            .await
    }

    /// Records a success whose batches did not all arrive as a retryable failure.
    async fn incomplete(
        &self,
        lease: WorkerLease,
        received: i64,
        batch_count: i64,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let failure = AttemptOutcome::Failure {
            error: format!("the control plane received {received} of {batch_count} file batches"),
            retryable: true,
        };
        self.complete_attempt(lease, &failure, progress_json, settings)
            .await
    }

    /// Completes a catalog rebuild whose batches all arrived: every snapshot
    /// they describe that the catalog does not know becomes a succeeded backup run with its
    /// versions (each in its own transaction, so a retried rebuild resumes),
    /// then the rebuild run's own outcome is recorded.
    async fn commit_rebuild(
        &self,
        run: &Run,
        lease: WorkerLease,
        outcome: &AttemptOutcome,
        progress_json: &str,
        batches: &[(i64, Vec<u8>)],
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        for (snapshot, entries) in decode_rebuild(run.id, batches)? {
            self.record_rebuilt_snapshot(run, &snapshot, entries)
                .await?;
        }
        self.complete_attempt(lease, outcome, progress_json, settings)
            .await
    }

    /// Records one snapshot found by a catalog rebuild, unless the catalog
    /// already has it: a succeeded backup run with the snapshot's id,
    /// owned by the rebuild's owner, and its versions, in one transaction.
    /// Returns whether it was new.
    pub(crate) async fn record_rebuilt_snapshot(
        &self,
        rebuild: &Run,
        snapshot: &RebuiltSnapshot,
        entries: Vec<SnapshotEntry>,
    ) -> DomainResult<bool> {
        let run_id = snapshot.run_id;
        if self.get_run(run_id).await.is_ok() {
            return Ok(false);
        }
        // The job survives only if the catalog still has it, for the same owner.
        let job_id = match snapshot.job_id {
            Some(id) => match self.get_job(id).await {
                Ok(job) if job.draft.owner_id == rebuild.owner_id => Some(id),
                _ => None,
            },
            None => None,
        };
        let Some(repository_id) = rebuild.repository_id else {
            return Err(DomainError::Internal(format!(
                "rebuild {} was never leased into a repository",
                rebuild.id
            )));
        };
        let target = rebuild.spec.target().clone();
        let created = snapshot.create_time.unwrap_or_else(now_micros);
        let size: i64 = entries
            .iter()
            .filter(|e| e.attributes.kind == EntryKind::File)
            .map(|e| i64::try_from(e.attributes.size).unwrap_or(i64::MAX))
            .sum();
        let spec = RunSpec::Backup(BackupSpec {
            job_id,
            source_path: snapshot.source_path.clone(),
            target: target.clone(),
            options: JobOptions::default(),
            worker_selector: Labels::new(),
            commands: Default::default(),
        });
        let commit = SnapshotCommit {
            run_id,
            owner_id: rebuild.owner_id,
            bucket_id: target.bucket_id(),
            repository_id,
            job_id,
            entries,
            removed: None,
        };
        let scope = SnapshotScope::of_commit(&commit);
        let details = format!(
            "rebuilt from {} by run {}",
            snapshot.manifest_key, rebuild.id
        );
        let _serialized = self.lock_commits(&scope).await;
        for attempt in 0..PLAN_ATTEMPTS {
            if attempt > 0 {
                self.stale_plan_pause().await;
            }
            let (key, generation) = self.plan_commit(&commit).await?;
            let now = now_micros();
            let applied = on_pool!(self, |pool, dialect| in_transaction!(pool, |tx| {
                // Claimed first: a stale plan then returns before anything is written.
                if !claim_generation_in_tx!(tx, &scope, generation)? {
                    return Ok(false);
                }
                sqlx::query(include_str!("../sql/snapshots/insert_rebuilt_run.sql"))
                    .bind(run_id)
                    .bind(rebuild.owner_id)
                    .bind(job_id)
                    .bind(to_json(&spec))
                    .bind(target.bucket_id())
                    .bind(created)
                    .bind(now)
                    .bind(repository_id)
                    .bind(&snapshot.manifest_key)
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| from_sqlx(e, "run"))?;
                copy_plan_in_tx!(tx, dialect, &key, &scope, now)?;
                sqlx::query(include_str!("../sql/snapshots/record_rebuilt_metadata.sql"))
                    .bind(new_id())
                    .bind(rebuild.owner_id)
                    .bind(job_id)
                    .bind(run_id)
                    .bind(size)
                    .bind(&details)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(|e| from_sqlx(e, "backup metadata"))?;
                Ok(true)
            }));
            self.discard_plans(run_id, 0).await?;
            if applied? {
                self.publish_run(run_id);
                return Ok(true);
            }
        }
        Err(DomainError::Aborted(format!(
            "the repository kept changing while rebuilt snapshot {run_id} was committed"
        )))
    }
}

/// Whether `lease` names the run's current lease and a worker other than
/// the one writing holds it: nothing that worker says about it is accepted.
fn held_by_another(run: &Run, lease: WorkerLease) -> bool {
    run.state == RunState::Running
        && run.lease_token == lease.token
        && run
            .worker_id
            .is_some_and(|holder| holder != lease.worker_id)
}

/// A successful attempt names the manifest key of its own attempt
/// (`snapshots/<run>.<lease token>`) for a backup or a copy, and none for other kinds:
/// the catalog then never points a snapshot at an object another attempt
/// (a worker whose lease was lost) may write.
fn check_manifest_key(run: &Run, lease_token: i64, outcome: &AttemptOutcome) -> DomainResult<()> {
    let AttemptOutcome::Success { manifest_key, .. } = outcome else {
        return Ok(());
    };
    let expected = match run.kind {
        RunKind::Backup | RunKind::Copy => layout::attempt_manifest_key(run.id, lease_token),
        _ => String::new(),
    };
    if *manifest_key == expected {
        return Ok(());
    }
    let reason = if expected.is_empty() {
        format!("must be empty for a {} run", run.kind.as_str())
    } else {
        format!("must be {expected:?}, the manifest key of this attempt")
    };
    Err(DomainError::invalid(
        "completion.success.manifest_key",
        reason,
    ))
}
