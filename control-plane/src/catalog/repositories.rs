//! Repositories: owned entities with an identity. A repository is found by
//! its canonical location (`Target::repository`, built from normalised
//! paths, so one place has one spelling), and carries a UUID that the worker
//! writes into the repository's `config`, the one user whose catalog it
//! holds, and its format: a v1 repository's chunk-id key, or a v2
//! repository's encryption, sealed catalog key and pinned key generation.
//! This table is the only one that knows locations: runs, objects and
//! commit counters name their repository by id. The snapshots in them are
//! `snapshots/`.

use rand::RngCore;
use uuid::Uuid;

use super::{new_id, on_pool, Catalog};
use crate::catalog::error::from_sqlx;
use crate::catalog::secrets::SealedColumns;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::RepositoryEncryption;
use crate::secrets::{Keyring, Sealed};

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
    /// The chunk-id key of a v1 repository (unused by a v2 one).
    pub chunk_key: Vec<u8>,
    /// The repository format: 1, or 2.
    pub format_version: i64,
    /// How a v2 repository protects its data, as the catalog spells it
    /// (`None` for v1); see [`Repository::encryption`].
    #[sqlx(rename = "encryption")]
    pub encryption_text: Option<String>,
    /// Fingerprint of the secrets key that sealed the catalog key.
    pub catalog_key_id: Option<String>,
    /// The sealed catalog key's nonce.
    pub catalog_key_nonce: Option<Vec<u8>>,
    /// The sealed catalog key (ciphertext and tag).
    pub catalog_key_sealed: Option<Vec<u8>>,
    /// The pinned key generation of a v2 repository, once reported.
    pub generation: Option<i64>,
    /// The pinned generation's public fingerprint.
    pub generation_fingerprint: Option<String>,
    /// The identity a v2 repository carries in storage, when a rebuild
    /// adopted it under this other id.
    pub storage_id: Option<String>,
}

impl Repository {
    /// How a v2 repository protects its data; `None` for v1.
    pub fn encryption(&self) -> DomainResult<Option<RepositoryEncryption>> {
        self.encryption_text
            .as_deref()
            .map(RepositoryEncryption::parse)
            .transpose()
    }

    /// The sealed catalog key of an encrypted v2 repository.
    pub fn sealed_catalog_key(&self) -> Option<Sealed> {
        match (
            &self.catalog_key_id,
            &self.catalog_key_nonce,
            &self.catalog_key_sealed,
        ) {
            (Some(key_id), Some(nonce), Some(ciphertext)) => Some(Sealed {
                key_id: key_id.clone(),
                nonce: nonce.clone(),
                ciphertext: ciphertext.clone(),
            }),
            _ => None,
        }
    }

    /// The identity the worker must find in storage.
    pub fn storage_identity(&self) -> String {
        self.storage_id
            .clone()
            .unwrap_or_else(|| self.id.to_string())
    }

    /// The pinned generation and its fingerprint, once recorded.
    pub fn pinned_generation(&self) -> Option<(u32, &str)> {
        let generation = u32::try_from(self.generation?).ok()?;
        Some((generation, self.generation_fingerprint.as_deref()?))
    }
}

/// The format a repository is created with when [`Catalog::ensure_repository`]
/// creates it.
#[derive(Clone, Debug)]
pub struct NewRepositoryFormat {
    /// Its encryption (format v2).
    pub encryption: RepositoryEncryption,
    /// The catalog key, sealed for the repository's id (encrypted only).
    pub catalog_key: Option<Sealed>,
}

impl NewRepositoryFormat {
    /// An unencrypted v2 repository (no catalog key).
    pub fn unencrypted() -> Self {
        NewRepositoryFormat {
            encryption: RepositoryEncryption::None,
            catalog_key: None,
        }
    }
}

/// Columns of [`Repository`].
const COLUMNS: &str = "id, owner_id, repository, chunk_key, format_version, encryption, \
     catalog_key_id, catalog_key_nonce, catalog_key_sealed, generation, generation_fingerprint, \
     storage_id";

