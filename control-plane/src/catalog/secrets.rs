//! Catalog queries for secrets. The values are stored only sealed (nonce,
//! ciphertext, the sealing key's fingerprint); metadata lookups never select
//! them. Lookups take an owner scope (`None` for admins): a secret outside
//! the scope is reported as not found.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{fetch_scoped, in_transaction, now_micros, on_pool, on_read_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::secret::{Secret, SecretKind, SecretSpec};
use crate::secrets::{Keyring, Sealed};

const COLUMNS: &str = "id, owner_id, name, description, access_key_id_hint, has_session_token, \
     create_time, update_time, kind";

#[derive(sqlx::FromRow)]
struct SecretRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    description: String,
    access_key_id_hint: String,
    has_session_token: bool,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    kind: String,
}

impl TryFrom<SecretRow> for Secret {
    type Error = DomainError;

    fn try_from(row: SecretRow) -> DomainResult<Self> {
        Ok(Secret {
            id: row.id,
            kind: SecretKind::parse(&row.kind)?,
            spec: SecretSpec {
                owner_id: row.owner_id,
                name: row.name,
                description: row.description,
            },
            access_key_id_hint: row.access_key_id_hint,
            has_session_token: row.has_session_token,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    id: Uuid,
    owner_id: Uuid,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    kind: String,
}

/// What sealing a secret's values produced, with the metadata derived from
/// the values before they were sealed.
#[derive(Debug)]
pub struct SealedValues {
    /// What the values are.
    pub kind: SecretKind,
    /// The sealed values.
    pub sealed: Sealed,
    /// The first characters of the access key id.
    pub access_key_id_hint: String,
    /// Whether a session token is among the values.
    pub has_session_token: bool,
}

/// Binds the columns sealing writes (hint, session-token flag, key id,
/// nonce, ciphertext: five in all) to `$query`, in that order.
macro_rules! bind_sealed {
    ($query:expr, $values:expr) => {
        $query
            .bind(&$values.access_key_id_hint)
            .bind($values.has_session_token)
            .bind(&$values.sealed.key_id)
            .bind(&$values.sealed.nonce)
            .bind(&$values.sealed.ciphertext)
    };
}

impl Catalog {
    /// Stores a new secret under `id` (the id its values were sealed for);
    /// `AlreadyExists` if the owner has one of that name.
    pub async fn create_secret(
        &self,
        id: Uuid,
        spec: &SecretSpec,
        values: &SealedValues,
    ) -> DomainResult<Secret> {
        let sql = format!(
            "INSERT INTO secrets (id, owner_id, name, description, access_key_id_hint, \
             has_session_token, key_id, nonce, ciphertext, create_time, update_time, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) RETURNING {COLUMNS}"
        );
        let row = on_pool!(self, |pool| bind_sealed!(
            sqlx::query_as::<_, SecretRow>(&sql)
                .bind(id)
                .bind(spec.owner_id)
                .bind(&spec.name)
                .bind(&spec.description),
            values
        )
        .bind(now_micros())
        .bind(values.kind.as_str())
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, &format!("secret named {:?} for this owner", spec.name)))?;
        Secret::try_from(row)
    }

    /// Returns a secret's metadata if it is within `owner_scope`.
    pub async fn get_secret(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<Secret> {
        let sql = format!(
            "SELECT {COLUMNS} FROM secrets WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: SecretRow = fetch_scoped(&self.read_pool, &sql, id, owner_scope, "secret").await?;
        Secret::try_from(row)
    }

    /// Whether secret `id` exists, belongs to `owner` and holds `kind`.
    pub async fn secret_owned_by(
        &self,
        id: Uuid,
        owner: Uuid,
        kind: SecretKind,
    ) -> DomainResult<bool> {
        match self.get_secret(id, Some(owner)).await {
            Ok(secret) => Ok(secret.kind == kind),
            Err(DomainError::NotFound(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Lists secrets' metadata by id (oldest first), of one owner or (None) of everyone.
    pub async fn list_secrets(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
    ) -> DomainResult<(Vec<Secret>, String)> {
        let sql = format!(
            "SELECT {COLUMNS} FROM secrets WHERE ($1 IS NULL OR owner_id = $1) \
             AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, SecretRow>(&sql)
            .bind(owner_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "secrets"))?;
        page.finish_rows(rows, Secret::try_from, |secret| secret.id)
    }

    /// Replaces the sealed values of a secret within `owner_scope`.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
        values: &SealedValues,
    ) -> DomainResult<Secret> {
        let sql = format!(
            "UPDATE secrets SET access_key_id_hint = $3, has_session_token = $4, key_id = $5, \
             nonce = $6, ciphertext = $7, update_time = $8 \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2) RETURNING {COLUMNS}"
        );
        let row = on_pool!(self, |pool| bind_sealed!(
            sqlx::query_as::<_, SecretRow>(&sql)
                .bind(id)
                .bind(owner_scope),
            values
        )
        .bind(now_micros())
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "secret"))?
        .ok_or_else(|| DomainError::not_found("secret", id))?;
        Secret::try_from(row)
    }

    /// Deletes a secret within `owner_scope`. Refused with
    /// `FailedPrecondition` while a bucket names it.
    pub async fn delete_secret(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<()> {
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let found: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM secrets WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)",
            )
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "secret"))?;
            if found.is_none() {
                return Err(DomainError::not_found("secret", id));
            }
            let users: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM buckets WHERE s3_secret_id = $1 \
                 OR s3_maintenance_secret_id = $1 OR passphrase_secret_id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "secret"))?;
            if users > 0 {
                return Err(DomainError::FailedPrecondition(format!(
                    "secret {id} is still used by {users} buckets; point them at another secret first"
                )));
            }
            sqlx::query("DELETE FROM secrets WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "secret"))?;
            Ok(())
        }))
    }

    /// The owner and sealed values of secret `id`, for building a lease.
    /// Never reaches the API.
    pub async fn sealed_secret(&self, id: Uuid) -> DomainResult<(Uuid, Sealed)> {
        self.sealed_secret_of(id, SecretKind::S3).await
    }

    /// The owner and sealed values of secret `id` if it holds `kind`
    /// (else not found), for building a lease. Never reaches the API.
    pub async fn sealed_secret_of(
        &self,
        id: Uuid,
        kind: SecretKind,
    ) -> DomainResult<(Uuid, Sealed)> {
        let row = on_pool!(self, |pool| sqlx::query_as::<_, SealedRow>(
            "SELECT id, owner_id, key_id, nonce, ciphertext, kind FROM secrets \
             WHERE id = $1 AND kind = $2"
        )
        .bind(id)
        .bind(kind.as_str())
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "secret"))?
        .ok_or_else(|| DomainError::not_found("secret", id))?;
        Ok((
            row.owner_id,
            Sealed {
                key_id: row.key_id,
                nonce: row.nonce,
                ciphertext: row.ciphertext,
            },
        ))
    }

    /// Seals again under the primary key every secret that a previous key
    /// of `keyring` sealed (after the secrets key was replaced), so the old
    /// key can be retired. Each row is replaced only if no one resealed or
    /// rotated it meanwhile. Rows no key of the keyring opens are left as
    /// they are and reported in the log. Returns how many were resealed.
    pub async fn reseal_secrets(&self, keyring: &Keyring) -> DomainResult<usize> {
        let Some(primary) = keyring.primary_id() else {
            return Ok(0);
        };
        let rows = on_pool!(self, |pool| {
            sqlx::query_as::<_, SealedRow>(
            "SELECT id, owner_id, key_id, nonce, ciphertext, kind FROM secrets WHERE key_id <> $1"
        )
        .bind(primary)
        .fetch_all(pool)
        .await
        })
        .map_err(|e| from_sqlx(e, "secrets"))?;
        let mut resealed = 0;
        for row in rows {
            let old = Sealed {
                key_id: row.key_id,
                nonce: row.nonce,
                ciphertext: row.ciphertext,
            };
            let resealed_row = match SecretKind::parse(&row.kind)? {
                SecretKind::S3 => keyring
                    .open(row.id, row.owner_id, &old)
                    .and_then(|values| keyring.seal(row.id, row.owner_id, &values)),
                SecretKind::Passphrase => keyring
                    .open_passphrase(row.id, row.owner_id, &old)
                    .and_then(|passphrase| {
                        keyring.seal_passphrase(row.id, row.owner_id, &passphrase)
                    }),
            };
            let new = match resealed_row {
                Ok(new) => new,
                Err(error) => {
                    tracing::warn!(secret = %row.id, %error, "secret not resealed");
                    continue;
                }
            };
            let changed = self
                .replace_sealed(&SealedColumns::SECRETS, row.id, &old, &new)
                .await?;
            resealed += usize::from(changed);
        }
        Ok(resealed)
    }

    /// Replaces row `id`'s sealed value `old` with `new` in the columns
    /// `columns` name, unless the row no longer holds `old` (someone
    /// resealed or rotated it meanwhile); returns whether it did.
    pub(crate) async fn replace_sealed(
        &self,
        columns: &SealedColumns,
        id: Uuid,
        old: &Sealed,
        new: &Sealed,
    ) -> DomainResult<bool> {
        let SealedColumns {
            table,
            key_id,
            nonce,
            ciphertext,
        } = columns;
        let sql = format!(
            "UPDATE {table} SET {key_id} = $2, {nonce} = $3, {ciphertext} = $4 \
             WHERE id = $1 AND {key_id} = $5 AND {nonce} = $6"
        );
        let changed = on_pool!(self, |pool| sqlx::query(&sql)
            .bind(id)
            .bind(&new.key_id)
            .bind(&new.nonce)
            .bind(&new.ciphertext)
            .bind(&old.key_id)
            .bind(&old.nonce)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, table))?;
        Ok(changed > 0)
    }
}

/// Where a table keeps a sealed value: the table and its three columns.
pub(crate) struct SealedColumns {
    table: &'static str,
    key_id: &'static str,
    nonce: &'static str,
    ciphertext: &'static str,
}

impl SealedColumns {
    /// A secret's values.
    pub(crate) const SECRETS: SealedColumns = SealedColumns {
        table: "secrets",
        key_id: "key_id",
        nonce: "nonce",
        ciphertext: "ciphertext",
    };
    /// A repository's catalog key.
    pub(crate) const CATALOG_KEYS: SealedColumns = SealedColumns {
        table: "repositories",
        key_id: "catalog_key_id",
        nonce: "catalog_key_nonce",
        ciphertext: "catalog_key_sealed",
    };
    /// A notification channel's values.
    pub(crate) const CHANNELS: SealedColumns = SealedColumns {
        table: "notification_channels",
        key_id: "key_id",
        nonce: "nonce",
        ciphertext: "ciphertext",
    };
}
