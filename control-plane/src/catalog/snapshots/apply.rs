//! Applying a snapshot plan: in one transaction, a few set-based statements
//! copy the plan rows into `objects` and `object_versions`, if the
//! repository is still at the generation the plan read.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::{SnapshotScope, PLAN_ATTEMPTS};
use crate::catalog::{in_transaction, now_micros, on_pool, Catalog, Dialect, Pool};
use crate::error::{DomainError, DomainResult};
use crate::model::object::{SnapshotCommit, SnapshotStats};

/// Inserts a plan's new objects (`$1` the plan, `$7` its deletion markers).
pub(crate) const INSERT_OBJECTS: &str = include_str!("../sql/snapshots/insert_objects.sql");

/// Inserts a plan's new versions (`$1` the plan, `$4` its deletion markers).
pub(crate) const INSERT_VERSIONS: &str = include_str!("../sql/snapshots/insert_versions.sql");

/// Counts a plan's unchanged and deleted paths.
pub(crate) const COUNT_PLAN: &str = include_str!("../sql/snapshots/count_plan.sql");

/// A snapshot plan ready to apply: its key, where it goes, and the
/// repository generation it was made against.
pub(crate) struct PlannedCommit<'a> {
    pub(crate) key: &'a str,
    pub(crate) scope: &'a SnapshotScope,
    pub(crate) generation: i64,
}

impl Catalog {
    /// Records a new snapshot of a repository, writing only what changed: an
    /// entry that is the same version as its current one
    /// ([`crate::model::object::FileAttributes::same_version`]: kind, size,
    /// mode, owner, mtime, content, link target) writes nothing; a changed entry closes its
    /// current version at `run_id` and gets a new version; a new path gets
    /// an object and a version; a path missing from the snapshot has its
    /// current version closed and a deletion marker added. The snapshot is
    /// planned a chunk at a time and applied in one transaction (see
    /// `catalog::snapshots`). Committing the same snapshot again writes nothing.
    pub async fn apply_snapshot(&self, snapshot: &SnapshotCommit) -> DomainResult<SnapshotStats> {
        let scope = SnapshotScope::of_commit(snapshot);
        let _serialized = self.lock_commits(&scope).await;
        for attempt in 0..PLAN_ATTEMPTS {
            if attempt > 0 {
                self.stale_plan_pause().await;
            }
            let (key, generation) = self.plan_commit(snapshot).await?;
            let now = now_micros();
            // A stale plan wrote nothing, so committing it changes nothing.
            let applied = on_pool!(self, |pool, dialect| in_transaction!(pool, |tx| {
                apply_plan_in_tx!(tx, dialect, &key, &scope, generation, now)
            }));
            self.discard_plans(snapshot.run_id, 0).await?;
            if let Some(stats) = applied? {
                self.refresh_statistics(&stats).await;
                return Ok(stats);
            }
        }
        Err(DomainError::Aborted(format!(
            "the repository {} kept changing while snapshot {} was committed",
            snapshot.repository_id, snapshot.run_id
        )))
    }

    /// Waits for this process's lock on committing to the scope's
    /// repository and job.
    pub(crate) async fn lock_commits(
        &self,
        scope: &SnapshotScope,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .commit_locks
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                locks
                    .entry((scope.repository_id, scope.job_key()))
                    .or_default(),
            )
        };
        lock.lock_owned().await
    }

    /// Waits a little before planning again after another replica's commit
    /// made a plan stale, so that two replicas do not keep colliding.
    pub(crate) async fn stale_plan_pause(&self) {
        let millis = rand::thread_rng().gen_range(10..200);
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }

    /// After a commit that wrote many rows, refreshes PostgreSQL's
    /// statistics of the tables it wrote, so that the next plan lookups use
    /// the indexes instead of scanning a table the planner still believes
    /// empty. (SQLite plans without statistics and prefers the indexes.)
    pub(crate) async fn refresh_statistics(&self, stats: &SnapshotStats) {
        const LARGE_COMMIT: u64 = 10_000;
        if stats.new_objects + stats.new_versions < LARGE_COMMIT {
            return;
        }
        if let Pool::Postgres(pool) = &self.pool {
            if let Err(error) = sqlx::query("ANALYZE objects, object_versions")
                .execute(pool)
                .await
            {
                tracing::warn!(%error, "could not refresh the catalog's statistics");
            }
        }
    }
}

/// The statement that closes the current versions of the objects a plan
/// (`$2`, with its deletion markers `$3`) changes, as of run `$1`.
///
/// SQLite is told to find the versions by object: left to itself it picks
/// the `last_run_id` index for `IS NULL` and visits every current version of
/// the catalog, which made a no-change incremental of one job cost as much as
/// the largest repository the catalog holds.
pub(crate) fn close_versions_sql(dialect: Dialect) -> String {
    let hint = match dialect {
        Dialect::Sqlite => " INDEXED BY object_versions_object",
        Dialect::Postgres => "",
    };
    format!(
        "UPDATE object_versions{hint} SET last_run_id = $1 WHERE last_run_id IS NULL AND object_id IN \
         (SELECT object_id FROM snapshot_commit_rows WHERE commit_key IN ($2, $3) AND close_current)"
    )
}

