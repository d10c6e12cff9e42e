//! Staging: a lease's file batches as they arrive. This is the one place
//! the catalog decodes the worker's protobuf `FileBatch` and `FileRecord`;
//! everything after it works on [`SnapshotEntry`].
//!
//! A backup's batch is planned when it arrives (see [`super::plan`]) and
//! stored with the repository generation its plan read, so the completion
//! has little left to do; a plan gone stale is made again from the stored
//! batches.

use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

use coffer_proto::v1 as pb;

use super::plan::{insert_pending_in_tx, PendingRow};
use super::{fresh_commit_key, lease_commit_key, SnapshotScope};
use crate::catalog::error::from_sqlx;
use crate::catalog::leases::{LeaseState, WorkerLease};
use crate::catalog::{in_transaction, on_pool, Catalog};
use crate::error::{DomainError, DomainResult};
use crate::model::object::{parse_kind, EntryKind, FileAttributes, SnapshotEntry};
use crate::model::run::NewRunExclusion;

/// One batch of a lease's output as the worker sent it.
#[derive(Clone, Copy)]
struct StagedBatch<'a> {
    run_id: Uuid,
    lease_token: i64,
    worker_id: Uuid,
    sequence: i64,
    payload: &'a [u8],
    errors: &'a [(String, String)],
    exclusions: &'a [NewRunExclusion],
}

impl Catalog {
    /// Stages one batch of an attempt's output (and records its per-file
    /// errors and, for a dry run, its exclusions), if the lease is current
    /// and `worker_id` holds it. A batch sent twice is stored once.
    ///
    /// A backup's batch is also planned at once (see `catalog::snapshots`), so
    /// that the completion has little left to do; a batch that cannot be
    /// planned now (a path named twice, an unknown kind) is stored unplanned
    /// and the completion plans again, reporting the error.
    pub async fn stage_batch(
        &self,
        lease: WorkerLease,
        sequence: i64,
        payload: &[u8],
        errors: &[(String, String)],
        exclusions: &[NewRunExclusion],
    ) -> DomainResult<LeaseState> {
        let WorkerLease {
            run_id,
            token: lease_token,
            worker_id,
        } = lease;
        let plan = match self.plan_staged_batch(run_id, payload).await {
            Ok(plan) => plan,
            Err(error) => {
                tracing::debug!(run = %run_id, sequence, %error, "batch staged unplanned");
                None
            }
        };
        let batch = StagedBatch {
            run_id,
            lease_token,
            worker_id,
            sequence,
            payload,
            errors,
            exclusions,
        };
        if let Some(plan) = &plan {
            match self.stage(&batch, Some(plan)).await {
                Ok(state) => return Ok(state),
                Err(error) => {
                    tracing::debug!(run = %run_id, sequence, %error, "batch staged unplanned");
                }
            }
        }
        self.stage(&batch, None).await
    }

    /// The plan of a backup's batch, with the generation it read.
    async fn plan_staged_batch(
        &self,
        run_id: Uuid,
        payload: &[u8],
    ) -> DomainResult<Option<(i64, Vec<PendingRow>)>> {
        let run = self.get_run(run_id).await?;
        let Some(scope) = SnapshotScope::of_run(&run) else {
            return Ok(None);
        };
        let (entries, removed) = decode_batch(run_id, 0, payload)?;
        let generation = self.commit_generation(&scope).await?;
        let rows = self.plan_entries(&scope, &entries, &removed).await?;
        Ok(Some((generation, rows)))
    }

