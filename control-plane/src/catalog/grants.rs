//! Catalog queries for data-plane grants. Lookups take a grantee scope
//! (`None` for admins): a grant of another user is reported as not found.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{fetch_scoped, from_json, new_id, now_micros, on_pool, on_read_pool, to_json};
use super::{Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::grant::{Grant, GrantSpec};

const COLUMNS: &str = "id, grantee_id, worker_selector, root, uses, restore_ownership, \
     restore_special_bits, creator_id, create_time";

#[derive(sqlx::FromRow)]
struct GrantRow {
    id: Uuid,
    grantee_id: Uuid,
    worker_selector: String,
    root: String,
    uses: String,
    restore_ownership: bool,
    restore_special_bits: bool,
    creator_id: Uuid,
    create_time: DateTime<Utc>,
}

impl TryFrom<GrantRow> for Grant {
    type Error = DomainError;

    fn try_from(row: GrantRow) -> DomainResult<Self> {
        Ok(Grant {
            id: row.id,
            spec: GrantSpec {
                grantee_id: row.grantee_id,
                worker_selector: from_json(&row.worker_selector, "grants.worker_selector")?,
                root: row.root,
                uses: from_json(&row.uses, "grants.uses")?,
                restore_ownership: row.restore_ownership,
                restore_special_bits: row.restore_special_bits,
            },
            creator_id: row.creator_id,
            create_time: row.create_time,
        })
    }
}

impl Catalog {
    /// Stores a validated grant created by `creator_id`.
    pub async fn create_grant(&self, spec: &GrantSpec, creator_id: Uuid) -> DomainResult<Grant> {
        let sql = format!(
            "INSERT INTO grants ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING {COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, GrantRow>(&sql)
            .bind(new_id())
            .bind(spec.grantee_id)
            .bind(to_json(&spec.worker_selector))
            .bind(&spec.root)
            .bind(to_json(&spec.uses))
            .bind(spec.restore_ownership)
            .bind(spec.restore_special_bits)
            .bind(creator_id)
            .bind(now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "grant"))?;
        Grant::try_from(row)
    }

    /// A grant by id, if its grantee is within `grantee_scope`.
    pub async fn get_grant(&self, id: Uuid, grantee_scope: Option<Uuid>) -> DomainResult<Grant> {
        let sql = format!(
            "SELECT {COLUMNS} FROM grants WHERE id = $1 AND ($2 IS NULL OR grantee_id = $2)"
        );
        let row: GrantRow = fetch_scoped(&self.read_pool, &sql, id, grantee_scope, "grant").await?;
        Grant::try_from(row)
    }

    /// Lists grants by id (oldest first), of one grantee or (None) of everyone.
    pub async fn list_grants(
        &self,
        page: Page,
        grantee_id: Option<Uuid>,
    ) -> DomainResult<(Vec<Grant>, String)> {
        let sql = format!(
            "SELECT {COLUMNS} FROM grants WHERE ($1 IS NULL OR grantee_id = $1) \
             AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, GrantRow>(&sql)
            .bind(grantee_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "grants"))?;
        page.finish_rows(rows, Grant::try_from, |g| g.id)
    }

    /// Every grant of one user, read from the writer so that a grant deleted
    /// a moment ago is never used.
    pub async fn grants_of(&self, grantee_id: Uuid) -> DomainResult<Vec<Grant>> {
        let sql = format!("SELECT {COLUMNS} FROM grants WHERE grantee_id = $1 ORDER BY id");
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, GrantRow>(&sql)
            .bind(grantee_id)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "grants"))?;
        rows.into_iter().map(Grant::try_from).collect()
    }

    /// Deletes a grant.
    pub async fn delete_grant(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query("DELETE FROM grants WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "grant"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("grant", id));
        }
        Ok(())
    }
}
