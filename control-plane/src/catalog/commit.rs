//! Snapshot commits in two phases, so that committing a snapshot of a
//! million files neither holds the catalog for minutes nor loads the tree
//! into memory.
//!
//! 1. **Plan**, a batch at a time and mostly while the worker is still
//!    sending batches: the paths of the batch are looked up in the
//!    repository, [`plan_snapshot`] decides every write, and the decisions
//!    are stored as `snapshot_commit_rows` under a commit key. Nothing here is
//!    visible through the API. A full snapshot adds, when it completes, a
//!    deletion marker for every current object it does not name (one
//!    anti-join, paged).
//! 2. **Apply**, in the transaction that marks the run succeeded: three
//!    set-based statements copy the plan into `objects` and
//!    `object_versions`, so readers see the whole snapshot or nothing.
//!
//! A plan is only valid against the repository state it read. Every apply
//! bumps the `(repository, job)` counter in `repository_commits`; a plan
//! records the counter it started from and is applied only while the
//! counter still reads that value. A stale plan is made again from the
//! staged batches (see `Catalog::commit_attempt`).

use std::collections::{HashMap, HashSet};

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use uuid::Uuid;

use super::objects::{
    current_versions_of_sql, objects_by_path_sql, plan_snapshot, versions_from_rows,
    ExistingObjectRow, NewVersionRow, VersionRow, BATCH_ROWS,
};
use super::{on_pool, Catalog};
use crate::error::{from_sqlx, DomainError, DomainResult};
use crate::model::object::{
    path_text, FileKind, ObjectVersion, SnapshotCommit, SnapshotEntry, SnapshotStats,
};

/// One lock per repository and job, taken from a commit's last planning to
/// its apply. Commits of one control plane then never invalidate each
/// other's plans; the generation check still guards against other replicas.
#[derive(Debug, Default)]
pub(crate) struct CommitLocks {
    locks: std::sync::Mutex<HashMap<RepositoryJob, Arc<tokio::sync::Mutex<()>>>>,
}

/// A repository and a job key, as `repository_commits` keys them.
type RepositoryJob = (String, String);

/// Plan rows deleted per statement when a plan is discarded.
const DISCARD_PAGE: i64 = 20_000;

/// Rows of a deletion scan read per query.
const DELETION_PAGE: i64 = 5_000;

/// Where a snapshot goes: the run, and the repository and job its objects
/// are keyed by.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotScope {
    pub(crate) run_id: Uuid,
    pub(crate) owner_id: Uuid,
    pub(crate) bucket_id: Option<Uuid>,
    pub(crate) repository: String,
    pub(crate) job_id: Option<Uuid>,
}

impl SnapshotScope {
    pub(crate) fn of_commit(commit: &SnapshotCommit) -> Self {
        SnapshotScope {
            run_id: commit.run_id,
            owner_id: commit.owner_id,
            bucket_id: commit.bucket_id,
            repository: commit.repository.clone(),
            job_id: commit.job_id,
        }
    }

    /// The job as `repository_commits` keys it ('' for ad-hoc runs).
    pub(crate) fn job_key(&self) -> String {
        self.job_id.map(|id| id.to_string()).unwrap_or_default()
    }
}

/// The commit key of the plan made while a lease's batches arrive.
pub(crate) fn lease_commit_key(run_id: Uuid, lease_token: i64) -> String {
    format!("{run_id}/{lease_token}")
}

/// The commit key of a plan made in one go (a lease's re-plan, or with
/// `lease_token` 0 a rebuilt or directly applied snapshot).
pub(crate) fn fresh_commit_key(run_id: Uuid, lease_token: i64) -> String {
    format!("{run_id}/{lease_token}/{}", Uuid::new_v4().simple())
}

/// Where the deletion markers of a full snapshot's plan `key` are kept:
/// apart from the rows the worker's records planned, so that a completion
/// retried after a crash can tell the two apart.
pub(crate) fn deletions_key(key: &str) -> String {
    format!("{key}/deletions")
}

/// One planned write: an object named by the snapshot, whether it is new,
/// whether its current version closes, and its new version if any.
pub(crate) struct PendingRow {
    pub(crate) object_id: Uuid,
    /// Path and its text, for an object to insert.
    pub(crate) new_object: Option<(Vec<u8>, String)>,
    pub(crate) close_current: bool,
    pub(crate) version: Option<NewVersionRow>,
}