    /// Stores a batch and its errors, with its plan if it has one, if the
    /// lease is current.
    async fn stage(
        &self,
        batch: &StagedBatch<'_>,
        plan: Option<&(i64, Vec<PendingRow>)>,
    ) -> DomainResult<LeaseState> {
        let StagedBatch {
            run_id,
            lease_token,
            worker_id,
            sequence,
            payload,
            errors,
            exclusions,
        } = *batch;
        let now = self.now().await?;
        let check = format!(
            "SELECT attempt, cancel_requested, worker_id FROM runs \
             WHERE id = $1 AND lease_token = $2 AND state = 'running'{}",
            self.row_lock_clause()
        );
        let key = lease_commit_key(run_id, lease_token);
        on_pool!(self, |pool, dialect| in_transaction!(pool, |tx| {
            let current: Option<(i32, bool, Option<Uuid>)> = sqlx::query_as(&check)
                .bind(run_id)
                .bind(lease_token)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "run"))?;
            let Some((attempt, cancel_requested, holder)) = current else {
                return Ok(LeaseState::Lost);
            };
            if holder.is_some_and(|holder| holder != worker_id) {
                return Ok(LeaseState::HeldByAnother);
            }
            let inserted = sqlx::query(include_str!("../sql/snapshots/stage_batch.sql"))
                .bind(run_id)
                .bind(lease_token)
                .bind(sequence)
                .bind(payload)
                .bind(now)
                .bind(plan.map(|(generation, _)| *generation))
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "staged batch"))?;
            if inserted > 0 {
                for (path, message) in errors {
                    sqlx::query("INSERT INTO run_errors (run_id, attempt, path, message, create_time) VALUES ($1, $2, $3, $4, $5)")
                        .bind(run_id).bind(attempt).bind(path).bind(message).bind(now)
                        .execute(&mut *tx).await.map(|r| r.rows_affected())
                        .map_err(|e| from_sqlx(e, "run error"))?;
                }
                for exclusion in exclusions {
                    sqlx::query(include_str!("../sql/snapshots/insert_exclusion.sql"))
                        .bind(run_id)
                        .bind(attempt)
                        .bind(&exclusion.path)
                        .bind(&exclusion.reason)
                        .bind(&exclusion.rule)
                        .bind(&exclusion.source)
                        .bind(exclusion.size_bytes)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| from_sqlx(e, "run exclusion"))?;
                }
                if let Some((_, rows)) = plan {
                    insert_pending_in_tx!(tx, dialect, &key, run_id, rows)?;
                }
            }
            Ok(LeaseState::Current { cancel_requested })
        }))
    }

    /// Whether every staged batch of the lease was planned against the
    /// repository's current generation, which is returned if so.
    pub(crate) async fn lease_plan_generation(
        &self,
        run_id: Uuid,
        lease_token: i64,
        scope: &SnapshotScope,
    ) -> DomainResult<Option<i64>> {
        let generation = self.commit_generation(scope).await?;
        let stale: i64 = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 \
             AND (generation IS NULL OR generation <> $3)"
        )
        .bind(run_id)
        .bind(lease_token)
        .bind(generation)
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "staged batches"))?;
        Ok((stale == 0).then_some(generation))
    }

    /// Plans a lease's snapshot again from its staged batches, a few
    /// batches at a time, under a fresh key. Returns the key and generation.
    pub(crate) async fn replan_lease(
        &self,
        run_id: Uuid,
        lease_token: i64,
        scope: &SnapshotScope,
    ) -> DomainResult<(String, i64)> {
        let generation = self.commit_generation(scope).await?;
        let key = fresh_commit_key(run_id, lease_token);
        let mut after = -1i64;
        loop {
            let page: Vec<(i64, Vec<u8>)> = on_pool!(self, |pool| sqlx::query_as(
                "SELECT sequence, payload FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 \
                 AND sequence > $3 ORDER BY sequence LIMIT 16")
                .bind(run_id).bind(lease_token).bind(after)
                .fetch_all(pool).await)
            .map_err(|e| from_sqlx(e, "staged batches"))?;
            let Some(&(last, _)) = page.last() else {
                return Ok((key, generation));
            };
            after = last;
            for (sequence, payload) in page {
                let (entries, removed) = decode_batch(run_id, sequence, &payload)?;
                let rows = self.plan_entries(scope, &entries, &removed).await?;
                self.store_pending(&key, run_id, &rows).await?;
            }
        }
    }

    /// The staged batches of a lease, in sequence order.
    pub async fn staged_batches(
        &self,
        run_id: Uuid,
        lease_token: i64,
    ) -> DomainResult<Vec<(i64, Vec<u8>)>> {
        on_pool!(self, |pool| sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT sequence, payload FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 ORDER BY sequence")
            .bind(run_id).bind(lease_token).fetch_all(pool).await)
        .map_err(|e| from_sqlx(e, "staged batches"))
    }

    pub(crate) async fn staged_batch_count(
        &self,
        run_id: Uuid,
        lease_token: i64,
    ) -> DomainResult<i64> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2"
        )
        .bind(run_id)
        .bind(lease_token)
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "staged batches"))
    }
}

