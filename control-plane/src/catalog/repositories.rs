//! Repositories: the chunk-id key of each, and the snapshots in them.

use chrono::{DateTime, Utc};
use rand::RngCore;
use uuid::Uuid;

use super::{on_pool, Catalog};
use crate::error::{from_sqlx, DomainError, DomainResult};

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
}
