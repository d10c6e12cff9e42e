//! Catalog queries for objects, their versions and snapshots.
//!
//! See [`crate::model::object`] for the version-validity rule: a version is
//! valid in snapshot `R` when `first_run_id <= R AND (last_run_id IS NULL OR
//! R < last_run_id)`, comparing UUIDv7 run ids directly (both backends compare
//! them bytewise, which is time order).
//!
//! Lists of objects and snapshot files are ordered by `(path_text, id)`; the
//! page token is the id of the last object returned and the next page resumes
//! after that object's `(path_text, id)`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::commit::{apply_plan_in_tx, SnapshotScope};
use super::{new_id, now_micros, on_pool, on_read_pool, Catalog, Dialect, Page};
use crate::error::{from_sqlx, DomainError, DomainResult};
use crate::model::object::{
    path_text, BackupObject, DuplicateFile, DuplicateFilter, DuplicateGroup, FileKind,
    LatestFilter, ObjectFilter, ObjectVersion, SnapshotCommit, SnapshotEntry, SnapshotFile,
    SnapshotStats,
};
use crate::model::tag::TagMatch;

/// Rows per multi-row statement of [`Catalog::apply_snapshot`].
pub(crate) const BATCH_ROWS: usize = 500;

/// How many times a snapshot is planned before giving up on a repository
/// that keeps changing under it.
pub(crate) const PLAN_ATTEMPTS: usize = 5;

const OBJECT_COLUMNS: &str =
    "o.id, o.owner_id, o.bucket_id, o.job_id, o.repository, o.path, o.path_text, o.create_time";

const VERSION_COLUMNS: &str = "v.id, v.object_id, v.kind, v.size_bytes, v.mode, v.uid, v.gid, \
     v.mtime, v.content_hash, v.symlink_target, v.storage_key, v.first_run_id, v.last_run_id, \
     v.deleted, v.create_time";

/// The id of the latest version of object `o`: the current one (open range),
/// else the newest.
const LATEST_VERSION_OF_O: &str =
    "(SELECT lv.id FROM object_versions lv WHERE lv.object_id = o.id \
     ORDER BY CASE WHEN lv.last_run_id IS NULL THEN 0 ELSE 1 END, lv.id DESC LIMIT 1)";

/// Keyset condition resuming after object `$n` in `(path_text, id)` order.
fn after_object(param: usize) -> String {
    format!(
        "(${param} IS NULL OR (o.path_text, o.id) > \
         (SELECT c.path_text, c.id FROM objects c WHERE c.id = ${param}))"
    )
}

/// The shared object filters, binding `$1` owner, `$2` bucket, `$3` job,
/// `$4` path prefix and `$5` the page cursor.
fn object_conditions() -> String {
    format!(
        "($1 IS NULL OR o.owner_id = $1) AND ($2 IS NULL OR o.bucket_id = $2) \
         AND ($3 IS NULL OR o.job_id = $3) AND substr(o.path_text, 1, length($4)) = $4 AND {}",
        after_object(5)
    )
}

