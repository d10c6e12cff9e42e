//! Repositories: owned entities with an identity. A repository is found by
//! its canonical location (`Target::repository`, built from normalised
//! paths, so one place has one spelling), and carries a UUID that the worker
//! writes into the repository's `config`, the one user whose catalog it
//! holds, and the key its chunk ids are computed with. This table is the
//! only one that knows locations: runs, objects and commit counters name
//! their repository by id. The snapshots in them are `snapshots/`.

use rand::RngCore;
use uuid::Uuid;

use super::{new_id, on_pool, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};

/// Length of a repository's chunk-id key.
pub const CHUNK_KEY_LEN: usize = 32;

/// A repository row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Repository {
    /// Identity, also stored in the repository's `config`.
    pub id: Uuid,
    /// The owner; `None` only for a repository carried over from before
    /// repositories had owners and not used since.
    pub owner_id: Option<Uuid>,
    /// Canonical location (`Target::repository`).
    #[sqlx(rename = "repository")]
    pub location: String,
    /// The chunk-id key.
    pub chunk_key: Vec<u8>,
}

impl Catalog {
    /// The repository at `location`, created owned by `owner_id` on first
    /// use; a carried-over repository without an owner is claimed by
    /// `owner_id`. An existing owner is never changed: the caller compares.
    /// Concurrent first uses agree: the loser's insert does nothing and both
    /// read the winner's row.
    pub async fn ensure_repository(
        &self,
        location: &str,
        owner_id: Uuid,
    ) -> DomainResult<Repository> {
        let mut candidate = vec![0u8; CHUNK_KEY_LEN];
        rand::thread_rng().fill_bytes(&mut candidate);
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO repositories (repository, id, owner_id, chunk_key, create_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (repository) DO NOTHING"
        )
        .bind(location)
        .bind(new_id())
        .bind(owner_id)
        .bind(&candidate)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        on_pool!(self, |pool| sqlx::query(
            "UPDATE repositories SET owner_id = $2 WHERE repository = $1 AND owner_id IS NULL"
        )
        .bind(location)
        .bind(owner_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        self.find_repository(location)
            .await?
            .ok_or_else(|| DomainError::Internal(format!("repository {location} vanished")))
    }

    /// The repository at `location`, if it exists.
    pub async fn find_repository(&self, location: &str) -> DomainResult<Option<Repository>> {
        let row: Option<Repository> = on_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT id, owner_id, repository, chunk_key FROM repositories WHERE repository = $1"
        )
        .bind(location)
        .fetch_optional(pool)
        .await
        })
        .map_err(|e| from_sqlx(e, "repository"))?;
        if let Some(repository) = &row {
            if repository.chunk_key.len() != CHUNK_KEY_LEN {
                return Err(DomainError::Internal(format!(
                    "repository {location} has a chunk key of {} bytes",
                    repository.chunk_key.len()
                )));
            }
        }
        Ok(row)
    }
}

#[cfg(feature = "test-util")]
impl Catalog {
    /// Applies only the embedded migrations numbered below `version`, so a
    /// test can build a catalog as an older release left it and check what
    /// a data migration makes of it.
    pub async fn migrate_before(&self, version: i64) -> anyhow::Result<()> {
        fn before(mut migrator: sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
            let kept = migrator
                .migrations
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect();
            migrator.migrations = std::borrow::Cow::Owned(kept);
            migrator
        }
        match &self.pool {
            super::Pool::Postgres(pool) => {
                before(sqlx::migrate!("../migrations/postgres"), version)
                    .run(pool)
                    .await?;
            }
            super::Pool::Sqlite(pool) => {
                before(sqlx::migrate!("../migrations/sqlite"), version)
                    .run(pool)
                    .await?;
            }
        }
        Ok(())
    }
}
