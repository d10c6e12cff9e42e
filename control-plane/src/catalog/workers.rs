//! Workers: how they introduce themselves, and what the catalog knows of
//! them. The leases they hold are `leases.rs`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::{new_id, on_pool, to_json, Catalog};
use crate::error::{DomainError, DomainResult};
use crate::model::worker_class::WorkerClass;

/// A worker as it introduces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// Stable name.
    pub name: String,
    /// Labels for selectors.
    pub labels: BTreeMap<String, String>,
    /// Parallel slots.
    pub slots: i32,
    /// Source roots it may read.
    pub source_roots: Vec<String>,
    /// Software version.
    pub version: String,
    /// The worker token the session authenticated with (`None` only in
    /// loopback no-auth mode).
    pub token_id: Option<Uuid>,
    /// Which runs it takes.
    pub class: WorkerClass,
}

/// A worker as the catalog knows it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct WorkerRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Labels (JSON).
    pub labels: String,
    /// Slots.
    pub slots: i32,
    /// Source roots (JSON).
    pub source_roots: String,
    /// Version.
    pub version: String,
    /// Session open.
    pub connected: bool,
    /// Last message.
    pub last_seen_time: DateTime<Utc>,
}

/// The oldest `last_seen_time` of a worker still counted connected at `now`.
/// A worker's session touches its row with every message, at least every
/// third of a TTL; a row not touched for a TTL belongs to a session that is
/// gone, even if its replica died before it could say so. Every replica
/// judges alike, from the catalog alone.
pub fn fresh_since(now: DateTime<Utc>, ttl: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_sub_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Catalog {
    /// Registers (or re-registers, by name) a worker and marks it connected.
    ///
    /// A worker belongs to the token that first registered it, and a token
    /// to one worker: a name registered with another token, or a token
    /// already registered under another name, is `PERMISSION_DENIED` and
    /// changes nothing. One statement decides, so two sessions racing for
    /// a name or a token cannot both win.
    pub async fn register_worker(&self, worker: &WorkerRegistration) -> DomainResult<Uuid> {
        let now = self.now().await?;
        let registered = on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(include_str!(
            "sql/workers/register.sql"
        ))
        .bind(new_id())
        .bind(&worker.name)
        .bind(to_json(&worker.labels))
        .bind(worker.slots)
        .bind(to_json(&worker.source_roots))
        .bind(&worker.version)
        .bind(now)
        .bind(worker.token_id)
        .bind(worker.class.as_str())
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "worker"));
        match registered {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(DomainError::PermissionDenied(format!(
                "worker {:?} is registered with another credential",
                worker.name
            ))),
            // The unique index on the token: it is bound to another name.
            Err(DomainError::AlreadyExists(_)) => Err(DomainError::PermissionDenied(
                "this worker token belongs to another worker; give every worker its own token"
                    .to_string(),
            )),
            Err(other) => Err(other),
        }
    }

    /// The token `id` is registered with; `None` for a worker registered
    /// without one (anonymous mode) or not registered at all.
    pub async fn worker_token(&self, id: Uuid) -> DomainResult<Option<Uuid>> {
        let token: Option<Option<Uuid>> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT token_id FROM workers WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "worker"))?;
        Ok(token.flatten())
    }

    /// Records that a worker's session is open or closed, and when it was last heard of.
    pub async fn touch_worker(&self, id: Uuid, connected: bool) -> DomainResult<()> {
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(
            "UPDATE workers SET connected = $2, last_seen_time = $3 WHERE id = $1"
        )
        .bind(id)
        .bind(connected)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "worker"))?;
        Ok(())
    }

    /// Workers seen since `since` (all when `None`), by name. A worker
    /// marked connected but not seen since is left out: its session is gone.
    pub async fn list_workers(&self, since: Option<DateTime<Utc>>) -> DomainResult<Vec<WorkerRow>> {
        on_pool!(self, |pool| sqlx::query_as::<_, WorkerRow>(
            "SELECT id, name, labels, slots, source_roots, version, connected, last_seen_time FROM workers \
             WHERE ($1 IS NULL OR last_seen_time >= $1) ORDER BY name")
            .bind(since)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "workers"))
    }
}