impl Catalog {
    /// The repository at `location`, created owned by `owner_id` on first
    /// use, in format v2 as `format` (given the new repository's id) says;
    /// a carried-over repository without an owner is claimed by `owner_id`.
    /// An existing owner is never changed: the caller compares. Concurrent
    /// first uses agree: the loser's insert does nothing and both read the
    /// winner's row.
    pub async fn ensure_repository(
        &self,
        location: &str,
        owner_id: Uuid,
        format: impl FnOnce(Uuid) -> DomainResult<NewRepositoryFormat>,
    ) -> DomainResult<Repository> {
        if let Some(existing) = self.find_repository(location).await? {
            if existing.owner_id.is_some() {
                return Ok(existing);
            }
        }
        // A v1 chunk key is still drawn: the column predates format v2, and
        // a v2 repository never uses it (its chunk ids are keyed from its
        // own keys, which the catalog never sees).
        let mut candidate = vec![0u8; CHUNK_KEY_LEN];
        rand::thread_rng().fill_bytes(&mut candidate);
        let id = new_id();
        let format = format(id)?;
        let sealed = format.catalog_key.as_ref();
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO repositories (repository, id, owner_id, chunk_key, create_time, \
             format_version, encryption, catalog_key_id, catalog_key_nonce, catalog_key_sealed) \
             VALUES ($1, $2, $3, $4, $5, 2, $6, $7, $8, $9) ON CONFLICT (repository) DO NOTHING"
        )
        .bind(location)
        .bind(id)
        .bind(owner_id)
        .bind(&candidate)
        .bind(now)
        .bind(format.encryption.as_str())
        .bind(sealed.map(|s| s.key_id.as_str()))
        .bind(sealed.map(|s| s.nonce.as_slice()))
        .bind(sealed.map(|s| s.ciphertext.as_slice()))
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

