//! Planning a snapshot commit: a batch's paths are looked up in the
//! repository, [`plan_snapshot`] decides, and the decisions are stored as
//! `snapshot_commit_rows` under a commit key (see `catalog::snapshots`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{deletions_key, duplicate_path, fresh_commit_key, lease_commit_key, SnapshotScope};
use crate::catalog::error::from_sqlx;
use crate::catalog::objects::{parse_stored_kind, versions_from_rows, VersionRow, VERSION_COLUMNS};
use crate::catalog::placeholders::{list_placeholders, BATCH_ROWS};
use crate::catalog::{in_transaction, new_id, on_pool, Catalog, Dialect};
use crate::error::DomainResult;
use crate::model::object::{
    kind_name, mtime_of, path_text, EntryKind, ObjectVersion, SnapshotCommit, SnapshotEntry,
};
use crate::model::snapshot::plan::{plan_snapshot, PathDecision};

/// Plan rows deleted per statement when a plan is discarded.
const DISCARD_PAGE: i64 = 20_000;

/// Rows of a deletion scan read per query.
const DELETION_PAGE: i64 = 5_000;

/// One planned write, a row of `snapshot_commit_rows`: an object named by
/// the snapshot, whether it is new, whether its current version closes, and
/// its new version if any.
pub(crate) struct PendingRow {
    pub(crate) object_id: Uuid,
    /// Path and its text, for an object to insert.
    pub(crate) new_object: Option<(Vec<u8>, String)>,
    pub(crate) close_current: bool,
    pub(crate) version: Option<NewVersionRow>,
}

impl PendingRow {
    /// The row that carries out one decision of the plan.
    fn of_decision(decision: PathDecision<'_>) -> Self {
        match decision {
            PathDecision::New(entry) => PendingRow {
                object_id: new_id(),
                new_object: Some((entry.path.clone(), path_text(&entry.path))),
                close_current: false,
                version: Some(NewVersionRow::of_entry(entry)),
            },
            PathDecision::CarriedOver { object_id } => PendingRow {
                object_id,
                new_object: None,
                close_current: false,
                version: None,
            },
            PathDecision::Changed {
                object_id,
                entry,
                close_current,
            } => PendingRow {
                object_id,
                new_object: None,
                close_current,
                version: Some(NewVersionRow::of_entry(entry)),
            },
            PathDecision::Removed { object_id, kind } => PendingRow {
                object_id,
                new_object: None,
                close_current: true,
                version: Some(NewVersionRow::deletion_marker(kind)),
            },
        }
    }
}

/// A version row to insert; the run and time are the commit's.
pub(crate) struct NewVersionRow {
    pub(crate) id: Uuid,
    pub(crate) kind: &'static str,
    pub(crate) size_bytes: i64,
    pub(crate) mode: i64,
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) mtime: Option<DateTime<Utc>>,
    pub(crate) content_hash: String,
    pub(crate) symlink_target: Option<Vec<u8>>,
    pub(crate) storage_key: String,
    pub(crate) deleted: bool,
}

impl NewVersionRow {
    /// The row of an entry's version.
    pub(crate) fn of_entry(entry: &SnapshotEntry) -> Self {
        let attributes = &entry.attributes;
        NewVersionRow {
            id: new_id(),
            kind: kind_name(attributes.kind),
            size_bytes: i64::try_from(attributes.size).unwrap_or(i64::MAX),
            mode: i64::from(attributes.mode),
            uid: i64::from(attributes.uid),
            gid: i64::from(attributes.gid),
            mtime: Some(mtime_of(attributes)),
            content_hash: attributes.content_hash.clone().unwrap_or_default(),
            symlink_target: attributes.symlink_target.clone(),
            storage_key: entry.storage_key.clone(),
            deleted: false,
        }
    }