/// Validates a batch of entries: no path twice, times at the microsecond
/// precision both catalogs store.
fn normalized(entries: &[SnapshotEntry]) -> DomainResult<Vec<SnapshotEntry>> {
    let mut seen = HashSet::with_capacity(entries.len());
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if !seen.insert(entry.path.as_slice()) {
            return Err(DomainError::invalid(
                "entries.path",
                format!("path {:?} appears twice", path_text(&entry.path)),
            ));
        }
        let mut entry = entry.clone();
        entry.mtime = entry
            .mtime
            .map(|t| chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t));
        out.push(entry);
    }
    Ok(out)
}

/// Maps a unique-key violation while storing or applying a plan to the
/// error it means: a path named twice by one snapshot.
pub(crate) fn duplicate_path(error: DomainError) -> DomainError {
    match error {
        DomainError::AlreadyExists(_) => {
            DomainError::invalid("entries.path", "a path appears twice in the snapshot")
        }
        other => other,
    }
}

impl Catalog {
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
                    .entry((scope.repository.clone(), scope.job_key()))
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
        if let super::Pool::Postgres(pool) = &self.pool {
            if let Err(error) = sqlx::query("ANALYZE objects, object_versions")
                .execute(pool)
                .await
            {
                tracing::warn!(%error, "could not refresh the catalog's statistics");
            }
        }
    }

    /// The commit counter of a repository and job, created at 0.
    pub(crate) async fn commit_generation(&self, scope: &SnapshotScope) -> DomainResult<i64> {
        let job_key = scope.job_key();
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO repository_commits (repository, job_key, generation) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING")
                .bind(&scope.repository).bind(&job_key)
                .execute(pool).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "repository commit"))?;
            sqlx::query_scalar::<_, i64>(
                "SELECT generation FROM repository_commits WHERE repository = $1 AND job_key = $2")
                .bind(&scope.repository).bind(&job_key)
                .fetch_one(pool).await
                .map_err(|e| from_sqlx(e, "repository commit"))
        })
    }

    /// Plans the writes for `entries` (and, for an incremental, the paths in
    /// `removed`) against the repository's current versions of those paths.
    pub(crate) async fn plan_entries(
        &self,
        scope: &SnapshotScope,
        entries: &[SnapshotEntry],
        removed: &[Vec<u8>],
    ) -> DomainResult<Vec<PendingRow>> {
        let entries = normalized(entries)?;
        let paths: Vec<&[u8]> = entries
            .iter()
            .map(|e| e.path.as_slice())
            .chain(removed.iter().map(Vec::as_slice))
            .collect();
        let mut existing: HashMap<Vec<u8>, Uuid> = HashMap::with_capacity(paths.len());
        let mut current_rows: Vec<VersionRow> = Vec::new();
        on_pool!(self, pool, dialect => {
            for chunk in paths.chunks(BATCH_ROWS) {
                let sql = objects_by_path_sql(scope.job_id.is_some(), chunk.len());
                let sql = dialect.adapt(&sql);
                let mut query = sqlx::query_as::<_, ExistingObjectRow>(&sql).bind(&scope.repository);
                if let Some(job_id) = scope.job_id {
                    query = query.bind(job_id);
                }
                for path in chunk {
                    query = query.bind(*path);
                }
                for row in query.fetch_all(pool).await.map_err(|e| from_sqlx(e, "objects"))? {
                    existing.insert(row.path, row.id);
                }
            }
            let ids: Vec<Uuid> = existing.values().copied().collect();
            for chunk in ids.chunks(BATCH_ROWS) {
                let sql = current_versions_of_sql(dialect, chunk.len());
                let sql = dialect.adapt(&sql);
                let mut query = sqlx::query_as::<_, VersionRow>(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                current_rows.extend(
                    query.fetch_all(pool).await.map_err(|e| from_sqlx(e, "object versions"))?,
                );
            }
        });
        // Ordered by id, so the newest current version of an object wins.
        let mut versions = versions_from_rows(current_rows)?;
        versions.sort_by_key(|v| v.id);
        let current: HashMap<Uuid, ObjectVersion> =
            versions.into_iter().map(|v| (v.object_id, v)).collect();
        let plan = plan_snapshot(scope.run_id, &entries, Some(removed), &existing, &current)?;

        let mut new_objects: HashMap<Uuid, (Vec<u8>, String)> = plan
            .objects
            .into_iter()
            .map(|o| (o.id, (o.path, o.path_text)))
            .collect();
        let close: HashSet<Uuid> = plan.close.into_iter().collect();
        let mut rows = Vec::with_capacity(plan.versions.len() + plan.unchanged.len());
        for version in plan.versions {
            rows.push(PendingRow {
                object_id: version.object_id,
                new_object: new_objects.remove(&version.object_id),
                close_current: close.contains(&version.object_id),
                version: Some(version),
            });
        }
        rows.extend(plan.unchanged.into_iter().map(|object_id| PendingRow {
            object_id,
            new_object: None,
            close_current: false,
            version: None,
        }));
        Ok(rows)
    }

    /// Stores planned rows under `key`, in one transaction.
    pub(crate) async fn store_pending(
        &self,
        key: &str,
        run_id: Uuid,
        rows: &[PendingRow],
    ) -> DomainResult<()> {
        on_pool!(self, pool, dialect => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            insert_pending_in_tx!(tx, dialect, key, run_id, rows).map_err(duplicate_path)?;
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok(())
        })
    }

    /// Whether the plan `key` records a path as deleted.
    pub(crate) async fn plan_has_deletions(&self, key: &str) -> DomainResult<bool> {
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM snapshot_commit_rows WHERE commit_key = $1 AND deleted")
            .bind(key).fetch_one(pool).await)
        .map(|n| n > 0)
        .map_err(|e| from_sqlx(e, "snapshot commit rows"))
    }

    /// Completes the plan `key` of a full snapshot: every current object of
    /// the repository and job that the snapshot does not name gets its
    /// version closed and a deletion marker.
    pub(crate) async fn plan_deletions(
        &self,
        scope: &SnapshotScope,
        key: &str,
    ) -> DomainResult<()> {
        let job = if scope.job_id.is_some() {
            "o.job_id = $3"
        } else {
            "o.job_id IS NULL AND $3 IS NULL"
        };
        let sql = format!(
            "SELECT v.object_id, v.kind FROM object_versions v JOIN objects o ON o.id = v.object_id \
             WHERE o.repository = $1 AND {job} AND v.last_run_id IS NULL AND NOT v.deleted \
             AND v.object_id > $4 \
             AND NOT EXISTS (SELECT 1 FROM snapshot_commit_rows p \
             WHERE p.commit_key IN ($2, $6) AND p.object_id = v.object_id) \
             ORDER BY v.object_id LIMIT $5"
        );
        let marker_key = deletions_key(key);
        let mut after = Uuid::nil();
        loop {
            let page: Vec<(Uuid, String)> = on_pool!(self, pool => sqlx::query_as(&sql)
                .bind(&scope.repository).bind(key).bind(scope.job_id).bind(after).bind(DELETION_PAGE)
                .bind(&marker_key)
                .fetch_all(pool).await)
            .map_err(|e| from_sqlx(e, "object versions"))?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.0;
            let mut rows = Vec::with_capacity(page.len());
            let mut seen = HashSet::with_capacity(page.len());
            for (object_id, kind) in page {
                // An object with two open versions is closed once.
                if !seen.insert(object_id) {
                    continue;
                }
                let kind = FileKind::parse(&kind)?;
                rows.push(PendingRow {
                    object_id,
                    new_object: None,
                    close_current: true,
                    version: Some(NewVersionRow::deletion_marker(object_id, kind)),
                });
            }
            self.store_pending(&marker_key, scope.run_id, &rows).await?;
        }
    }

    /// Plans a whole snapshot held in memory under a fresh key: its entries
    /// a chunk at a time, then (for a full snapshot) its deletions. Returns
    /// the key and the generation the plan read.
    pub(crate) async fn plan_commit(&self, commit: &SnapshotCommit) -> DomainResult<(String, i64)> {
        let scope = SnapshotScope::of_commit(commit);
        let generation = self.commit_generation(&scope).await?;
        // A path repeated across chunks is caught by the plan table's keys.
        let key = fresh_commit_key(commit.run_id, 0);
        let removed = commit.removed.as_deref().unwrap_or_default();
        for (i, chunk) in commit.entries.chunks(BATCH_ROWS * 4).enumerate() {
            let removed: &[Vec<u8>] = if i == 0 { removed } else { &[] };
            let rows = self.plan_entries(&scope, chunk, removed).await?;
            self.store_pending(&key, commit.run_id, &rows).await?;
        }
        if commit.entries.is_empty() && !removed.is_empty() {
            let rows = self.plan_entries(&scope, &[], removed).await?;
            self.store_pending(&key, commit.run_id, &rows).await?;
        }
        if commit.removed.is_none() {
            self.plan_deletions(&scope, &key).await?;
        }
        Ok((key, generation))
    }

    /// Deletes the plans of a lease (`lease_token` 0: those made in one go
    /// for a rebuilt or directly applied snapshot), a page per statement so
    /// that a million rows never hold the catalog at once. The lease's
    /// staged batches, if any are left, are marked unplanned first.
    pub(crate) async fn discard_plans(&self, run_id: Uuid, lease_token: i64) -> DomainResult<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE run_staged_batches SET generation = NULL WHERE run_id = $1 AND lease_token = $2")
            .bind(run_id).bind(lease_token).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "staged batches"))?;
        let lease_key = lease_commit_key(run_id, lease_token);
        let keys: Vec<String> = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT DISTINCT commit_key FROM snapshot_commit_rows WHERE run_id = $1")
            .bind(run_id).fetch_all(pool).await)
        .map_err(|e| from_sqlx(e, "snapshot commit rows"))?;
        for key in keys {
            let of_lease = key
                .strip_prefix(&lease_key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !of_lease {
                continue;
            }
            // A range of the primary key at a time: plain index scans,
            // whatever the planner believes about the table's size.
            loop {
                let boundary: Option<Uuid> = on_pool!(self, pool => sqlx::query_scalar(
                    "SELECT object_id FROM snapshot_commit_rows WHERE commit_key = $1 \
                     ORDER BY object_id LIMIT 1 OFFSET $2")
                    .bind(&key).bind(DISCARD_PAGE - 1).fetch_optional(pool).await)
                .map_err(|e| from_sqlx(e, "snapshot commit rows"))?;
                // With no boundary, fewer than a page are left: all go.
                on_pool!(self, pool => match boundary {
                    Some(boundary) => sqlx::query(
                        "DELETE FROM snapshot_commit_rows WHERE commit_key = $1 AND object_id <= $2")
                        .bind(&key).bind(boundary).execute(pool).await,
                    None => sqlx::query("DELETE FROM snapshot_commit_rows WHERE commit_key = $1")
                        .bind(&key).execute(pool).await,
                }
                .map(|r| r.rows_affected()))
                .map_err(|e| from_sqlx(e, "snapshot commit rows"))?;
                if boundary.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Inserts planned rows under a commit key inside an open transaction `$tx`
/// of either backend; evaluates to `DomainResult<()>`.
macro_rules! insert_pending_in_tx {
    ($tx:ident, $dialect:expr, $key:expr, $run_id:expr, $rows:expr) => {{
        async {
            for chunk in $rows.chunks($crate::catalog::objects::BATCH_ROWS) {
                let sql = format!(
                    "INSERT INTO snapshot_commit_rows (commit_key, object_id, run_id, new_object, path, path_text, \
                     close_current, version_id, kind, size_bytes, mode, uid, gid, mtime, content_hash, \
                     symlink_target, storage_key, deleted) VALUES {}",
                    $crate::catalog::objects::values_placeholders(chunk.len(), 18, 1)
                );
                let sql = $dialect.adapt(&sql);
                let mut query = sqlx::query(&sql);
                for row in chunk {
                    let (path, text) = match &row.new_object {
                        Some((path, text)) => (Some(path.as_slice()), Some(text.as_str())),
                        None => (None, None),
                    };
                    let v = row.version.as_ref();
                    query = query
                        .bind($key)
                        .bind(row.object_id)
                        .bind($run_id)
                        .bind(row.new_object.is_some())
                        .bind(path)
                        .bind(text)
                        .bind(row.close_current)
                        .bind(v.map(|v| v.id))
                        .bind(v.map(|v| v.kind.as_str()))
                        .bind(v.map(|v| v.size_bytes))
                        .bind(v.map(|v| v.mode))
                        .bind(v.map(|v| v.uid))
                        .bind(v.map(|v| v.gid))
                        .bind(v.and_then(|v| v.mtime))
                        .bind(v.map(|v| v.content_hash.as_str()))
                        .bind(v.and_then(|v| v.symlink_target.as_deref()))
                        .bind(v.map(|v| v.storage_key.as_str()))
                        .bind(v.is_some_and(|v| v.deleted));
                }
                query.execute(&mut *$tx).await.map(|r| r.rows_affected())
                    .map_err(|e| $crate::error::from_sqlx(e, "snapshot commit rows"))?;
            }
            Ok::<_, $crate::error::DomainError>(())
        }
        .await
    }};
}
pub(crate) use insert_pending_in_tx;

/// The statement that closes the current versions of the objects a plan
/// (`$2`, with its deletion markers `$3`) changes, as of run `$1`.
///
/// SQLite is told to find the versions by object: left to itself it picks
/// the `last_run_id` index for `IS NULL` and visits every current version of
/// the catalog, which made a no-change incremental of one job cost as much as
/// the largest repository the catalog holds.
pub(crate) fn close_versions_sql(dialect: crate::catalog::Dialect) -> String {
    let hint = match dialect {
        crate::catalog::Dialect::Sqlite => " INDEXED BY object_versions_object",
        crate::catalog::Dialect::Postgres => "",
    };
    format!(
        "UPDATE object_versions{hint} SET last_run_id = $1 WHERE last_run_id IS NULL AND object_id IN \
         (SELECT object_id FROM snapshot_commit_rows WHERE commit_key IN ($2, $3) AND close_current)"
    )
}

/// Applies the plan `$key`, made against `$generation`, inside an open
/// transaction `$tx` of either backend. Evaluates to
/// `DomainResult<Option<SnapshotStats>>`: `None` when the repository moved
/// on since the plan was made (nothing was written; plan again).
macro_rules! apply_plan_in_tx {
    ($tx:ident, $dialect:expr, $key:expr, $scope:expr, $generation:expr, $now:expr) => {{
        async {
            let scope: &$crate::catalog::commit::SnapshotScope = $scope;
            let key: &str = $key;
            let markers = $crate::catalog::commit::deletions_key(key);
            let bumped = sqlx::query(
                "UPDATE repository_commits SET generation = generation + 1 \
                 WHERE repository = $1 AND job_key = $2 AND generation = $3")
                .bind(&scope.repository).bind(scope.job_key()).bind($generation)
                .execute(&mut *$tx).await.map(|r| r.rows_affected())
                .map_err(|e| $crate::error::from_sqlx(e, "repository commit"))?;
            if bumped == 0 {
                return Ok::<_, $crate::error::DomainError>(None);
            }
            let mut stats = $crate::model::object::SnapshotStats::default();
            stats.new_objects = sqlx::query(
                "INSERT INTO objects (id, owner_id, bucket_id, repository, job_id, path, path_text, create_time) \
                 SELECT object_id, $2, $3, $4, $5, path, path_text, $6 FROM snapshot_commit_rows \
                 WHERE commit_key IN ($1, $7) AND new_object")
                .bind(key).bind(scope.owner_id).bind(scope.bucket_id).bind(&scope.repository)
                .bind(scope.job_id).bind($now).bind(&markers)
                .execute(&mut *$tx).await.map(|r| r.rows_affected())
                .map_err(|e| $crate::catalog::commit::duplicate_path($crate::error::from_sqlx(e, "object")))?;
            // Closed before the new versions exist, which are open too.
            stats.closed_versions = sqlx::query(&$crate::catalog::commit::close_versions_sql($dialect))
                .bind(scope.run_id).bind(key).bind(&markers)
                .execute(&mut *$tx).await.map(|r| r.rows_affected())
                .map_err(|e| $crate::error::from_sqlx(e, "object versions"))?;
            stats.new_versions = sqlx::query(
                "INSERT INTO object_versions (id, object_id, kind, size_bytes, mode, uid, gid, mtime, \
                 content_hash, symlink_target, storage_key, first_run_id, deleted, create_time) \
                 SELECT version_id, object_id, kind, size_bytes, mode, uid, gid, mtime, content_hash, \
                 symlink_target, storage_key, $2, deleted, $3 FROM snapshot_commit_rows \
                 WHERE commit_key IN ($1, $4) AND version_id IS NOT NULL")
                .bind(key).bind(scope.run_id).bind($now).bind(&markers)
                .execute(&mut *$tx).await.map(|r| r.rows_affected())
                .map_err(|e| $crate::error::from_sqlx(e, "object version"))?;
            let (unchanged, deleted): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN version_id IS NULL THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN deleted THEN 1 ELSE 0 END), 0) \
                 FROM snapshot_commit_rows WHERE commit_key IN ($1, $2)")
                .bind(key).bind(&markers)
                .fetch_one(&mut *$tx).await
                .map_err(|e| $crate::error::from_sqlx(e, "snapshot commit rows"))?;
            stats.unchanged = u64::try_from(unchanged).unwrap_or(0);
            stats.deleted = u64::try_from(deleted).unwrap_or(0);
            Ok(Some(stats))
        }
        .await
    }};
}
pub(crate) use apply_plan_in_tx;