    /// Seals again under the primary key every catalog key that a previous
    /// key of `keyring` sealed (after the secrets key was replaced), as
    /// [`Catalog::reseal_secrets`] does for secrets, so the old key can be
    /// retired without losing the encrypted repositories. A row is replaced
    /// only if it was not resealed meanwhile; rows no key opens are left and
    /// logged. Returns how many were resealed.
    pub async fn reseal_catalog_keys(&self, keyring: &Keyring) -> DomainResult<usize> {
        let Some(primary) = keyring.primary_id() else {
            return Ok(0);
        };
        let rows: Vec<Repository> = on_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM repositories \
             WHERE catalog_key_id IS NOT NULL AND catalog_key_id <> $1"
        ))
        .bind(primary)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "repositories"))?;
        let mut resealed = 0;
        for repository in rows {
            let Some(old) = repository.sealed_catalog_key() else {
                continue;
            };
            let key = match keyring.open_catalog_key(repository.id, &old) {
                Ok(key) => key,
                Err(error) => {
                    tracing::warn!(repository = %repository.id, %error, "catalog key not resealed");
                    continue;
                }
            };
            let new = keyring.seal_catalog_key(repository.id, &key)?;
            let changed = self
                .replace_sealed(&SealedColumns::CATALOG_KEYS, repository.id, &old, &new)
                .await?;
            resealed += usize::from(changed);
        }
        Ok(resealed)
    }

    /// The repository at `location`, if it exists.
    pub async fn find_repository(&self, location: &str) -> DomainResult<Option<Repository>> {
        let row: Option<Repository> = on_pool!(self, |pool| {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM repositories WHERE repository = $1"
            ))
            .bind(location)
            .fetch_optional(pool)
            .await
        })
        .map_err(|e| from_sqlx(e, "repository"))?;
        if let Some(repository) = &row {
            if repository.format_version == 1 && repository.chunk_key.len() != CHUNK_KEY_LEN {
                return Err(DomainError::Internal(format!(
                    "repository {location} has a chunk key of {} bytes",
                    repository.chunk_key.len()
                )));
            }
        }
        Ok(row)
    }

    /// Adopts what a catalog rebuild found in storage for a repository of
    /// which the catalog knows no key generation yet (a catalog that lost
    /// the repository and met it again): a v1 repository is recorded as v1;
    /// a v2 one keeps its format and, when its identity in storage differs
    /// from the catalog's id, that identity. Fenced by `lease` (run id,
    /// lease token) like every worker write.
    pub async fn adopt_repository(
        &self,
        id: Uuid,
        format_version: u32,
        storage_id: &str,
        lease: (Uuid, i64),
    ) -> DomainResult<()> {
        let affected = match format_version {
            1 => on_pool!(self, |pool| sqlx::query(
                "UPDATE repositories SET format_version = 1, encryption = NULL, \
                 catalog_key_id = NULL, catalog_key_nonce = NULL, catalog_key_sealed = NULL \
                 WHERE id = $1 AND format_version = 2 AND generation IS NULL \
                 AND EXISTS (SELECT 1 FROM runs WHERE runs.id = $2 AND runs.lease_token = $3 \
                 AND runs.state = 'running' AND runs.repository_id = repositories.id)"
            )
            .bind(id)
            .bind(lease.0)
            .bind(lease.1)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())),
            2 if storage_id != id.to_string() => on_pool!(self, |pool| sqlx::query(
                "UPDATE repositories SET storage_id = $2 \
                 WHERE id = $1 AND format_version = 2 AND generation IS NULL \
                 AND storage_id IS NULL AND EXISTS (SELECT 1 FROM runs WHERE runs.id = $3 \
                 AND runs.lease_token = $4 AND runs.state = 'running' \
                 AND runs.repository_id = repositories.id)"
            )
            .bind(id)
            .bind(storage_id)
            .bind(lease.0)
            .bind(lease.1)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())),
            2 => Ok(0),
            other => {
                return Err(DomainError::invalid(
                    "completion.success.repository_format",
                    format!("{other} is not a repository format"),
                ))
            }
        };
        affected.map_err(|e| from_sqlx(e, "repository"))?;
        Ok(())
    }

    /// Pins the key generation a backup reported for a v2 repository, if
    /// none is pinned yet (the backup that created it). A pinned generation
    /// changes only through a key-slot run. Fenced like every worker write:
    /// only while `lease` (run id, lease token) still holds the run.
    pub async fn pin_repository_generation(
        &self,
        id: Uuid,
        generation: u32,
        fingerprint: &str,
        lease: (Uuid, i64),
    ) -> DomainResult<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE repositories SET generation = $2, generation_fingerprint = $3 \
             WHERE id = $1 AND format_version = 2 AND generation IS NULL \
             AND EXISTS (SELECT 1 FROM runs WHERE runs.id = $4 AND runs.lease_token = $5 \
             AND runs.state = 'running' AND runs.repository_id = repositories.id)"
        )
        .bind(id)
        .bind(i64::from(generation))
        .bind(fingerprint)
        .bind(lease.0)
        .bind(lease.1)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        Ok(())
    }
}

impl Catalog {
    /// Moves the pinned generation of a v2 repository from `generation - 1`
    /// to `generation` (a key-slot run's rotation), only while `lease` (run
    /// id, lease token) still holds a running key-slot run on it: a zombie
    /// attempt, or a rotation from a generation that is no longer the
    /// pinned one, changes nothing.
    pub async fn advance_repository_generation(
        &self,
        id: Uuid,
        generation: u32,
        fingerprint: &str,
        lease: (Uuid, i64),
    ) -> DomainResult<bool> {
        let previous = i64::from(generation) - 1;
        let affected = on_pool!(self, |pool| sqlx::query(
            "UPDATE repositories SET generation = $2, generation_fingerprint = $3 \
             WHERE id = $1 AND format_version = 2 AND generation = $6 \
             AND EXISTS (SELECT 1 FROM runs WHERE runs.id = $4 AND runs.lease_token = $5 \
             AND runs.state = 'running' AND runs.kind = 'key_slots' \
             AND runs.repository_id = repositories.id)"
        )
        .bind(id)
        .bind(i64::from(generation))
        .bind(fingerprint)
        .bind(lease.0)
        .bind(lease.1)
        .bind(previous)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "repository"))?;
        Ok(affected == 1)
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