/// Claims the repository generation `$generation` for a plan inside an open
/// transaction `$tx` of either backend: bumps the `(repository id, job)`
/// counter if it still reads `$generation`. Evaluates to `DomainResult<bool>`:
/// false when the repository moved on since the plan was made (nothing was
/// written; plan again).
macro_rules! claim_generation_in_tx {
    ($tx:ident, $scope:expr, $generation:expr) => {{
        async {
            let scope: &$crate::catalog::snapshots::SnapshotScope = $scope;
            let bumped = sqlx::query(
                "UPDATE repository_commits SET generation = generation + 1 \
                 WHERE repository_id = $1 AND job_key = $2 AND generation = $3",
            )
            .bind(scope.repository_id)
            .bind(scope.job_key())
            .bind($generation)
            .execute(&mut *$tx)
            .await
            .map_err(|e| $crate::catalog::error::from_sqlx(e, "repository commit"))?
            .rows_affected();
            Ok::<_, $crate::error::DomainError>(bumped > 0)
        }
        .await
    }};
}
pub(crate) use claim_generation_in_tx;

/// Copies the plan `$key` (with its deletion markers) into `objects` and
/// `object_versions` inside an open transaction `$tx` of either backend,
/// whose generation claim succeeded. Evaluates to
/// `DomainResult<SnapshotStats>`.
macro_rules! copy_plan_in_tx {
    ($tx:ident, $dialect:expr, $key:expr, $scope:expr, $now:expr) => {{
        async {
            let scope: &$crate::catalog::snapshots::SnapshotScope = $scope;
            let key: &str = $key;
            let markers = $crate::catalog::snapshots::deletions_key(key);
            let mut stats = $crate::model::object::SnapshotStats::default();
            stats.new_objects = sqlx::query($crate::catalog::snapshots::apply::INSERT_OBJECTS)
                .bind(key)
                .bind(scope.owner_id)
                .bind(scope.bucket_id)
                .bind(scope.repository_id)
                .bind(scope.job_id)
                .bind($now)
                .bind(&markers)
                .execute(&mut *$tx)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| {
                    $crate::catalog::snapshots::duplicate_path($crate::catalog::error::from_sqlx(
                        e, "object",
                    ))
                })?;
            // Closed before the new versions exist, which are open too.
            stats.closed_versions = sqlx::query(
                &$crate::catalog::snapshots::apply::close_versions_sql($dialect),
            )
            .bind(scope.run_id)
            .bind(key)
            .bind(&markers)
            .execute(&mut *$tx)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| $crate::catalog::error::from_sqlx(e, "object versions"))?;
            stats.new_versions = sqlx::query($crate::catalog::snapshots::apply::INSERT_VERSIONS)
                .bind(key)
                .bind(scope.run_id)
                .bind($now)
                .bind(&markers)
                .execute(&mut *$tx)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| $crate::catalog::error::from_sqlx(e, "object version"))?;
            let (unchanged, deleted): (i64, i64) =
                sqlx::query_as($crate::catalog::snapshots::apply::COUNT_PLAN)
                    .bind(key)
                    .bind(&markers)
                    .fetch_one(&mut *$tx)
                    .await
                    .map_err(|e| $crate::catalog::error::from_sqlx(e, "snapshot commit rows"))?;
            stats.unchanged = u64::try_from(unchanged).unwrap_or(0);
            stats.deleted = u64::try_from(deleted).unwrap_or(0);
            Ok::<_, $crate::error::DomainError>(stats)
        }
        .await
    }};
}
pub(crate) use copy_plan_in_tx;

/// Applies the plan `$key`, made against `$generation`, inside an open
/// transaction `$tx` of either backend. Evaluates to
/// `DomainResult<Option<SnapshotStats>>`: `None` when the repository moved
/// on since the plan was made (nothing was written; plan again).
macro_rules! apply_plan_in_tx {
    ($tx:ident, $dialect:expr, $key:expr, $scope:expr, $generation:expr, $now:expr) => {{
        async {
            if !$crate::catalog::snapshots::apply::claim_generation_in_tx!(
                $tx,
                $scope,
                $generation
            )? {
                return Ok::<_, $crate::error::DomainError>(None);
            }
            let stats = $crate::catalog::snapshots::apply::copy_plan_in_tx!(
                $tx, $dialect, $key, $scope, $now
            )?;
            Ok(Some(stats))
        }
        .await
    }};
}
pub(crate) use apply_plan_in_tx;