/// `($first, $first+1, …), (…)`: placeholders for a multi-row VALUES list.
pub(crate) fn values_placeholders(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let params = (0..columns)
                .map(|col| format!("${}", first + row * columns + col))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({params})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …`: placeholders for an IN list.
pub(crate) fn list_placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(sqlx::FromRow)]
struct ObjectRow {
    id: Uuid,
    owner_id: Uuid,
    bucket_id: Option<Uuid>,
    job_id: Option<Uuid>,
    repository: String,
    path: Vec<u8>,
    path_text: String,
    create_time: DateTime<Utc>,
}

impl From<ObjectRow> for BackupObject {
    fn from(row: ObjectRow) -> Self {
        BackupObject {
            id: row.id,
            owner_id: row.owner_id,
            bucket_id: row.bucket_id,
            job_id: row.job_id,
            repository: row.repository,
            path: row.path,
            path_text: row.path_text,
            create_time: row.create_time,
            latest_version: None,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct VersionRow {
    id: Uuid,
    object_id: Uuid,
    kind: String,
    size_bytes: i64,
    mode: i64,
    uid: i64,
    gid: i64,
    mtime: Option<DateTime<Utc>>,
    content_hash: String,
    symlink_target: Option<Vec<u8>>,
    storage_key: String,
    first_run_id: Uuid,
    last_run_id: Option<Uuid>,
    deleted: bool,
    create_time: DateTime<Utc>,
}

fn column_u32(value: i64, column: &str) -> DomainResult<u32> {
    u32::try_from(value)
        .map_err(|_| DomainError::Internal(format!("column {column} holds {value}, not a u32")))
}

impl TryFrom<VersionRow> for ObjectVersion {
    type Error = DomainError;

    fn try_from(row: VersionRow) -> DomainResult<Self> {
        Ok(ObjectVersion {
            id: row.id,
            object_id: row.object_id,
            kind: FileKind::parse(&row.kind)?,
            size_bytes: row.size_bytes,
            mode: column_u32(row.mode, "object_versions.mode")?,
            uid: column_u32(row.uid, "object_versions.uid")?,
            gid: column_u32(row.gid, "object_versions.gid")?,
            mtime: row.mtime,
            content_hash: row.content_hash,
            symlink_target: row.symlink_target,
            storage_key: row.storage_key,
            first_run_id: row.first_run_id,
            last_run_id: row.last_run_id,
            deleted: row.deleted,
            create_time: row.create_time,
        })
    }
}

pub(crate) fn versions_from_rows(rows: Vec<VersionRow>) -> DomainResult<Vec<ObjectVersion>> {
    rows.into_iter().map(ObjectVersion::try_from).collect()
}

#[derive(sqlx::FromRow)]
struct SnapshotFileRow {
    #[sqlx(flatten)]
    version: VersionRow,
    path_text: String,
}

#[derive(sqlx::FromRow)]
struct RunScopeRow {
    owner_id: Uuid,
    job_id: Option<Uuid>,
    target_bucket_id: Option<Uuid>,
    state: String,
}

#[derive(sqlx::FromRow)]
struct GroupRow {
    content_hash: String,
    size_bytes: i64,
    copies: i64,
}

#[derive(sqlx::FromRow)]
struct DuplicateFileRow {
    content_hash: String,
    object_id: Uuid,
    path_text: String,
    job_id: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ExistingObjectRow {
    pub(crate) id: Uuid,
    pub(crate) path: Vec<u8>,
}

/// An object row to insert.
pub(crate) struct NewObjectRow {
    pub(crate) id: Uuid,
    pub(crate) path: Vec<u8>,
    pub(crate) path_text: String,
}

/// A version row to insert; the run and time are the commit's.
pub(crate) struct NewVersionRow {
    pub(crate) id: Uuid,
    pub(crate) object_id: Uuid,
    pub(crate) kind: FileKind,
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
    pub(crate) fn of_entry(object_id: Uuid, entry: &SnapshotEntry) -> Self {
        NewVersionRow {
            id: new_id(),
            object_id,
            kind: entry.kind,
            size_bytes: entry.size_bytes,
            mode: i64::from(entry.mode),
            uid: i64::from(entry.uid),
            gid: i64::from(entry.gid),
            mtime: entry.mtime,
            content_hash: entry.content_hash.clone(),
            symlink_target: entry.symlink_target.clone(),
            storage_key: entry.storage_key.clone(),
            deleted: false,
        }
    }

    pub(crate) fn deletion_marker(object_id: Uuid, kind: FileKind) -> Self {
        NewVersionRow {
            id: new_id(),
            object_id,
            kind,
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

/// The writes one snapshot needs.
#[derive(Default)]
pub(crate) struct SnapshotPlan {
    pub(crate) objects: Vec<NewObjectRow>,
    pub(crate) versions: Vec<NewVersionRow>,
    /// Objects whose current version is closed at the new run.
    pub(crate) close: Vec<Uuid>,
    /// Objects named by the snapshot whose current version stays.
    pub(crate) unchanged: Vec<Uuid>,
    pub(crate) stats: SnapshotStats,
}

/// Compares a snapshot with the current versions of its repository and
/// decides every write. Pure, so the rules are testable without a database.
///
/// With `removed` (an incremental), `existing` and `current` need only hold
/// the paths named by `entries` and `removed`; other paths are unchanged.
pub(crate) fn plan_snapshot(
    run_id: Uuid,
    entries: &[SnapshotEntry],
    removed: Option<&[Vec<u8>]>,
    existing: &HashMap<Vec<u8>, Uuid>,
    current: &HashMap<Uuid, ObjectVersion>,
) -> DomainResult<SnapshotPlan> {
    if let Some(newer) = current.values().find(|v| v.first_run_id > run_id) {
        return Err(DomainError::FailedPrecondition(format!(
            "snapshot {} is newer than run {run_id}; snapshots must be committed in run order",
            newer.first_run_id
        )));
    }
    let mut plan = SnapshotPlan::default();
    let mut present = HashSet::with_capacity(entries.len());
    for entry in entries {
        present.insert(entry.path.as_slice());
        let Some(&object_id) = existing.get(&entry.path) else {
            let id = new_id();
            plan.objects.push(NewObjectRow {
                id,
                path: entry.path.clone(),
                path_text: path_text(&entry.path),
            });
            plan.versions.push(NewVersionRow::of_entry(id, entry));
            plan.stats.new_objects += 1;
            continue;
        };
        match current.get(&object_id) {
            Some(version) if entry.same_as(version) => {
                plan.unchanged.push(object_id);
                plan.stats.unchanged += 1;
            }
            Some(_) => {
                plan.close.push(object_id);
                plan.versions
                    .push(NewVersionRow::of_entry(object_id, entry));
            }
            None => plan
                .versions
                .push(NewVersionRow::of_entry(object_id, entry)),
        }
    }
    let gone: Vec<(&[u8], Uuid)> = match removed {
        Some(removed) => removed
            .iter()
            .filter_map(|path| existing.get(path).map(|id| (path.as_slice(), *id)))
            .collect(),
        None => existing
            .iter()
            .filter(|(path, _)| !present.contains(path.as_slice()))
            .map(|(path, id)| (path.as_slice(), *id))
            .collect(),
    };
    for (path, object_id) in gone {
        if present.contains(path) {
            return Err(DomainError::invalid(
                "entries.path",
                format!("path {:?} is both changed and removed", path_text(path)),
            ));
        }
        if let Some(version) = current.get(&object_id).filter(|v| !v.deleted) {
            plan.close.push(object_id);
            plan.versions
                .push(NewVersionRow::deletion_marker(object_id, version.kind));
            plan.stats.deleted += 1;
        }
    }
    plan.stats.new_versions = plan.versions.len() as u64;
    Ok(plan)
}

/// Objects of a repository and job (`$2`, or ad-hoc when `with_job` is
/// false) at `count` paths, for [`Catalog::plan_entries`]. Plain equality,
/// not `($2 IS NULL OR …)`, so the `(repository, job_id, path)` index serves
/// it on both backends.
pub(crate) fn objects_by_path_sql(with_job: bool, count: usize) -> String {
    let (job, first) = if with_job {
        ("o.job_id = $2", 3)
    } else {
        ("o.job_id IS NULL", 2)
    };
    format!(
        "SELECT o.id, o.path FROM objects o WHERE o.repository = $1 AND {job} AND o.path IN ({})",
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
    /// Records a new snapshot of a repository, writing only what changed: an
    /// entry identical to its current version (kind, size, mtime, content
    /// hash, mode, symlink target) writes nothing; a changed entry closes its
    /// current version at `run_id` and gets a new version; a new path gets
    /// an object and a version; a path missing from the snapshot has its
    /// current version closed and a deletion marker added. The snapshot is
    /// planned a chunk at a time and applied in one transaction (see
    /// [`super::commit`]). Committing the same snapshot again writes nothing.
    pub async fn apply_snapshot(&self, snapshot: &SnapshotCommit) -> DomainResult<SnapshotStats> {
        let scope = SnapshotScope::of_commit(snapshot);
        let _serialized = self.lock_commits(&scope).await;
        for attempt in 0..PLAN_ATTEMPTS {
            if attempt > 0 {
                self.stale_plan_pause().await;
            }
            let (key, generation) = self.plan_commit(snapshot).await?;
            let now = now_micros();
            let applied = on_pool!(self, pool, dialect => {
                async {
                    let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
                    let stats = apply_plan_in_tx!(tx, dialect, &key, &scope, generation, now)?;
                    if stats.is_some() {
                        tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
                    }
                    Ok::<_, DomainError>(stats)
                }
                .await
            });
            self.discard_plans(snapshot.run_id, 0).await?;
            if let Some(stats) = applied? {
                self.refresh_statistics(&stats).await;
                return Ok(stats);
            }
        }
        Err(DomainError::Aborted(format!(
            "the repository {} kept changing while snapshot {} was committed",
            snapshot.repository, snapshot.run_id
        )))
    }

    async fn latest_versions(&self, ids: &[Uuid]) -> DomainResult<HashMap<Uuid, ObjectVersion>> {
        let mut latest = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM objects o JOIN object_versions v ON v.id = {LATEST_VERSION_OF_O} \
                 WHERE o.id IN ({})",
                list_placeholders(chunk.len(), 1)
            );
            let rows = on_pool!(self, pool => {
                let mut query = sqlx::query_as::<_, VersionRow>(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(pool).await
            })
            .map_err(|e| from_sqlx(e, "object versions"))?;
            for version in versions_from_rows(rows)? {
                latest.insert(version.object_id, version);
            }
        }
        Ok(latest)
    }

    /// Attaches each object's latest version.
    async fn with_latest_versions(&self, rows: Vec<ObjectRow>) -> DomainResult<Vec<BackupObject>> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let mut latest = self.latest_versions(&ids).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut object = BackupObject::from(row);
                object.latest_version = latest.remove(&object.id);
                object
            })
            .collect())
    }

    /// Lists objects by `(path_text, id)`, each with its latest version.
    /// With `tag`, only objects carrying a matching tag themselves or on any
    /// of their versions.
    pub async fn list_objects(
        &self,
        filter: &ObjectFilter,
        tag: Option<&TagMatch>,
        page: Page,
    ) -> DomainResult<(Vec<BackupObject>, String)> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM objects o WHERE {} \
             AND ($6 IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE t.key = $6 \
                 AND ($7 IS NULL OR t.value = $7) \
                 AND ((t.resource_kind = 'object' AND t.resource_id = o.id) \
                   OR (t.resource_kind = 'object_version' AND t.resource_id IN \
                       (SELECT tv.id FROM object_versions tv WHERE tv.object_id = o.id))))) \
             ORDER BY o.path_text, o.id LIMIT $8",
            object_conditions()
        );
        let rows = on_read_pool!(self, pool => sqlx::query_as::<_, ObjectRow>(&sql)
            .bind(filter.owner_id)
            .bind(filter.bucket_id)
            .bind(filter.job_id)
            .bind(&filter.path_prefix)
            .bind(page.after)
            .bind(tag.map(|t| t.key.as_str()))
            .bind(tag.and_then(|t| t.value.as_deref()))
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "objects"))?;
        let (rows, token) = page.finish(rows, |row| row.id);
        Ok((self.with_latest_versions(rows).await?, token))
    }

    /// Returns an object with its latest version, if within `owner_scope`.
    pub async fn get_object(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<BackupObject> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM objects o WHERE o.id = $1 AND ($2 IS NULL OR o.owner_id = $2)"
        );
        let row = on_read_pool!(self, pool => sqlx::query_as::<_, ObjectRow>(&sql)
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object"))?
        .ok_or_else(|| DomainError::not_found("object", id))?;
        let mut objects = self.with_latest_versions(vec![row]).await?;
        objects
            .pop()
            .ok_or_else(|| DomainError::not_found("object", id))
    }

    /// Lists the versions of an object, newest first, with `tag` only those
    /// carrying a matching tag. The page token is the id of the last version
    /// returned.
    pub async fn list_object_versions(
        &self,
        object_id: Uuid,
        owner_scope: Option<Uuid>,
        tag: Option<&TagMatch>,
        page: Page,
    ) -> DomainResult<(Vec<ObjectVersion>, String)> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM object_versions v JOIN objects o ON o.id = v.object_id \
             WHERE o.id = $1 AND ($2 IS NULL OR o.owner_id = $2) AND ($3 IS NULL OR v.id < $3) \
             AND ($5 IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE t.resource_kind = 'object_version' \
                 AND t.resource_id = v.id AND t.key = $5 AND ($6 IS NULL OR t.value = $6))) \
             ORDER BY v.id DESC LIMIT $4"
        );
        // Existence and scope first, so an empty list means "no versions".
        self.get_object_row(object_id, owner_scope).await?;
        let rows = on_read_pool!(self, pool => sqlx::query_as::<_, VersionRow>(&sql)
            .bind(object_id)
            .bind(owner_scope)
            .bind(page.after)
            .bind(page.limit())
            .bind(tag.map(|t| t.key.as_str()))
            .bind(tag.and_then(|t| t.value.as_deref()))
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object versions"))?;
        Ok(page.finish(versions_from_rows(rows)?, |v| v.id))
    }

    async fn get_object_row(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<()> {
        let found = on_read_pool!(self, pool => sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM objects WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)")
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object"))?;
        found
            .map(|_| ())
            .ok_or_else(|| DomainError::not_found("object", id))
    }

    /// Lists objects with their latest version by `(path_text, id)`, leaving
    /// out objects whose latest version is a deletion unless asked to. The tag
    /// filter matches tags on the latest version or on the object.
    pub async fn list_latest_versions(
        &self,
        filter: &LatestFilter,
        page: Page,
    ) -> DomainResult<(Vec<BackupObject>, String)> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM objects o JOIN object_versions v ON v.id = {LATEST_VERSION_OF_O} \
             WHERE {} AND ($6 OR NOT v.deleted) \
             AND ($7 IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE t.key = $7 \
                 AND ($8 IS NULL OR t.value = $8) \
                 AND ((t.resource_kind = 'object_version' AND t.resource_id = v.id) \
                   OR (t.resource_kind = 'object' AND t.resource_id = o.id)))) \
             ORDER BY o.path_text, o.id LIMIT $9",
            object_conditions()
        );
        let objects = &filter.objects;
        let rows = on_read_pool!(self, pool => sqlx::query_as::<_, ObjectRow>(&sql)
            .bind(objects.owner_id)
            .bind(objects.bucket_id)
            .bind(objects.job_id)
            .bind(&objects.path_prefix)
            .bind(page.after)
            .bind(filter.include_deleted)
            .bind(&filter.tag_key)
            .bind(&filter.tag_value)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "objects"))?;
        let (rows, token) = page.finish(rows, |row| row.id);
        Ok((self.with_latest_versions(rows).await?, token))
    }

    /// Lists the files of the snapshot taken by `run_id`, by `(path_text,
    /// object id)`: the non-deleted versions valid in that run among the
    /// objects of the run's owner, job and bucket. `NotFound` for a run
    /// outside `owner_scope`, `FailedPrecondition` unless it succeeded.
    pub async fn list_snapshot_files(
        &self,
        run_id: Uuid,
        owner_scope: Option<Uuid>,
        path_prefix: &str,
        page: Page,
    ) -> DomainResult<(Vec<SnapshotFile>, String)> {
        let run = self.snapshot_run(run_id, owner_scope).await?;
        let sql = format!(
            "SELECT {VERSION_COLUMNS}, o.path_text FROM object_versions v JOIN objects o ON o.id = v.object_id \
             WHERE o.owner_id = $1 AND ($2 IS NULL OR o.job_id = $2) AND ($3 IS NULL OR o.bucket_id = $3) \
             AND v.first_run_id <= $4 AND (v.last_run_id IS NULL OR v.last_run_id > $4) AND NOT v.deleted \
             AND substr(o.path_text, 1, length($5)) = $5 AND {} \
             ORDER BY o.path_text, o.id LIMIT $7",
            after_object(6)
        );
        let rows = on_read_pool!(self, pool => sqlx::query_as::<_, SnapshotFileRow>(&sql)
            .bind(run.owner_id)
            .bind(run.job_id)
            .bind(run.target_bucket_id)
            .bind(run_id)
            .bind(path_prefix)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "snapshot files"))?;
        let files = rows
            .into_iter()
            .map(|row| {
                Ok(SnapshotFile {
                    path_text: row.path_text,
                    version: ObjectVersion::try_from(row.version)?,
                })
            })
            .collect::<DomainResult<Vec<_>>>()?;
        Ok(page.finish(files, |file| file.version.object_id))
    }

    async fn snapshot_run(
        &self,
        run_id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<RunScopeRow> {
        let run = on_read_pool!(self, pool => sqlx::query_as::<_, RunScopeRow>(
            "SELECT owner_id, job_id, target_bucket_id, state FROM runs \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)")
            .bind(run_id)
            .bind(owner_scope)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "run"))?
        .ok_or_else(|| DomainError::not_found("run", run_id))?;
        if run.state != "succeeded" {
            return Err(DomainError::FailedPrecondition(format!(
                "run {run_id} is {}; only a succeeded run is a snapshot",
                run.state
            )));
        }
        Ok(run)
    }

    /// Lists groups of current regular files sharing a content hash, largest
    /// saving first. `offset` is the number of groups to skip.
    pub async fn list_duplicates(
        &self,
        filter: &DuplicateFilter,
        size: i64,
        offset: i64,
    ) -> DomainResult<(Vec<DuplicateGroup>, bool)> {
        const CONDITIONS: &str = "v.last_run_id IS NULL AND NOT v.deleted AND v.kind = 'regular' \
             AND v.content_hash <> '' AND ($1 IS NULL OR o.owner_id = $1) \
             AND ($2 IS NULL OR o.bucket_id = $2) AND ($3 IS NULL OR o.job_id = $3) \
             AND v.size_bytes >= $4";
        let sql = format!(
            "SELECT v.content_hash, MAX(v.size_bytes) AS size_bytes, COUNT(*) AS copies \
             FROM object_versions v JOIN objects o ON o.id = v.object_id WHERE {CONDITIONS} \
             GROUP BY v.content_hash HAVING COUNT(*) > 1 \
             ORDER BY MAX(v.size_bytes) * (COUNT(*) - 1) DESC, v.content_hash LIMIT $5 OFFSET $6"
        );
        let mut groups = on_read_pool!(self, pool => sqlx::query_as::<_, GroupRow>(&sql)
            .bind(filter.owner_id)
            .bind(filter.bucket_id)
            .bind(filter.job_id)
            .bind(filter.min_size_bytes)
            .bind(size + 1)
            .bind(offset)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "duplicates"))?;
        let more = groups.len() as i64 > size;
        groups.truncate(usize::try_from(size).unwrap_or(0));
        if groups.is_empty() {
            return Ok((Vec::new(), false));
        }
        let files_sql = format!(
            "SELECT v.content_hash, o.id AS object_id, o.path_text, o.job_id \
             FROM object_versions v JOIN objects o ON o.id = v.object_id WHERE {CONDITIONS} \
             AND v.content_hash IN ({}) ORDER BY o.path_text, o.id",
            list_placeholders(groups.len(), 5)
        );
        let files = on_read_pool!(self, pool => {
            let mut query = sqlx::query_as::<_, DuplicateFileRow>(&files_sql)
                .bind(filter.owner_id)
                .bind(filter.bucket_id)
                .bind(filter.job_id)
                .bind(filter.min_size_bytes);
            for group in &groups {
                query = query.bind(&group.content_hash);
            }
            query.fetch_all(pool).await
        })
        .map_err(|e| from_sqlx(e, "duplicates"))?;
        Ok((assemble_groups(groups, files), more))
    }
}

