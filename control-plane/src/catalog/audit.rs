//! Catalog queries for the audit log: append, settle a call's outcome, list.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{on_pool, on_read_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::DomainResult;
use crate::model::audit::{ActionFilter, AuditEvent, AuditFilter};

const AUDIT_COLUMNS: &str =
    "id, event_time, actor_user_id, actor_token_id, action, target_ids, result, peer, detail";

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    event_time: DateTime<Utc>,
    actor_user_id: Option<Uuid>,
    actor_token_id: Option<Uuid>,
    action: String,
    target_ids: String,
    result: String,
    peer: String,
    detail: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(row: AuditRow) -> Self {
        AuditEvent {
            id: row.id,
            time: row.event_time,
            actor_user_id: row.actor_user_id,
            actor_token_id: row.actor_token_id,
            action: row.action,
            target_ids: AuditEvent::parse_targets(&row.target_ids),
            result: row.result,
            peer: row.peer,
            detail: row.detail,
        }
    }
}

impl Catalog {
    /// Appends an event. With a `dedup_key`, an event already recorded under
    /// the same key (by another replica, or for a repeated notification) is
    /// left as it is; returns whether this call added the row.
    pub async fn record_audit_event(
        &self,
        event: &AuditEvent,
        dedup_key: Option<&str>,
    ) -> DomainResult<bool> {
        let sql = format!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS}, dedup_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (dedup_key) DO NOTHING"
        );
        let added = on_pool!(self, |pool| sqlx::query(&sql)
            .bind(event.id)
            .bind(event.time)
            .bind(event.actor_user_id)
            .bind(event.actor_token_id)
            .bind(&event.action)
            .bind(event.target_text())
            .bind(&event.result)
            .bind(&event.peer)
            .bind(&event.detail)
            .bind(dedup_key)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "audit event"))?;
        Ok(added > 0)
    }

    /// Records the outcome of a call whose event was appended before it ran,
    /// and the targets learnt from its response.
    pub async fn settle_audit_event(
        &self,
        id: Uuid,
        result: &str,
        target_ids: &[Uuid],
    ) -> DomainResult<()> {
        let targets: Vec<String> = target_ids.iter().map(Uuid::to_string).collect();
        on_pool!(self, |pool| sqlx::query(
            "UPDATE audit_events SET result = $2, target_ids = $3 WHERE id = $1"
        )
        .bind(id)
        .bind(result)
        .bind(targets.join(" "))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "audit event"))?;
        Ok(())
    }

    /// Lists events newest first.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        page: Page,
    ) -> DomainResult<(Vec<AuditEvent>, String)> {
        let (exact, prefix) = match &filter.action {
            Some(ActionFilter::Exact(action)) => (Some(action.as_str()), None),
            Some(ActionFilter::Prefix(prefix)) => (None, Some(prefix.as_str())),
            None => (None, None),
        };
        // Target ids are UUIDs (validated), so the pattern holds no wildcard.
        let target = filter.target_id.map(|id| format!("%{id}%"));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE ($1 IS NULL OR actor_user_id = $1) \
             AND ($2 IS NULL OR action = $2) \
             AND ($3 IS NULL OR substr(action, 1, length($3)) = $3) \
             AND ($4 IS NULL OR target_ids LIKE $4) AND ($5 IS NULL OR result = $5) \
             AND ($6 IS NULL OR event_time >= $6) AND ($7 IS NULL OR event_time < $7) \
             AND ($8 IS NULL OR id < $8) ORDER BY id DESC LIMIT $9"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, AuditRow>(&sql)
            .bind(filter.actor_user_id)
            .bind(exact)
            .bind(prefix)
            .bind(target.as_deref())
            .bind(filter.result.as_deref())
            .bind(filter.start_time)
            .bind(filter.end_time)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "audit events"))?;
        page.finish_rows(rows, |row| Ok(AuditEvent::from(row)), |event| event.id)
    }
}
