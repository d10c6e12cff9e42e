//! Catalog queries for tags.
//!
//! Every query takes an optional owner scope (`None` for admins): a tag owned
//! by someone else is reported as not found, never as forbidden.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{new_id, now_micros, on_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::tag::{NewTag, ResourceKind, ResourceRef, Tag, TagFilter, MAX_TAGS_PER_RESOURCE};

const TAG_COLUMNS: &str =
    "id, owner_id, resource_kind, resource_id, key, value, create_time, update_time";

#[derive(sqlx::FromRow)]
struct TagRow {
    id: Uuid,
    owner_id: Uuid,
    resource_kind: String,
    resource_id: Uuid,
    key: String,
    value: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<TagRow> for Tag {
    type Error = DomainError;

    fn try_from(row: TagRow) -> DomainResult<Self> {
        Ok(Tag {
            id: row.id,
            resource: ResourceRef {
                kind: ResourceKind::parse(&row.resource_kind)?,
                id: row.resource_id,
            },
            key: row.key,
            value: row.value,
            owner_id: row.owner_id,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

/// The query returning the owner of a resource of `kind` with id `$1`.
fn owner_query(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Run => "SELECT owner_id FROM runs WHERE id = $1",
        ResourceKind::Object => "SELECT owner_id FROM objects WHERE id = $1",
        ResourceKind::ObjectVersion => {
            "SELECT o.owner_id FROM object_versions v JOIN objects o ON o.id = v.object_id WHERE v.id = $1"
        }
        ResourceKind::Job => "SELECT owner_id FROM jobs WHERE id = $1",
        ResourceKind::Bucket => "SELECT owner_id FROM buckets WHERE id = $1",
    }
}

impl Catalog {
    /// The owner of a taggable resource, or `None` when it does not exist.
    pub async fn resource_owner(&self, resource: ResourceRef) -> DomainResult<Option<Uuid>> {
        let sql = owner_query(resource.kind);
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(sql)
            .bind(resource.id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, resource.kind.as_str()))
    }

    /// Creates a tag owned by `owner_id` (the resource's owner). Refuses a
    /// 65th tag on a resource with `FailedPrecondition` and a second tag with
    /// the same key with `AlreadyExists`. The limit is checked in the same
    /// statement as the insert.
    pub async fn create_tag(&self, new: &NewTag, owner_id: Uuid) -> DomainResult<Tag> {
        let now = now_micros();
        let sql = format!(
            "INSERT INTO tags (id, owner_id, resource_kind, resource_id, key, value, create_time, update_time) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $7 \
             WHERE (SELECT COUNT(*) FROM tags WHERE resource_kind = $3 AND resource_id = $4) < $8 \
             RETURNING {TAG_COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, TagRow>(&sql)
            .bind(new_id())
            .bind(owner_id)
            .bind(new.resource.kind.as_str())
            .bind(new.resource.id)
            .bind(&new.key)
            .bind(&new.value)
            .bind(now)
            .bind(MAX_TAGS_PER_RESOURCE)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, &format!("tag with key {:?} on this resource", new.key)))?;
        let row = row.ok_or_else(|| {
            DomainError::FailedPrecondition(format!(
                "{} {} already carries {MAX_TAGS_PER_RESOURCE} tags, the most a resource may have",
                new.resource.kind.as_str().replace('_', " "),
                new.resource.id
            ))
        })?;
        Tag::try_from(row)
    }

    /// Returns a tag by id, if it is within `owner_scope`.
    pub async fn get_tag(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<Tag> {
        let sql = format!(
            "SELECT {TAG_COLUMNS} FROM tags WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, TagRow>(&sql)
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "tag"))?
        .ok_or_else(|| DomainError::not_found("tag", id))?;
        Tag::try_from(row)
    }

    /// Lists tags by id.
    pub async fn list_tags(
        &self,
        filter: &TagFilter,
        page: Page,
    ) -> DomainResult<(Vec<Tag>, String)> {
        let sql = format!(
            "SELECT {TAG_COLUMNS} FROM tags \
             WHERE ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR resource_kind = $2) \
             AND ($3 IS NULL OR resource_id = $3) AND ($4 IS NULL OR key = $4) \
             AND ($5 IS NULL OR value = $5) AND ($6 IS NULL OR id > $6) \
             ORDER BY id LIMIT $7"
        );
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, TagRow>(&sql)
            .bind(filter.owner_id)
            .bind(filter.kind.map(ResourceKind::as_str))
            .bind(filter.resource_id)
            .bind(&filter.key)
            .bind(&filter.value)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "tags"))?;
        page.finish_rows(rows, Tag::try_from, |t| t.id)
    }

    /// Changes a tag's value.
    pub async fn update_tag_value(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
        value: &str,
    ) -> DomainResult<Tag> {
        let sql = format!(
            "UPDATE tags SET value = $3, update_time = $4 \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2) RETURNING {TAG_COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, TagRow>(&sql)
            .bind(id)
            .bind(owner_scope)
            .bind(value)
            .bind(now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "tag"))?
        .ok_or_else(|| DomainError::not_found("tag", id))?;
        Tag::try_from(row)
    }

    /// Deletes a tag.
    pub async fn delete_tag(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM tags WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        )
        .bind(id)
        .bind(owner_scope)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "tag"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("tag", id));
        }
        Ok(())
    }
}
