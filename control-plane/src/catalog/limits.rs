//! Per-owner limits: the configured value of each and what an owner holds.
//! Every count leaves admins out in the SQL itself (an admin's count is 0),
//! so no caller can forget the exemption.

use uuid::Uuid;

use super::error::from_sqlx;
use super::{on_pool, Catalog};
use crate::error::{DomainError, DomainResult};
use crate::model::limits::OwnerLimit;

/// Queued runs of the owner `$1`, or 0 when the owner is an admin. Also run
/// inside the scheduler's firing transaction.
pub(crate) const QUEUED_RUNS_OF_LIMITED_OWNER: &str =
    "SELECT COUNT(*) FROM runs WHERE owner_id = $1 AND state = 'queued' \
     AND NOT EXISTS (SELECT 1 FROM users WHERE id = $1 AND admin)";

const JOBS_OF_LIMITED_OWNER: &str = "SELECT COUNT(*) FROM jobs WHERE owner_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM users WHERE id = $1 AND admin)";

/// Unexpired tokens of the user `$1` at `$2`: an expired token no longer
/// opens anything, so it does not count.
const TOKENS_OF_LIMITED_OWNER: &str = "SELECT COUNT(*) FROM api_tokens WHERE user_id = $1 \
     AND (expire_time IS NULL OR expire_time > $2) \
     AND NOT EXISTS (SELECT 1 FROM users WHERE id = $1 AND admin)";

impl Catalog {
    /// The limit currently configured for `limit` (its default when unset).
    pub async fn owner_limit(&self, limit: OwnerLimit) -> DomainResult<i64> {
        let configured = self.configuration_value(limit.key()).await?;
        Ok(limit.from_configured(configured.as_deref()))
    }

    /// How much of `limit`'s resource `owner_id` holds in the catalog (0 for
    /// an admin). Watch streams are not in the catalog: see
    /// `runs::watch_slots`.
    pub async fn owned_count(&self, limit: OwnerLimit, owner_id: Uuid) -> DomainResult<i64> {
        let sql = match limit {
            OwnerLimit::QueuedRuns => QUEUED_RUNS_OF_LIMITED_OWNER,
            OwnerLimit::Jobs => JOBS_OF_LIMITED_OWNER,
            OwnerLimit::ApiTokens => {
                let now = self.now().await?;
                return on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
                    TOKENS_OF_LIMITED_OWNER
                )
                .bind(owner_id)
                .bind(now)
                .fetch_one(pool)
                .await)
                .map_err(|e| from_sqlx(e, "owner limit"));
            }
            OwnerLimit::WatchStreams => {
                return Err(DomainError::Internal(
                    "watch streams are counted per replica, not in the catalog".into(),
                ))
            }
        };
        on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(sql)
            .bind(owner_id)
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "owner limit"))
    }

    /// `ResourceExhausted` when `owner_id` (not an admin) already holds as
    /// much of `limit`'s resource as allowed, so one more would exceed it.
    ///
    /// The count and the insert that follows are separate statements, so
    /// callers racing each other may overshoot by their number; the limit is
    /// a guard against floods, not an exact quota.
    pub async fn check_owner_limit(&self, limit: OwnerLimit, owner_id: Uuid) -> DomainResult<()> {
        let allowed = self.owner_limit(limit).await?;
        let held = self.owned_count(limit, owner_id).await?;
        if held >= allowed {
            return Err(limit.exhausted(allowed));
        }
        Ok(())
    }
}
