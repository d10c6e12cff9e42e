//! Repositories: the chunk-id key of each, and the snapshots in them.

use chrono::{DateTime, Utc};
use rand::RngCore;
use uuid::Uuid;

use coffer_proto::v1 as pb;

use super::commit::{apply_plan_in_tx, SnapshotScope};
use super::leases::repository_of;
use super::objects::PLAN_ATTEMPTS;
use super::{new_id, now_micros, on_pool, to_json, Catalog};
use crate::error::{from_sqlx, DomainError, DomainResult};
use crate::model::object::{SnapshotCommit, SnapshotEntry};
use crate::model::run::{BackupSpec, JobOptions, Labels, Run, RunSpec};

/// Length of a repository's chunk-id key.
pub const CHUNK_KEY_LEN: usize = 32;

/// A snapshot a new backup of the same job can be an incremental of.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SnapshotRef {
    /// The snapshot's run.
    pub id: Uuid,
    /// Storage key of its manifest.
    pub manifest_key: String,
}

impl Catalog {
    /// The chunk-id key of `repository`, created on first use. Concurrent
    /// first uses agree: the insert of the loser does nothing and both read
    /// the winner's key.
    pub async fn repository_key(&self, repository: &str) -> DomainResult<Vec<u8>> {
        let mut candidate = vec![0u8; CHUNK_KEY_LEN];
        rand::thread_rng().fill_bytes(&mut candidate);
        let now = self.now().await?;
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO repositories (repository, chunk_key, create_time) VALUES ($1, $2, $3) \
             ON CONFLICT (repository) DO NOTHING")
            .bind(repository)
            .bind(&candidate)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        let key: Vec<u8> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT chunk_key FROM repositories WHERE repository = $1")
            .bind(repository)
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "repository"))?;
        if key.len() != CHUNK_KEY_LEN {
            return Err(DomainError::Internal(format!(
                "repository {repository} has a chunk key of {} bytes",
                key.len()
            )));
        }
        Ok(key)
    }

    /// The last committed snapshot of `job_id` (or of ad-hoc runs, when
    /// `None`) in `repository`: the parent of the next incremental.
    pub async fn latest_snapshot(
        &self,
        repository: &str,
        job_id: Option<Uuid>,
    ) -> DomainResult<Option<SnapshotRef>> {
        on_pool!(self, pool => sqlx::query_as::<_, SnapshotRef>(
            "SELECT id, manifest_key FROM runs \
             WHERE kind = 'backup' AND state = 'succeeded' AND repository = $1 \
             AND ((job_id IS NULL AND $2 IS NULL) OR job_id = $2) AND manifest_key <> '' \
             ORDER BY finish_time DESC, id DESC LIMIT 1")
            .bind(repository)
            .bind(job_id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "snapshot"))
    }

    /// The newest succeeded backup of `job_id` finished at or before `as_of`.
    pub async fn job_snapshot_as_of(
        &self,
        job_id: Uuid,
        as_of: DateTime<Utc>,
    ) -> DomainResult<Option<Uuid>> {
        on_pool!(self, pool => sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM runs WHERE kind = 'backup' AND state = 'succeeded' AND job_id = $1 \
             AND manifest_key <> '' AND finish_time <= $2 ORDER BY finish_time DESC, id DESC LIMIT 1")
            .bind(job_id)
            .bind(as_of)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "snapshot"))
    }

    /// Records one snapshot found by a catalog rebuild, unless the catalog
    /// already has it: a succeeded backup run with the snapshot's id,
    /// owned by the rebuild's owner, and its versions, in one transaction.
    /// Returns whether it was new.
    pub async fn record_rebuilt_snapshot(
        &self,
        rebuild: &Run,
        snapshot: &pb::RebuiltSnapshot,
        entries: Vec<SnapshotEntry>,
    ) -> DomainResult<bool> {
        let run_id = Uuid::parse_str(&snapshot.run_id)
            .map_err(|_| DomainError::invalid("file_batch.snapshot.run_id", "is not a UUID"))?;
        if self.get_run(run_id).await.is_ok() {
            return Ok(false);
        }
        // The job survives only if the catalog still has it, for the same owner.
        let job_id = match Uuid::parse_str(&snapshot.job_id) {
            Ok(id) => match self.get_job(id).await {
                Ok(job) if job.draft.owner_id == rebuild.owner_id => Some(id),
                _ => None,
            },
            Err(_) => None,
        };
        let target = rebuild.spec.target().clone();
        let created = snapshot
            .create_time
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or_else(now_micros);
        let size: i64 = entries
            .iter()
            .filter(|e| e.kind == crate::model::object::FileKind::Regular)
            .map(|e| e.size_bytes)
            .sum();
        let spec = RunSpec::Backup(BackupSpec {
            job_id,
            source_path: snapshot.source_path.clone(),
            target: target.clone(),
            options: JobOptions::default(),
            worker_selector: Labels::new(),
        });
        let commit = SnapshotCommit {
            run_id,
            owner_id: rebuild.owner_id,
            bucket_id: target.bucket_id(),
            repository: repository_of(&target),
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
            let applied = on_pool!(self, pool, dialect => async {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            sqlx::query(
                "INSERT INTO runs (id, owner_id, job_id, kind, state, spec, target_bucket_id, max_attempts, \
                 not_before_time, worker_selector, create_time, start_time, finish_time, update_time, \
                 repository, manifest_key, attempt) \
                 VALUES ($1, $2, $3, 'backup', 'succeeded', $4, $5, 1, $6, '{}', $6, $6, $6, $7, $8, $9, 1)")
                .bind(run_id)
                .bind(rebuild.owner_id)
                .bind(job_id)
                .bind(to_json(&spec))
                .bind(target.bucket_id())
                .bind(created)
                .bind(now)
                .bind(repository_of(&target))
                .bind(&snapshot.manifest_key)
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "run"))?;
            if apply_plan_in_tx!(tx, dialect, &key, &scope, generation, now)?.is_none() {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO backup_metadata (id, owner_id, job_id, run_id, size_bytes, duration_seconds, details, source, create_time, update_time) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, 'automatic', $7, $7)")
                .bind(new_id()).bind(rebuild.owner_id).bind(job_id).bind(run_id).bind(size).bind(&details).bind(now)
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "backup metadata"))?;
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok::<_, DomainError>(true)
        }.await);
            self.discard_plans(run_id, 0).await?;
            if applied? {
                return Ok(true);
            }
        }
        Err(DomainError::Aborted(format!(
            "the repository kept changing while rebuilt snapshot {run_id} was committed"
        )))
    }
}
