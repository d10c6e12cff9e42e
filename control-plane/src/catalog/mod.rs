//! The catalog: every piece of state the control plane owns, on PostgreSQL
//! (production, shared by replicas) or on an embedded SQLite file (single node).
//!
//! Both backends run the same SQL wherever the dialects agree; the `on_pool!`
//! macro expands one body once per backend, so a query is written once and
//! type-checked against both drivers. Where the dialects differ (leasing, the
//! database clock) the module says so next to the query. `in_transaction!`
//! is the one way to open a transaction (commit on `Ok`, roll back on
//! `Err`), `error.rs` the one place database errors become domain errors, and
//! the longer static statements live in `sql/`, one file each.
//!
//! Where things are: `snapshots/` is the snapshot write path (staging a
//! worker's batches, planning, applying, completing, removing) and its
//! queries; `leases.rs` the lease state machine; `workers.rs` worker
//! registration; `objects.rs` reads objects and versions; the other files
//! are one resource each.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use error::from_sqlx;

pub mod audit;
pub mod buckets;
pub mod commands;
pub mod configurations;
pub mod copies;
pub(crate) mod error;
pub mod exclusions;
pub mod grants;
pub mod jobs;
pub mod key_slots;
pub mod leases;
pub mod limits;
pub mod metadata;
pub mod monitoring;
pub mod notifications;
pub mod object_locks;
pub mod objects;
pub(crate) mod placeholders;
pub mod queue;
pub mod repositories;
pub mod retention;
mod run_events;
pub mod runs;
pub mod scheduler;
pub mod secrets;
pub mod snapshots;
pub mod tags;
#[cfg(feature = "test-util")]
mod test_support;
pub mod users;
pub mod waiting;
pub mod workers;

