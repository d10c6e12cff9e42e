//! Reading objects and their versions: the object and version rows, lists,
//! and duplicates. Nothing here writes; snapshots are written by
//! `snapshots/`.
//!
//! See [`crate::model::object`] for the version-validity rule: a version is
//! valid in snapshot `R` when `first_run_id <= R AND (last_run_id IS NULL OR
//! R < last_run_id)`, comparing UUIDv7 run ids directly (both backends compare
//! them bytewise, which is time order).
//!
//! Lists of objects and snapshot files are ordered by `(path_text, id)`; the
//! page token is the id of the last object returned and the next page resumes
//! after that object's `(path_text, id)`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::placeholders::{list_placeholders, BATCH_ROWS};
use super::{fetch_scoped, on_pool, on_read_pool, Catalog, Page};
use crate::error::{DomainError, DomainResult};
use crate::model::object::{
    mtime_ns, parse_kind, BackupObject, DuplicateFile, DuplicateFilter, DuplicateGroup, EntryKind,
    FileAttributes, LatestFilter, ObjectFilter, ObjectVersion,
};
use crate::model::tag::TagMatch;

/// An object's columns, with its repository's location (objects name the
/// repository by id; the location is what callers read).
const OBJECT_COLUMNS: &str = "o.id, o.owner_id, o.bucket_id, o.job_id, \
     (SELECT r.repository FROM repositories r WHERE r.id = o.repository_id) AS repository, \
     o.path, o.path_text, o.create_time";

pub(crate) const VERSION_COLUMNS: &str =
    "v.id, v.object_id, v.kind, v.size_bytes, v.mode, v.uid, v.gid, \
     v.mtime, v.content_hash, v.symlink_target, v.storage_key, v.first_run_id, v.last_run_id, \
     v.deleted, v.create_time";

/// The id of the latest version of object `o`: the current one (open range),
/// else the newest.
const LATEST_VERSION_OF_O: &str =
    "(SELECT lv.id FROM object_versions lv WHERE lv.object_id = o.id \
     ORDER BY CASE WHEN lv.last_run_id IS NULL THEN 0 ELSE 1 END, lv.id DESC LIMIT 1)";

/// Keyset condition resuming after object `$n` in `(path_text, id)` order.
pub(crate) fn after_object(param: usize) -> String {
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

/// Binds `$1` to `$5` of [`object_conditions`] from an [`ObjectFilter`] and
/// a page.
macro_rules! bind_object_conditions {
    ($query:expr, $filter:expr, $page:expr) => {
        $query
            .bind($filter.owner_id)
            .bind($filter.bucket_id)
            .bind($filter.job_id)
            .bind(&$filter.path_prefix)
            .bind($page.after)
    };
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
    pub(crate) id: Uuid,
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

/// A kind as the catalog stores it; anything else is corruption.
pub(crate) fn parse_stored_kind(value: &str) -> DomainResult<EntryKind> {
    parse_kind(value)
        .ok_or_else(|| DomainError::Internal(format!("unknown file kind {value:?} in catalog")))
}

impl TryFrom<VersionRow> for ObjectVersion {
    type Error = DomainError;

    fn try_from(row: VersionRow) -> DomainResult<Self> {
        let size = u64::try_from(row.size_bytes).map_err(|_| {
            DomainError::Internal(format!(
                "column object_versions.size_bytes holds {}",
                row.size_bytes
            ))
        })?;
        Ok(ObjectVersion {
            id: row.id,
            object_id: row.object_id,
            attributes: FileAttributes {
                kind: parse_stored_kind(&row.kind)?,
                size,
                mode: column_u32(row.mode, "object_versions.mode")?,
                uid: column_u32(row.uid, "object_versions.uid")?,
                gid: column_u32(row.gid, "object_versions.gid")?,
                // Deletion markers store none.
                mtime_ns: row.mtime.map_or(0, mtime_ns),
                content_hash: (!row.content_hash.is_empty()).then_some(row.content_hash),
                symlink_target: row.symlink_target,
            },
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

impl Catalog {
    async fn latest_versions(&self, ids: &[Uuid]) -> DomainResult<HashMap<Uuid, ObjectVersion>> {
        let select = format!(
            "SELECT {VERSION_COLUMNS} FROM objects o JOIN object_versions v ON v.id = {LATEST_VERSION_OF_O} \
             WHERE o.id IN"
        );
        self.versions_in(&select, ids, |version| version.object_id)
            .await
    }

    /// The versions `select` (a statement of [`VERSION_COLUMNS`] ending in
    /// `IN`) picks for `ids`, a batch at a time, keyed by `key_of`.
    pub(crate) async fn versions_in(
        &self,
        select: &str,
        ids: &[Uuid],
        key_of: fn(&ObjectVersion) -> Uuid,
    ) -> DomainResult<HashMap<Uuid, ObjectVersion>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_ROWS) {
            let sql = format!("{select} ({})", list_placeholders(chunk.len(), 1));
            let rows = on_pool!(self, |pool| {
                let mut query = sqlx::query_as::<_, VersionRow>(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(pool).await
            })
            .map_err(|e| from_sqlx(e, "object versions"))?;
            for version in versions_from_rows(rows)? {
                found.insert(key_of(&version), version);
            }
        }
        Ok(found)
    }

    /// A page of objects with their latest versions, from the rows of a
    /// list query (one more than the page).
    async fn page_of_objects(
        &self,
        rows: Vec<ObjectRow>,
        page: Page,
    ) -> DomainResult<(Vec<BackupObject>, String)> {
        let (rows, token) = page.finish(rows, |row| row.id);
        Ok((self.with_latest_versions(rows).await?, token))
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
        let rows = on_read_pool!(self, |pool| bind_object_conditions!(
            sqlx::query_as::<_, ObjectRow>(&sql),
            filter,
            page
        )
        .bind(tag.map(|t| t.key.as_str()))
        .bind(tag.and_then(|t| t.value.as_deref()))
        .bind(page.limit())
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "objects"))?;
        self.page_of_objects(rows, page).await
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
        let row: ObjectRow = fetch_scoped(&self.read_pool, &sql, id, owner_scope, "object").await?;
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
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, VersionRow>(&sql)
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
        let found = on_read_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM objects WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        )
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
        let rows = on_read_pool!(self, |pool| bind_object_conditions!(
            sqlx::query_as::<_, ObjectRow>(&sql),
            objects,
            page
        )
        .bind(filter.include_deleted)
        .bind(&filter.tag_key)
        .bind(&filter.tag_value)
        .bind(page.limit())
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "objects"))?;
        self.page_of_objects(rows, page).await
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
        let mut groups = on_read_pool!(self, |pool| sqlx::query_as::<_, GroupRow>(&sql)
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
        let files = on_read_pool!(self, |pool| {
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