    /// The row of a deletion marker after a version of `kind`.
    pub(crate) fn deletion_marker(kind: EntryKind) -> Self {
        NewVersionRow {
            id: new_id(),
            kind: kind_name(kind),
            size_bytes: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: None,
            content_hash: String::new(),
            symlink_target: None,
            storage_key: String::new(),
            deleted: true,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ExistingObjectRow {
    pub(crate) id: Uuid,
    pub(crate) path: Vec<u8>,
}

/// Objects of a repository and job (`$2`, or ad-hoc when `with_job` is
/// false) at `count` paths, for [`Catalog::plan_entries`]. Plain equality,
/// not `($2 IS NULL OR …)`, so the `(repository_id, job_id, path)` index serves
/// it on both backends.
pub(crate) fn objects_by_path_sql(with_job: bool, count: usize) -> String {
    let (job, first) = if with_job {
        ("o.job_id = $2", 3)
    } else {
        ("o.job_id IS NULL", 2)
    };
    format!(
        "SELECT o.id, o.path FROM objects o WHERE o.repository_id = $1 AND {job} AND o.path IN ({})",
        list_placeholders(count, first)
    )
}

/// Current versions of `count` objects (`$1`…), for [`Catalog::plan_entries`].
///
/// SQLite is told to use the `(object_id, id)` index: left to itself it may
/// pick the `last_run_id` index for `IS NULL`, which matches every current
/// version of the catalog, and scan them all for each chunk of ids.
pub(crate) fn current_versions_of_sql(dialect: Dialect, count: usize) -> String {
    let hint = match dialect {
        Dialect::Sqlite => " INDEXED BY object_versions_object",
        Dialect::Postgres => "",
    };
    format!(
        "SELECT {VERSION_COLUMNS} FROM object_versions v{hint} \
         WHERE v.last_run_id IS NULL AND v.object_id IN ({}) ORDER BY v.id",
        list_placeholders(count, 1)
    )
}

impl Catalog {
    /// The commit counter of a repository and job, created at 0.
    pub(crate) async fn commit_generation(&self, scope: &SnapshotScope) -> DomainResult<i64> {
        let job_key = scope.job_key();
        on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO repository_commits (repository_id, job_key, generation) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING")
                .bind(scope.repository_id).bind(&job_key)
                .execute(pool).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "repository commit"))?;
            sqlx::query_scalar::<_, i64>(
                "SELECT generation FROM repository_commits WHERE repository_id = $1 AND job_key = $2",
            )
            .bind(scope.repository_id)
            .bind(&job_key)
            .fetch_one(pool)
            .await
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
        let paths: Vec<&[u8]> = entries
            .iter()
            .map(|e| e.path.as_slice())
            .chain(removed.iter().map(Vec::as_slice))
            .collect();
        let mut existing: HashMap<Vec<u8>, Uuid> = HashMap::with_capacity(paths.len());
        let mut current_rows: Vec<VersionRow> = Vec::new();
        on_pool!(self, |pool, dialect| {
            for chunk in paths.chunks(BATCH_ROWS) {
                let sql = objects_by_path_sql(scope.job_id.is_some(), chunk.len());
                let sql = dialect.adapt(&sql);
                let mut query =
                    sqlx::query_as::<_, ExistingObjectRow>(&sql).bind(scope.repository_id);
                if let Some(job_id) = scope.job_id {
                    query = query.bind(job_id);
                }
                for path in chunk {
                    query = query.bind(*path);
                }
                for row in query
                    .fetch_all(pool)
                    .await
                    .map_err(|e| from_sqlx(e, "objects"))?
                {
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
                    query
                        .fetch_all(pool)
                        .await
                        .map_err(|e| from_sqlx(e, "object versions"))?,
                );
            }
        });
        // Ordered by id, so the newest current version of an object wins.
        let mut versions = versions_from_rows(current_rows)?;
        versions.sort_by_key(|v| v.id);
        let current: HashMap<Uuid, ObjectVersion> =
            versions.into_iter().map(|v| (v.object_id, v)).collect();
        let plan = plan_snapshot(scope.run_id, entries, Some(removed), &existing, &current)?;
        Ok(plan
            .decisions
            .into_iter()
            .map(PendingRow::of_decision)
            .collect())
    }

    /// Stores planned rows under `key`, in one transaction.
    pub(crate) async fn store_pending(
        &self,
        key: &str,
        run_id: Uuid,
        rows: &[PendingRow],
    ) -> DomainResult<()> {
        on_pool!(self, |pool, dialect| in_transaction!(pool, |tx| {
            insert_pending_in_tx!(tx, dialect, key, run_id, rows).map_err(duplicate_path)
        }))
    }

    /// Whether the plan `key` records a path as deleted.
    pub(crate) async fn plan_has_deletions(&self, key: &str) -> DomainResult<bool> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM snapshot_commit_rows WHERE commit_key = $1 AND deleted"
        )
        .bind(key)
        .fetch_one(pool)
        .await)
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
             WHERE o.repository_id = $1 AND {job} AND v.last_run_id IS NULL AND NOT v.deleted \
             AND v.object_id > $4 \
             AND NOT EXISTS (SELECT 1 FROM snapshot_commit_rows p \
             WHERE p.commit_key IN ($2, $6) AND p.object_id = v.object_id) \
             ORDER BY v.object_id LIMIT $5"
        );
        let marker_key = deletions_key(key);
        let mut after = Uuid::nil();
        loop {
            let page: Vec<(Uuid, String)> = on_pool!(self, |pool| sqlx::query_as(&sql)
                .bind(scope.repository_id)
                .bind(key)
                .bind(scope.job_id)
                .bind(after)
                .bind(DELETION_PAGE)
                .bind(&marker_key)
                .fetch_all(pool)
                .await)
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
                let kind = parse_stored_kind(&kind)?;
                rows.push(PendingRow::of_decision(PathDecision::Removed {
                    object_id,
                    kind,
                }));
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
        on_pool!(self, |pool| sqlx::query(
            "UPDATE run_staged_batches SET generation = NULL WHERE run_id = $1 AND lease_token = $2")
            .bind(run_id).bind(lease_token).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "staged batches"))?;
        let lease_key = lease_commit_key(run_id, lease_token);
        let keys: Vec<String> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT DISTINCT commit_key FROM snapshot_commit_rows WHERE run_id = $1"
        )
        .bind(run_id)
        .fetch_all(pool)
        .await)
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
                let boundary: Option<Uuid> = on_pool!(self, |pool| sqlx::query_scalar(
                    "SELECT object_id FROM snapshot_commit_rows WHERE commit_key = $1 \
                     ORDER BY object_id LIMIT 1 OFFSET $2"
                )
                .bind(&key)
                .bind(DISCARD_PAGE - 1)
                .fetch_optional(pool)
                .await)
                .map_err(|e| from_sqlx(e, "snapshot commit rows"))?;
                // With no boundary, fewer than a page are left: all go.
                on_pool!(self, |pool| match boundary {
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
            for chunk in $rows.chunks($crate::catalog::placeholders::BATCH_ROWS) {
                let sql = format!(
                    "INSERT INTO snapshot_commit_rows (commit_key, object_id, run_id, new_object, path, path_text, \
                     close_current, version_id, kind, size_bytes, mode, uid, gid, mtime, content_hash, \
                     symlink_target, storage_key, deleted) VALUES {}",
                    $crate::catalog::placeholders::values_placeholders(chunk.len(), 18, 1)
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
                        .bind(v.map(|v| v.kind))
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
                    .map_err(|e| $crate::catalog::error::from_sqlx(e, "snapshot commit rows"))?;
            }
            Ok::<_, $crate::error::DomainError>(())
        }
        .await
    }};
}
pub(crate) use insert_pending_in_tx;