/// The connection pool of one backend.
#[derive(Clone, Debug)]
pub enum Pool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// Embedded SQLite.
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool in `$value` (a
/// `&Pool`). The body is compiled once per backend. With `$dialect` too, it
/// is bound to the backend's [`Dialect`], for bodies whose SQL text must
/// differ. Used through [`on_pool!`] and [`on_read_pool!`].
///
/// Call sites write the body as a closure, `|pool| body` or `|pool, dialect|
/// body`. The closure is only surface syntax (the body is pasted into each
/// arm, so it may `.await` and `?`), chosen so that rustfmt sees an ordinary
/// expression and formats it.
macro_rules! match_pool {
    ($value:expr, |$pool:ident| $body:expr) => {
        match $value {
            $crate::catalog::Pool::Postgres($pool) => $body,
            $crate::catalog::Pool::Sqlite($pool) => $body,
        }
    };
    ($value:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match $value {
            $crate::catalog::Pool::Postgres($pool) => {
                let $dialect = $crate::catalog::Dialect::Postgres;
                $body
            }
            $crate::catalog::Pool::Sqlite($pool) => {
                let $dialect = $crate::catalog::Dialect::Sqlite;
                $body
            }
        }
    };
}
pub(crate) use match_pool;

/// [`match_pool!`] on the catalog's pool (the writing connection on SQLite).
/// Every operation is timed, under the catalog module that runs it
/// (`coffer_catalog_operation_duration_seconds`).
macro_rules! on_pool {
    ($catalog:expr, |$pool:ident| $body:expr) => {{
        let _timer = $crate::monitoring::CatalogTimer::start(module_path!());
        $crate::catalog::match_pool!(&$catalog.pool, |$pool| $body)
    }};
    ($catalog:expr, |$pool:ident, $dialect:ident| $body:expr) => {{
        let _timer = $crate::monitoring::CatalogTimer::start(module_path!());
        $crate::catalog::match_pool!(&$catalog.pool, |$pool, $dialect| $body)
    }};
}
pub(crate) use on_pool;

/// [`on_pool!`] for statements that only read: on SQLite they run on the
/// read-only connections, which WAL lets proceed while the one writing
/// connection is inside a long transaction (a million-file snapshot apply
/// holds it for seconds). On PostgreSQL it is the same pool.
macro_rules! on_read_pool {
    ($catalog:expr, |$pool:ident| $body:expr) => {{
        let _timer = $crate::monitoring::CatalogTimer::start(module_path!());
        $crate::catalog::match_pool!(&$catalog.read_pool, |$pool| $body)
    }};
}
pub(crate) use on_read_pool;

/// Runs `$body` inside a transaction of `$pool` (a concrete pool, as
/// [`on_pool!`] binds it), with `$tx` bound to the transaction, and
/// evaluates to the body's `DomainResult`: the transaction commits when the
/// body is `Ok` and rolls back when it is `Err`. Inside the body, `return`
/// and `?` leave the body, not the enclosing function. Begin, commit and
/// their error mapping are written here once.
macro_rules! in_transaction {
    ($pool:expr, |$tx:ident| $body:expr) => {
        async {
            let mut $tx = $pool
                .begin()
                .await
                .map_err(|e| $crate::catalog::error::from_sqlx(e, "catalog"))?;
            let result: $crate::error::DomainResult<_> = async { $body }.await;
            match result {
                Ok(value) => {
                    $tx.commit()
                        .await
                        .map_err(|e| $crate::catalog::error::from_sqlx(e, "catalog"))?;
                    Ok(value)
                }
                Err(error) => {
                    if let Err(rollback) = $tx.rollback().await {
                        tracing::debug!(%rollback, "rollback failed; the connection discards the transaction");
                    }
                    Err(error)
                }
            }
        }
        .await
    };
}
pub(crate) use in_transaction;

/// How many rows of `$table` have `$column` equal to `$id`, inside the open
/// transaction `$tx` of either backend: whether a resource about to be
/// deleted is still referred to. Evaluates to the count (an `i64`); a
/// database error returns from the enclosing body.
macro_rules! count_references_in_tx {
    ($tx:ident, $table:expr, $column:expr, $id:expr) => {{
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {} = $1", $table, $column);
        sqlx::query_scalar::<_, i64>(&sql)
            .bind($id)
            .fetch_one(&mut *$tx)
            .await
            .map_err(|e| $crate::catalog::error::from_sqlx(e, $table))?
    }};
}
pub(crate) use count_references_in_tx;

/// The SQL text conventions of a backend, for statements whose text differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// `sql`, written with `$1`, `$2`, … placeholders, as this backend should
    /// run it.
    ///
    /// SQLite gets anonymous `?` placeholders when every `$n` appears once and
    /// in order. When binding, sqlx asks SQLite for the name of each numbered
    /// parameter, which SQLite answers by scanning its list of names, so a
    /// multi-row insert of 7,000 parameters costs some 7,000² steps per
    /// execution (three quarters of a 100,000-file snapshot commit went
    /// there); anonymous parameters have no names to scan. Other statements
    /// are returned unchanged.
    pub(crate) fn adapt(self, sql: &str) -> std::borrow::Cow<'_, str> {
        if self == Dialect::Postgres {
            return sql.into();
        }
        let bytes = sql.as_bytes();
        let mut out = String::with_capacity(sql.len());
        let mut expected = 1usize;
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                i += 1;
                continue;
            }
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                return sql.into();
            }
            let number: usize = sql[i + 1..i + 1 + digits].parse().unwrap_or(0);
            if number != expected {
                return sql.into();
            }
            expected += 1;
            out.push_str(&sql[copied..i]);
            out.push('?');
            i += 1 + digits;
            copied = i;
        }
        out.push_str(&sql[copied..]);
        out.into()
    }
}

/// Handle to the catalog; cheap to clone.
#[derive(Clone, Debug)]
pub struct Catalog {
    pool: Pool,
    /// Where reads that need not see an open transaction go (see
    /// [`on_read_pool!`]); `pool` itself on PostgreSQL.
    read_pool: Pool,
    /// Serializes this process's snapshot commits per repository and job.
    commit_locks: std::sync::Arc<snapshots::CommitLocks>,
    /// The configuration as read recently (the lease settings' hot path).
    configuration_cache: std::sync::Arc<configurations::ConfigurationCache>,
    /// Announces the id of every run whose row changed, after the change is
    /// committed (see [`Catalog::subscribe_runs`]).
    run_events: run_events::RunEvents,
    /// This catalog handle's identity among the replicas sharing the
    /// database: the sender named in its run notifications (PostgreSQL).
    replica: Uuid,
}

