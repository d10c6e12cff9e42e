//! Catalog queries for configurations. Lists are ordered by key and resume
//! after the last key of the previous page.

use uuid::Uuid;

use super::{new_id, now_micros, on_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::configuration::{Configuration, ConfigurationPatch, NewConfiguration};

const COLUMNS: &str = "id, key, value, description, create_time, update_time";

impl Catalog {
    /// Creates an entry; `AlreadyExists` if the key is set.
    pub async fn create_configuration(
        &self,
        new: &NewConfiguration,
    ) -> DomainResult<Configuration> {
        let sql = format!(
            "INSERT INTO configurations (id, key, value, description, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| sqlx::query_as::<_, Configuration>(&sql)
            .bind(new_id())
            .bind(&new.key)
            .bind(&new.value)
            .bind(&new.description)
            .bind(now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, &format!("configuration {:?}", new.key)))
    }

    /// Returns an entry by id.
    pub async fn get_configuration(&self, id: Uuid) -> DomainResult<Configuration> {
        let sql = format!("SELECT {COLUMNS} FROM configurations WHERE id = $1");
        on_pool!(self, |pool| sqlx::query_as::<_, Configuration>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "configuration"))?
        .ok_or_else(|| DomainError::not_found("configuration", id))
    }

    /// Returns an entry by key.
    pub async fn get_configuration_by_key(&self, key: &str) -> DomainResult<Configuration> {
        let sql = format!("SELECT {COLUMNS} FROM configurations WHERE key = $1");
        on_pool!(self, |pool| sqlx::query_as::<_, Configuration>(&sql)
            .bind(key)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "configuration"))?
        .ok_or_else(|| DomainError::NotFound(format!("configuration {key:?}")))
    }

    /// The value of a key, or `None` when it is not set (the built-in default applies).
    pub async fn configuration_value(&self, key: &str) -> DomainResult<Option<String>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT value FROM configurations WHERE key = $1"
        )
        .bind(key)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "configuration"))
    }

    /// Lists entries ordered by key, after `after_key`, with keys starting with
    /// `key_prefix`. Returns the entries and whether another page follows.
    pub async fn list_configurations(
        &self,
        page: Page,
        after_key: Option<&str>,
        key_prefix: &str,
    ) -> DomainResult<(Vec<Configuration>, bool)> {
        let sql = format!(
            "SELECT {COLUMNS} FROM configurations \
             WHERE ($1 IS NULL OR key > $1) AND substr(key, 1, length($2)) = $2 \
             ORDER BY key LIMIT $3"
        );
        let mut rows = on_pool!(self, |pool| sqlx::query_as::<_, Configuration>(&sql)
            .bind(after_key)
            .bind(key_prefix)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "configurations"))?;
        let size = usize::try_from(page.size).unwrap_or(usize::MAX);
        let more = rows.len() > size;
        rows.truncate(size);
        Ok((rows, more))
    }

    /// Applies a patch to an entry.
    pub async fn update_configuration(
        &self,
        id: Uuid,
        patch: &ConfigurationPatch,
    ) -> DomainResult<Configuration> {
        let sql = format!(
            "UPDATE configurations SET value = COALESCE($2, value), \
             description = COALESCE($3, description), update_time = $4 \
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        on_pool!(self, |pool| sqlx::query_as::<_, Configuration>(&sql)
            .bind(id)
            .bind(&patch.value)
            .bind(&patch.description)
            .bind(now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "configuration"))?
        .ok_or_else(|| DomainError::not_found("configuration", id))
    }

    /// Deletes an entry.
    pub async fn delete_configuration(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM configurations WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "configuration"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("configuration", id));
        }
        Ok(())
    }
}
