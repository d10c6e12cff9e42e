//! Catalog queries for configurations. Lists are ordered by key and resume
//! after the last key of the previous page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{new_id, now_micros, on_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::configuration::{Configuration, ConfigurationPatch, NewConfiguration};

const COLUMNS: &str = "id, key, value, description, create_time, update_time";

/// Every configured `(key, value)`, as read recently: the lease settings are
/// read at every grant and heartbeat, and need not cost a query each. A
/// write through this catalog makes the next read go to the database, so a
/// change made here takes effect at once; one made through another replica
/// within the age the reader allows.
#[derive(Debug, Default)]
pub(crate) struct ConfigurationCache {
    /// Bumped after every configuration write through this catalog.
    generation: AtomicU64,
    read: Mutex<Option<CachedRead>>,
}

#[derive(Debug)]
struct CachedRead {
    at: Instant,
    /// The generation when the read began: a write that committed while it
    /// ran makes it stale.
    generation: u64,
    values: Vec<(String, String)>,
}

impl ConfigurationCache {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh(&self, max_age: Duration) -> Option<Vec<(String, String)>> {
        let generation = self.generation.load(Ordering::Acquire);
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.as_ref()
            .filter(|read| read.generation == generation && read.at.elapsed() <= max_age)
            .map(|read| read.values.clone())
    }

    fn store(&self, generation: u64, values: &[(String, String)]) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        *read = Some(CachedRead {
            at: Instant::now(),
            generation,
            values: values.to_vec(),
        });
    }
}

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
        .inspect(|_| self.configuration_cache.changed())
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
        .inspect(|_| self.configuration_cache.changed())
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
        self.configuration_cache.changed();
        Ok(())
    }

    /// The configured values of `keys` (those set), read at most `max_age`
    /// ago or since the last configuration write through this catalog.
    pub async fn recent_configuration_values(
        &self,
        keys: &[&str],
        max_age: Duration,
    ) -> DomainResult<Vec<(String, String)>> {
        let cache = &self.configuration_cache;
        let values = match cache.fresh(max_age) {
            Some(values) => values,
            None => {
                let generation = cache.generation.load(Ordering::Acquire);
                let rows: Vec<(String, String)> = on_pool!(self, |pool| sqlx::query_as(
                    "SELECT key, value FROM configurations ORDER BY key"
                )
                .fetch_all(pool)
                .await)
                .map_err(|e| from_sqlx(e, "configuration"))?;
                cache.store(generation, &rows);
                rows
            }
        };
        Ok(values
            .into_iter()
            .filter(|(key, _)| keys.contains(&key.as_str()))
            .collect())
    }
}