/// Which database a catalog runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Catalog {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and applies the
    /// embedded migrations. Safe when several replicas start at once: on
    /// PostgreSQL the migrator holds an advisory lock while it works.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let catalog = Self::connect_without_migrating(url).await?;
        catalog.migrate().await?;
        Ok(catalog)
    }

    /// Connects without touching the schema.
    pub async fn connect_without_migrating(url: &str) -> anyhow::Result<Self> {
        let replica = Uuid::new_v4();
        let (pool, read_pool) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                // Read by the run-notification trigger (migration 0013), so
                // other replicas know whose change they hear.
                let options = PgConnectOptions::from_str(url)?
                    .options([(run_events::REPLICA_SETTING, replica.to_string())]);
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                (Pool::Postgres(pool.clone()), Pool::Postgres(pool))
            } else if url.starts_with("sqlite:") {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
                    // 64 MiB of page cache (the default is 2 MiB): the indexes a
                    // snapshot commit walks then stay in memory.
                    .pragma("cache_size", "-65536");
                // One writing connection: SQLite has one writer anyway, and a
                // single connection never meets SQLITE_BUSY between our own
                // transactions.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options.clone())
                    .await?;
                let readers = if url.contains(":memory:") || url.contains("mode=memory") {
                    // Another connection would open another database.
                    pool.clone()
                } else {
                    // Readers see the last committed state while the writer
                    // works. Opened on first use, after the migrations made
                    // the schema.
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(30))
                        .connect_lazy_with(
                            options
                                .create_if_missing(false)
                                .read_only(true)
                                .pragma("cache_size", "-16384"),
                        )
                };
                (Pool::Sqlite(pool), Pool::Sqlite(readers))
            } else {
                anyhow::bail!("unsupported database URL (expected postgres:// or sqlite:)");
            };
        Ok(Catalog {
            pool,
            read_pool,
            commit_locks: Default::default(),
            configuration_cache: Default::default(),
            run_events: Default::default(),
            replica,
        })
    }

    /// Ids of runs as their rows change: created, leased, progressed,
    /// cancelled, finished, requeued or deleted. Every catalog method that
    /// changes a run announces it here once its transaction has committed,
    /// so callers never have to remember to.
    pub fn subscribe_runs(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.run_events.0.subscribe()
    }

    /// Announces that run `id` changed (ignored when nobody listens). Called
    /// by catalog methods after their change is committed.
    pub(crate) fn publish_run(&self, id: Uuid) {
        let _ = self.run_events.0.send(id);
    }

    /// Applies the migrations of this backend that are not applied yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
            Pool::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match &self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> DomainResult<()> {
        on_read_pool!(self, |pool| {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map_err(|e| from_sqlx(e, "catalog"))?;
        });
        Ok(())
    }

    /// The database's clock (PostgreSQL's `now()`; the process clock for SQLite,
    /// which runs in this process).
    pub async fn now(&self) -> DomainResult<DateTime<Utc>> {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar::<_, DateTime<Utc>>("SELECT now()")
                .fetch_one(pool)
                .await
                .map_err(|e| from_sqlx(e, "catalog clock")),
            Pool::Sqlite(_) => Ok(Utc::now()),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await);
        on_read_pool!(self, |pool| pool.close().await);
    }
}

/// The row `sql` selects by id (`$1`) within an owner scope (`$2`, none for
/// every owner) on `pool`; `NotFound` as `kind` when there is none.
pub(crate) async fn fetch_scoped<R>(
    pool: &Pool,
    sql: &str,
    id: Uuid,
    owner_scope: Option<Uuid>,
    kind: &str,
) -> DomainResult<R>
where
    R: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    match_pool!(pool, |pool| sqlx::query_as::<_, R>(sql)
        .bind(id)
        .bind(owner_scope)
        .fetch_optional(pool)
        .await)
    .map_err(|e| from_sqlx(e, kind))?
    .ok_or_else(|| DomainError::not_found(kind, id))
}

/// A new time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// The current time at microsecond precision, which both backends store exactly.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Page size and position of a List call. Lists are ordered by id (UUIDv7, so
/// by creation time) and resume after the last id of the previous page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub size: i64,
    /// Return rows after this id (in the list's order).
    pub after: Option<Uuid>,
}

impl Page {
    /// Default page size.
    pub const DEFAULT_SIZE: i64 = 50;
    /// Largest page size.
    pub const MAX_SIZE: i64 = 1000;

