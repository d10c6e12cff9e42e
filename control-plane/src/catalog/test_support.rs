//! Catalog methods that only tests call: set-up outside the typed API and
//! counts for white-box assertions. Compiled with the `test-util` feature only.

use uuid::Uuid;

use super::error::from_sqlx;
use super::{new_id, now_micros, on_pool, on_read_pool, Catalog};
use crate::error::DomainResult;

impl Catalog {
    /// Runs one statement outside the typed API (test set-up: creating a database per test).
    pub async fn execute_raw(&self, sql: &str) -> DomainResult<()> {
        on_pool!(self, |pool| sqlx::query(sql)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(|e| from_sqlx(e, "statement"))
    }

    /// Transactions committed in this catalog's database so far, as
    /// PostgreSQL's statistics count them (flushed by each connection within
    /// about ten seconds); 0 on SQLite. For benchmarks of catalog load.
    pub async fn committed_transactions(&self) -> DomainResult<i64> {
        let super::Pool::Postgres(pool) = &self.pool else {
            return Ok(0);
        };
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .map_err(|e| from_sqlx(e, "database statistics"))
    }

    /// Counts all object versions, for tests asserting that unchanged files
    /// write nothing.
    pub async fn count_object_versions(&self) -> DomainResult<i64> {
        on_read_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM object_versions"
        )
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "object versions"))
    }

    /// Inserts a succeeded run without a spec, for tests that need snapshots
    /// before the run machinery exists. Returns its id (a fresh UUIDv7).
    pub async fn insert_test_run(
        &self,
        owner_id: Uuid,
        job_id: Option<Uuid>,
        bucket_id: Option<Uuid>,
    ) -> DomainResult<Uuid> {
        let id = new_id();
        let now = now_micros();
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO runs (id, owner_id, job_id, kind, state, spec, target_bucket_id, max_attempts, \
             not_before_time, create_time, update_time) \
             VALUES ($1, $2, $3, 'backup', 'succeeded', '{}', $4, 1, $5, $5, $5)")
            .bind(id)
            .bind(owner_id)
            .bind(job_id)
            .bind(bucket_id)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "run"))?;
        Ok(id)
    }
}
