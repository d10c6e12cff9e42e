//! Catalog queries for retention policies and object retentions. Lookups take
//! an owner scope (`None` for admins); rows outside it are not found.
//! Planning lives in [`plan`].

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    count_references_in_tx, fetch_scoped, from_json, in_transaction, new_id, now_micros, on_pool,
    to_json, Catalog, Page,
};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::retention::{
    HoldSpec, KeepRules, ObjectRetention, PolicySpec, RetainedKind, RetainedResource,
    RetentionPolicy,
};

mod plan;

const POLICY_COLUMNS: &str = "id, owner_id, name, description, keep_last, keep_hourly, \
     keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within_seconds, keep_tags, \
     time_zone, create_time, update_time";

const RETENTION_COLUMNS: &str = "id, owner_id, resource_kind, resource_id, policy_id, \
     retain_until_time, legal_hold, create_time, update_time";

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    description: String,
    keep_last: i32,
    keep_hourly: i32,
    keep_daily: i32,
    keep_weekly: i32,
    keep_monthly: i32,
    keep_yearly: i32,
    keep_within_seconds: i64,
    keep_tags: String,
    time_zone: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<PolicyRow> for RetentionPolicy {
    type Error = DomainError;

    fn try_from(row: PolicyRow) -> DomainResult<Self> {
        Ok(RetentionPolicy {
            id: row.id,
            spec: PolicySpec {
                owner_id: row.owner_id,
                name: row.name,
                description: row.description,
                rules: KeepRules {
                    keep_last: row.keep_last,
                    keep_hourly: row.keep_hourly,
                    keep_daily: row.keep_daily,
                    keep_weekly: row.keep_weekly,
                    keep_monthly: row.keep_monthly,
                    keep_yearly: row.keep_yearly,
                    keep_within_seconds: row.keep_within_seconds,
                    keep_tags: from_json(&row.keep_tags, "retention_policies.keep_tags")?,
                    time_zone: row.time_zone,
                },
            },
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RetentionRow {
    id: Uuid,
    owner_id: Uuid,
    resource_kind: String,
    resource_id: Uuid,
    policy_id: Option<Uuid>,
    retain_until_time: Option<DateTime<Utc>>,
    legal_hold: bool,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<RetentionRow> for ObjectRetention {
    type Error = DomainError;

    fn try_from(row: RetentionRow) -> DomainResult<Self> {
        Ok(ObjectRetention {
            id: row.id,
            owner_id: row.owner_id,
            resource: RetainedResource {
                kind: RetainedKind::parse(&row.resource_kind)?,
                id: row.resource_id,
            },
            policy_id: row.policy_id,
            retain_until_time: row.retain_until_time,
            legal_hold: row.legal_hold,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

fn policy_name_taken(spec: &PolicySpec) -> String {
    format!("retention policy named {:?} for this owner", spec.name)
}

/// Tables and columns that refer to a retention policy, with a label for messages.
const POLICY_REFERENCES: &[(&str, &str, &str)] = &[
    ("jobs", "retention_policy_id", "jobs"),
    ("buckets", "retention_policy_id", "buckets"),
    ("object_retentions", "policy_id", "object retentions"),
];

impl Catalog {
    /// Creates a policy; `AlreadyExists` if the owner has one of that name.
    pub async fn create_retention_policy(
        &self,
        spec: &PolicySpec,
    ) -> DomainResult<RetentionPolicy> {
        let sql = format!(
            "INSERT INTO retention_policies (id, owner_id, name, description, keep_last, \
             keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, \
             keep_within_seconds, keep_tags, time_zone, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
             RETURNING {POLICY_COLUMNS}"
        );
        let rules = &spec.rules;
        let row = on_pool!(self, |pool| sqlx::query_as::<_, PolicyRow>(&sql)
            .bind(new_id())
            .bind(spec.owner_id)
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(rules.keep_last)
            .bind(rules.keep_hourly)
            .bind(rules.keep_daily)
            .bind(rules.keep_weekly)
            .bind(rules.keep_monthly)
            .bind(rules.keep_yearly)
            .bind(rules.keep_within_seconds)
            .bind(to_json(&rules.keep_tags))
            .bind(&rules.time_zone)
            .bind(now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, &policy_name_taken(spec)))?;
        RetentionPolicy::try_from(row)
    }

    /// Returns a policy by id if it is within `owner_scope`.
    pub async fn get_retention_policy(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<RetentionPolicy> {
        let sql = format!(
            "SELECT {POLICY_COLUMNS} FROM retention_policies \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: PolicyRow =
            fetch_scoped(&self.pool, &sql, id, owner_scope, "retention policy").await?;
        RetentionPolicy::try_from(row)
    }

    /// Whether a policy with this id exists and belongs to `owner_id`.
    pub async fn retention_policy_owned_by(&self, id: Uuid, owner_id: Uuid) -> DomainResult<bool> {
        match self.get_retention_policy(id, Some(owner_id)).await {
            Ok(_) => Ok(true),
            Err(DomainError::NotFound(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Lists policies by id (oldest first), of one owner or (None) of everyone.
    pub async fn list_retention_policies(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
    ) -> DomainResult<(Vec<RetentionPolicy>, String)> {
        let sql = format!(
            "SELECT {POLICY_COLUMNS} FROM retention_policies \
             WHERE ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        );
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, PolicyRow>(&sql)
            .bind(owner_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "retention policies"))?;
        page.finish_rows(rows, RetentionPolicy::try_from, |p| p.id)
    }

    /// Replaces the writable fields of a policy, provided it was not changed
    /// since `read_update_time` (else `Aborted`: read again and retry).
    pub async fn update_retention_policy(
        &self,
        id: Uuid,
        read_update_time: DateTime<Utc>,
        spec: &PolicySpec,
    ) -> DomainResult<RetentionPolicy> {
        let sql = format!(
            "UPDATE retention_policies SET name = $3, description = $4, keep_last = $5, \
             keep_hourly = $6, keep_daily = $7, keep_weekly = $8, keep_monthly = $9, \
             keep_yearly = $10, keep_within_seconds = $11, keep_tags = $12, time_zone = $13, \
             update_time = $14 WHERE id = $1 AND update_time = $2 RETURNING {POLICY_COLUMNS}"
        );
        let rules = &spec.rules;
        let row = on_pool!(self, |pool| sqlx::query_as::<_, PolicyRow>(&sql)
            .bind(id)
            .bind(read_update_time)
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(rules.keep_last)
            .bind(rules.keep_hourly)
            .bind(rules.keep_daily)
            .bind(rules.keep_weekly)
            .bind(rules.keep_monthly)
            .bind(rules.keep_yearly)
            .bind(rules.keep_within_seconds)
            .bind(to_json(&rules.keep_tags))
            .bind(&rules.time_zone)
            .bind(now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, &policy_name_taken(spec)))?
        .ok_or_else(|| DomainError::changed_concurrently("retention policy", id))?;
        RetentionPolicy::try_from(row)
    }

    /// Deletes a policy within `owner_scope`. Refused with `FailedPrecondition`
    /// while jobs, buckets, object retentions or the `default_retention_policy_id`
    /// configuration refer to it.
    pub async fn delete_retention_policy(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<()> {
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let found: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM retention_policies WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)",
            )
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "retention policy"))?;
            if found.is_none() {
                return Err(DomainError::not_found("retention policy", id));
            }
            for (table, column, label) in POLICY_REFERENCES {
                let count = count_references_in_tx!(tx, table, column, id);
                if count > 0 {
                    return Err(DomainError::FailedPrecondition(format!(
                        "retention policy {id} is still used by {count} {label}; detach it first"
                    )));
                }
            }
            let default: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM configurations WHERE key = 'default_retention_policy_id' AND value = $1")
                .bind(id.to_string()).fetch_one(&mut *tx).await
                .map_err(|e| from_sqlx(e, "configurations"))?;
            if default > 0 {
                return Err(DomainError::FailedPrecondition(format!(
                    "retention policy {id} is the default_retention_policy_id configuration; change that first"
                )));
            }
            sqlx::query("DELETE FROM retention_policies WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "retention policy"))?;
            Ok(())
        }))
    }

    /// The owner of an object or object version (a version's object's owner),
    /// or `None` if it does not exist.
    pub async fn retained_resource_owner(
        &self,
        resource: RetainedResource,
    ) -> DomainResult<Option<Uuid>> {
        let sql = match resource.kind {
            RetainedKind::Object => "SELECT owner_id FROM objects WHERE id = $1",
            RetainedKind::ObjectVersion => {
                "SELECT o.owner_id FROM object_versions v JOIN objects o ON o.id = v.object_id \
                 WHERE v.id = $1"
            }
        };
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(sql)
            .bind(resource.id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, resource.kind.as_str()))
    }

    /// Puts a resource owned by `owner_id` under retention.
    pub async fn create_object_retention(
        &self,
        owner_id: Uuid,
        resource: RetainedResource,
        hold: &HoldSpec,
    ) -> DomainResult<ObjectRetention> {
        let sql = format!(
            "INSERT INTO object_retentions (id, owner_id, resource_kind, resource_id, policy_id, \
             retain_until_time, legal_hold, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {RETENTION_COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, RetentionRow>(&sql)
            .bind(new_id())
            .bind(owner_id)
            .bind(resource.kind.as_str())
            .bind(resource.id)
            .bind(hold.policy_id)
            .bind(hold.retain_until_time)
            .bind(hold.legal_hold)
            .bind(now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object retention"))?;
        ObjectRetention::try_from(row)
    }

    /// Returns an object retention by id if it is within `owner_scope`.
    pub async fn get_object_retention(
        &self,
        id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<ObjectRetention> {
        let sql = format!(
            "SELECT {RETENTION_COLUMNS} FROM object_retentions \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: RetentionRow =
            fetch_scoped(&self.pool, &sql, id, owner_scope, "object retention").await?;
        ObjectRetention::try_from(row)
    }

    /// Lists object retentions by id within `owner_scope`, optionally of one
    /// resource and/or one policy.
    pub async fn list_object_retentions(
        &self,
        page: Page,
        owner_scope: Option<Uuid>,
        resource: Option<RetainedResource>,
        policy_id: Option<Uuid>,
    ) -> DomainResult<(Vec<ObjectRetention>, String)> {
        let sql = format!(
            "SELECT {RETENTION_COLUMNS} FROM object_retentions \
             WHERE ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR id > $2) \
             AND ($3 IS NULL OR resource_kind = $3) AND ($4 IS NULL OR resource_id = $4) \
             AND ($5 IS NULL OR policy_id = $5) ORDER BY id LIMIT $6"
        );
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, RetentionRow>(&sql)
            .bind(owner_scope)
            .bind(page.after)
            .bind(resource.map(|r| r.kind.as_str()))
            .bind(resource.map(|r| r.id))
            .bind(policy_id)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object retentions"))?;
        page.finish_rows(rows, ObjectRetention::try_from, |r| r.id)
    }

    /// Replaces the writable fields of an object retention, provided it was not
    /// changed since `read_update_time` (else `Aborted`: read again and retry).
    pub async fn update_object_retention(
        &self,
        id: Uuid,
        read_update_time: DateTime<Utc>,
        hold: &HoldSpec,
    ) -> DomainResult<ObjectRetention> {
        let sql = format!(
            "UPDATE object_retentions SET policy_id = $3, retain_until_time = $4, \
             legal_hold = $5, update_time = $6 WHERE id = $1 AND update_time = $2 \
             RETURNING {RETENTION_COLUMNS}"
        );
        let row = on_pool!(self, |pool| sqlx::query_as::<_, RetentionRow>(&sql)
            .bind(id)
            .bind(read_update_time)
            .bind(hold.policy_id)
            .bind(hold.retain_until_time)
            .bind(hold.legal_hold)
            .bind(now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "object retention"))?
        .ok_or_else(|| DomainError::changed_concurrently("object retention", id))?;
        ObjectRetention::try_from(row)
    }

    /// Removes an object retention that was not changed since `read_update_time`
    /// (the caller checked, on that state, that it no longer holds anything).
    pub async fn delete_object_retention(
        &self,
        id: Uuid,
        read_update_time: DateTime<Utc>,
    ) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM object_retentions WHERE id = $1 AND update_time = $2"
        )
        .bind(id)
        .bind(read_update_time)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "object retention"))?;
        if deleted == 0 {
            return Err(DomainError::changed_concurrently("object retention", id));
        }
        Ok(())
    }
}
