//! Repositories: the chunk-id key of each. The snapshots in them are
//! `snapshots/`.

use rand::RngCore;

use super::{on_pool, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};

/// Length of a repository's chunk-id key.
pub const CHUNK_KEY_LEN: usize = 32;

impl Catalog {
    /// The chunk-id key of `repository`, created on first use. Concurrent
    /// first uses agree: the insert of the loser does nothing and both read
    /// the winner's key.
    pub async fn repository_key(&self, repository: &str) -> DomainResult<Vec<u8>> {
        let mut candidate = vec![0u8; CHUNK_KEY_LEN];
        rand::thread_rng().fill_bytes(&mut candidate);
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO repositories (repository, chunk_key, create_time) VALUES ($1, $2, $3) \
             ON CONFLICT (repository) DO NOTHING"
        )
        .bind(repository)
        .bind(&candidate)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        let key: Vec<u8> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT chunk_key FROM repositories WHERE repository = $1"
        )
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
}