/// Distributes the files over their groups, keeping the groups' order.
fn assemble_groups(groups: Vec<GroupRow>, files: Vec<DuplicateFileRow>) -> Vec<DuplicateGroup> {
    let mut by_hash: HashMap<String, Vec<DuplicateFile>> = HashMap::new();
    for file in files {
        by_hash
            .entry(file.content_hash)
            .or_default()
            .push(DuplicateFile {
                object_id: file.object_id,
                path_text: file.path_text,
                job_id: file.job_id,
            });
    }
    groups
        .into_iter()
        .map(|group| DuplicateGroup {
            files: by_hash.remove(&group.content_hash).unwrap_or_default(),
            saved_bytes: group.size_bytes.saturating_mul(group.copies - 1),
            content_hash: group.content_hash,
            size_bytes: group.size_bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, hash: &str) -> SnapshotEntry {
        SnapshotEntry {
            path: path.as_bytes().to_vec(),
            kind: FileKind::Regular,
            size_bytes: 3,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: None,
            content_hash: hash.to_string(),
            symlink_target: None,
            storage_key: String::new(),
        }
    }

    fn version_of(object_id: Uuid, run: Uuid, e: &SnapshotEntry) -> ObjectVersion {
        ObjectVersion {
            id: new_id(),
            object_id,
            kind: e.kind,
            size_bytes: e.size_bytes,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            content_hash: e.content_hash.clone(),
            symlink_target: e.symlink_target.clone(),
            storage_key: e.storage_key.clone(),
            first_run_id: run,
            last_run_id: None,
            deleted: false,
            create_time: now_micros(),
        }
    }

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(values_placeholders(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(list_placeholders(3, 2), "$2, $3, $4");
    }

    #[test]
    fn plan_writes_only_changes() {
        let first = new_id();
        let second = new_id();
        let (a, b, c) = (new_id(), new_id(), new_id());
        let old = [entry("a", "h1"), entry("b", "h2"), entry("c", "h3")];
        let existing: HashMap<Vec<u8>, Uuid> =
            [(b"a".to_vec(), a), (b"b".to_vec(), b), (b"c".to_vec(), c)]
                .into_iter()
                .collect();
        let current: HashMap<Uuid, ObjectVersion> = [a, b, c]
            .iter()
            .zip(&old)
            .map(|(id, e)| (*id, version_of(*id, first, e)))
            .collect();
        let new = [entry("a", "h1"), entry("b", "changed"), entry("d", "h4")];
        let plan = plan_snapshot(second, &new, None, &existing, &current).expect("plan");
        assert_eq!(plan.stats.unchanged, 1);
        assert_eq!(plan.stats.new_objects, 1);
        assert_eq!(plan.stats.deleted, 1);
        assert_eq!(plan.stats.new_versions, 3);
        let mut closed = plan.close.clone();
        closed.sort();
        let mut expected = vec![b, c];
        expected.sort();
        assert_eq!(closed, expected);
        // An older run may not be committed after a newer one.
        assert!(plan_snapshot(Uuid::nil(), &new, None, &existing, &current).is_err());
    }
}