/// The entries of a staged batch, and the paths it records as deleted.
fn decode_batch(
    run_id: Uuid,
    sequence: i64,
    payload: &[u8],
) -> DomainResult<(Vec<SnapshotEntry>, Vec<Vec<u8>>)> {
    let batch = decode_payload(run_id, sequence, payload)?;
    let mut entries = Vec::with_capacity(batch.files.len());
    let mut removed = Vec::new();
    for file in batch.files {
        if file.kind == "deleted" {
            removed.push(file.path);
        } else {
            entries.push(entry_from_record(file)?);
        }
    }
    Ok((entries, removed))
}

fn decode_payload(run_id: Uuid, sequence: i64, payload: &[u8]) -> DomainResult<pb::FileBatch> {
    pb::FileBatch::decode(payload).map_err(|e| {
        DomainError::Internal(format!(
            "staged batch {sequence} of run {run_id} is corrupt: {e}"
        ))
    })
}

/// A snapshot found by a catalog rebuild, as the worker describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RebuiltSnapshot {
    /// The run that took it (its id is kept).
    pub(crate) run_id: Uuid,
    /// The job it belonged to, if the manifest names one.
    pub(crate) job_id: Option<Uuid>,
    /// The source path of its backup.
    pub(crate) source_path: String,
    /// Storage key of its manifest.
    pub(crate) manifest_key: String,
    /// When it was taken, if known.
    pub(crate) create_time: Option<DateTime<Utc>>,
}

impl RebuiltSnapshot {
    fn from_proto(snapshot: pb::RebuiltSnapshot) -> DomainResult<Self> {
        let run_id = Uuid::parse_str(&snapshot.run_id)
            .map_err(|_| DomainError::invalid("file_batch.snapshot.run_id", "is not a UUID"))?;
        Ok(RebuiltSnapshot {
            run_id,
            job_id: Uuid::parse_str(&snapshot.job_id).ok(),
            source_path: snapshot.source_path,
            manifest_key: snapshot.manifest_key,
            create_time: snapshot.create_time.and_then(timestamp),
        })
    }
}

/// The snapshots a rebuild's staged batches describe, each with its entries,
/// in the order the batches name them.
pub(crate) fn decode_rebuild(
    run_id: Uuid,
    batches: &[(i64, Vec<u8>)],
) -> DomainResult<Vec<(RebuiltSnapshot, Vec<SnapshotEntry>)>> {
    let mut snapshots: Vec<(RebuiltSnapshot, Vec<SnapshotEntry>)> = Vec::new();
    for (sequence, payload) in batches {
        let batch = decode_payload(run_id, *sequence, payload)?;
        let Some(snapshot) = batch.snapshot else {
            return Err(DomainError::invalid(
                "file_batch.snapshot",
                "is required in a rebuild",
            ));
        };
        let snapshot = RebuiltSnapshot::from_proto(snapshot)?;
        if snapshots
            .last()
            .is_none_or(|(last, _)| last.run_id != snapshot.run_id)
        {
            snapshots.push((snapshot, Vec::new()));
        }
        let entries = &mut snapshots.last_mut().expect("just pushed").1;
        for file in batch.files {
            entries.push(entry_from_record(file)?);
        }
    }
    Ok(snapshots)
}

fn timestamp(time: prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
}

/// A worker's record of one file as a snapshot entry.
fn entry_from_record(file: pb::FileRecord) -> DomainResult<SnapshotEntry> {
    let Some(kind) = parse_kind(&file.kind) else {
        return Err(DomainError::invalid(
            "file_batch.files.kind",
            format!("unknown kind {:?}", file.kind),
        ));
    };
    let size = u64::try_from(file.size_bytes)
        .map_err(|_| DomainError::invalid("file_batch.files.size_bytes", "must not be negative"))?;
    // A record without a time is recorded at the epoch.
    let mtime_ns = file.mtime.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    });
    Ok(SnapshotEntry {
        path: file.path,
        attributes: FileAttributes {
            kind,
            size,
            mode: file.mode,
            uid: file.uid,
            gid: file.gid,
            mtime_ns,
            content_hash: (!file.content_hash.is_empty()).then_some(file.content_hash),
            symlink_target: (kind == EntryKind::Symlink).then_some(file.symlink_target),
        },
        storage_key: file.storage_key,
    })
}