    /// Validates `page_size` and `page_token` as given by a caller.
    pub fn parse(page_size: i32, page_token: &str) -> DomainResult<Self> {
        let size = match page_size {
            0 => Self::DEFAULT_SIZE,
            n if n < 0 => return Err(DomainError::invalid("page_size", "must not be negative")),
            n => i64::from(n).min(Self::MAX_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(page_token).map_err(|_| {
                DomainError::invalid("page_token", "not a token from a previous response")
            })?)
        };
        Ok(Page { size, after })
    }

    /// The row limit to query: one more than the page, to learn whether another page follows.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// Cuts the extra row off and returns the rows with the next page token.
    pub fn finish<T>(&self, mut rows: Vec<T>, id_of: impl Fn(&T) -> Uuid) -> (Vec<T>, String) {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() > size {
            rows.truncate(size);
            let token = rows
                .last()
                .map(|row| id_of(row).to_string())
                .unwrap_or_default();
            (rows, token)
        } else {
            (rows, String::new())
        }
    }

    /// [`Page::finish`] for rows that convert into what the list returns.
    pub fn finish_rows<R, T>(
        &self,
        rows: Vec<R>,
        convert: impl Fn(R) -> DomainResult<T>,
        id_of: impl Fn(&T) -> Uuid,
    ) -> DomainResult<(Vec<T>, String)> {
        let items = rows.into_iter().map(convert).collect::<DomainResult<_>>()?;
        Ok(self.finish(items, id_of))
    }
}

/// Decodes a JSON text column, treating corruption as an internal error.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> DomainResult<T> {
    serde_json::from_str(text)
        .map_err(|e| DomainError::Internal(format!("column {column} holds bad JSON: {e}")))
}

/// Encodes a value for a JSON text column.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("catalog JSON values are plain data and always serialize")
}

#[cfg(test)]
mod contract_tests;

#[cfg(test)]
mod tests {
    use super::{Catalog, Dialect, Page, Pool};
    use std::time::Duration;

    /// A long snapshot apply holds SQLite's one writing connection in a
    /// transaction; health checks, token checks and listings must still
    /// answer, from the last committed state.
    #[tokio::test]
    async fn sqlite_reads_answer_while_the_writer_is_inside_a_transaction() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let catalog = Catalog::connect(&url).await.expect("catalog");
        let Pool::Sqlite(writer) = &catalog.pool else {
            unreachable!("a sqlite URL gives a sqlite pool")
        };
        let mut tx = writer.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO users (id, username, email, admin, create_time, update_time) \
             VALUES (x'01', 'held', 'held@example.com', TRUE, '2026-01-01', '2026-01-01')",
        )
        .execute(&mut *tx)
        .await
        .expect("insert inside the transaction");

        tokio::time::timeout(Duration::from_secs(5), catalog.ping())
            .await
            .expect("ping waited for the writer")
            .expect("ping answers");
        let (buckets, _) = tokio::time::timeout(
            Duration::from_secs(5),
            catalog.list_buckets(Page::parse(0, "").expect("page"), None, ""),
        )
        .await
        .expect("a listing waited for the writer")
        .expect("listing answers");
        assert!(buckets.is_empty());
        let admins = tokio::time::timeout(Duration::from_secs(5), async {
            on_read_pool!(catalog, |pool| sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM users WHERE username = 'held'"
            )
            .fetch_one(pool)
            .await)
        })
        .await
        .expect("a read waited for the writer")
        .expect("count");
        assert_eq!(admins, 0, "a reader saw an uncommitted row");
        tx.rollback().await.expect("rollback");
    }

    #[test]
    fn sqlite_gets_anonymous_placeholders_only_when_they_are_in_order() {
        let sql = "INSERT INTO t VALUES ($1, $2), ($3, $4) RETURNING x";
        assert_eq!(Dialect::Postgres.adapt(sql), sql);
        assert_eq!(
            Dialect::Sqlite.adapt(sql),
            "INSERT INTO t VALUES (?, ?), (?, ?) RETURNING x"
        );
        for unchanged in [
            "SELECT * FROM t WHERE a = $1 OR b = $1",
            "SELECT * FROM t WHERE a = $2 AND b = $1",
            "SELECT $1, $",
        ] {
            assert_eq!(Dialect::Sqlite.adapt(unchanged), unchanged);
        }
        assert_eq!(Dialect::Sqlite.adapt("SELECT 1"), "SELECT 1");
    }
}
