//! Users and API tokens.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    count_references_in_tx, in_transaction, new_id, now_micros, on_pool, on_read_pool, Catalog,
    Page,
};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::user::{
    ApiToken, NewApiToken, NewUser, TokenIdentity, TokenScope, User, UserPatch,
};

const USER_COLUMNS: &str = "id, username, email, admin, create_time, update_time";

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    user_id: Uuid,
    display_name: String,
    scope: String,
    prefix: String,
    create_time: DateTime<Utc>,
    expire_time: Option<DateTime<Utc>>,
    last_used_time: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = DomainError;

    fn try_from(row: TokenRow) -> DomainResult<Self> {
        Ok(ApiToken {
            id: row.id,
            user_id: row.user_id,
            display_name: row.display_name,
            scope: TokenScope::parse(&row.scope)?,
            prefix: row.prefix,
            create_time: row.create_time,
            expire_time: row.expire_time,
            last_used_time: row.last_used_time,
        })
    }
}

/// Tables holding rows owned by a user, in the order a forced delete empties them.
const OWNED_TABLES: &[&str] = &[
    "object_retentions",
    "tags",
    "backup_metadata",
    "objects",
    "runs",
    "jobs",
    "buckets",
    "retention_policies",
];

impl Catalog {
    /// Creates a user.
    pub async fn create_user(&self, new: &NewUser) -> DomainResult<User> {
        let now = now_micros();
        let sql = format!(
            "INSERT INTO users (id, username, email, admin, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {USER_COLUMNS}"
        );
        on_pool!(self, |pool| sqlx::query_as::<_, User>(&sql)
            .bind(new_id())
            .bind(&new.username)
            .bind(&new.email)
            .bind(new.admin)
            .bind(now)
            .fetch_one(pool)
            .await)
        .map_err(|e| {
            from_sqlx(
                e,
                &format!(
                    "user with username {:?} or email {:?}",
                    new.username, new.email
                ),
            )
        })
    }

    /// Returns a user by id.
    pub async fn get_user(&self, id: Uuid) -> DomainResult<User> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        on_pool!(self, |pool| sqlx::query_as::<_, User>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "user"))?
        .ok_or_else(|| DomainError::not_found("user", id))
    }

    /// Returns a user by username.
    pub async fn get_user_by_username(&self, username: &str) -> DomainResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        on_pool!(self, |pool| sqlx::query_as::<_, User>(&sql)
            .bind(username)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "user"))
    }

    /// Lists users by id, optionally by username prefix.
    pub async fn list_users(
        &self,
        page: Page,
        username_prefix: &str,
    ) -> DomainResult<(Vec<User>, String)> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users \
             WHERE ($1 IS NULL OR id > $1) AND substr(username, 1, length($2)) = $2 \
             ORDER BY id LIMIT $3"
        );
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, User>(&sql)
            .bind(page.after)
            .bind(username_prefix)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "users"))?;
        Ok(page.finish(rows, |u| u.id))
    }

    /// Applies a patch to a user.
    pub async fn update_user(&self, id: Uuid, patch: &UserPatch) -> DomainResult<User> {
        let sql = format!(
            "UPDATE users SET username = COALESCE($2, username), email = COALESCE($3, email), \
             admin = COALESCE($4, admin), update_time = $5 WHERE id = $1 RETURNING {USER_COLUMNS}"
        );
        on_pool!(self, |pool| sqlx::query_as::<_, User>(&sql)
            .bind(id)
            .bind(&patch.username)
            .bind(&patch.email)
            .bind(patch.admin)
            .bind(now_micros())
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "user with that username or email"))?
        .ok_or_else(|| DomainError::not_found("user", id))
    }

    /// Deletes a user. Without `force`, refuses while the user owns anything
    /// besides tokens; with it, deletes everything the user owns in one transaction.
    pub async fn delete_user(&self, id: Uuid, force: bool) -> DomainResult<()> {
        let deleted_runs = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            if !force {
                for table in ["jobs", "buckets", "retention_policies", "runs"] {
                    let count = count_references_in_tx!(tx, table, "owner_id", id);
                    if count > 0 {
                        return Err(DomainError::FailedPrecondition(format!(
                            "user {id} still owns {count} {}; delete them first or set force",
                            table.replace('_', " ")
                        )));
                    }
                }
            }
            // Their watchers learn that the user's runs are gone.
            let runs: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE owner_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "runs"))?;
            for table in OWNED_TABLES {
                let sql = format!("DELETE FROM {table} WHERE owner_id = $1");
                sqlx::query(&sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, table))?;
            }
            let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "user"))?;
            if deleted.rows_affected() == 0 {
                return Err(DomainError::not_found("user", id));
            }
            Ok(runs)
        }))?;
        for run in deleted_runs {
            self.publish_run(run);
        }
        Ok(())
    }

    /// Counts admin users.
    pub async fn count_admins(&self) -> DomainResult<i64> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM users WHERE admin"
        )
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "users"))
    }

    /// Stores a token.
    pub async fn create_api_token(&self, new: &NewApiToken) -> DomainResult<ApiToken> {
        let row = on_pool!(self, |pool| sqlx::query_as::<_, TokenRow>(
            "INSERT INTO api_tokens (id, user_id, display_name, scope, prefix, secret_hash, create_time, expire_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING id, user_id, display_name, scope, prefix, create_time, expire_time, last_used_time")
            .bind(new_id())
            .bind(new.user_id)
            .bind(&new.display_name)
            .bind(new.scope.as_str())
            .bind(&new.prefix)
            .bind(&new.secret_hash)
            .bind(now_micros())
            .bind(new.expire_time)
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "api token"))?;
        ApiToken::try_from(row)
    }

    /// Whether a token with this hash exists.
    pub async fn api_token_exists(&self, secret_hash: &[u8]) -> DomainResult<bool> {
        let count: i64 = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE secret_hash = $1"
        )
        .bind(secret_hash)
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "api token"))?;
        Ok(count > 0)
    }

    /// Looks a token up by the hash of its secret; expired tokens are not found.
    pub async fn find_token_identity(
        &self,
        secret_hash: &[u8],
        now: DateTime<Utc>,
    ) -> DomainResult<Option<TokenIdentity>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            token_id: Uuid,
            scope: String,
            last_used_time: Option<DateTime<Utc>>,
            id: Uuid,
            username: String,
            email: String,
            admin: bool,
            create_time: DateTime<Utc>,
            update_time: DateTime<Utc>,
        }
        let row = on_read_pool!(self, |pool| sqlx::query_as::<_, Row>(
            "SELECT t.id AS token_id, t.scope, t.last_used_time, u.id, u.username, u.email, u.admin, u.create_time, u.update_time \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.secret_hash = $1 AND (t.expire_time IS NULL OR t.expire_time > $2)")
            .bind(secret_hash)
            .bind(now)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "api token"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenIdentity {
            token_id: row.token_id,
            scope: TokenScope::parse(&row.scope)?,
            last_used_time: row.last_used_time,
            user: User {
                id: row.id,
                username: row.username,
                email: row.email,
                admin: row.admin,
                create_time: row.create_time,
                update_time: row.update_time,
            },
        }))
    }

    /// Records that a token was used.
    pub async fn touch_api_token(&self, id: Uuid, now: DateTime<Utc>) -> DomainResult<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE api_tokens SET last_used_time = $2 WHERE id = $1"
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "api token"))?;
        Ok(())
    }

    /// Lists tokens, of one user or (None) of everyone.
    pub async fn list_api_tokens(
        &self,
        user_id: Option<Uuid>,
        page: Page,
    ) -> DomainResult<(Vec<ApiToken>, String)> {
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, TokenRow>(
            "SELECT id, user_id, display_name, scope, prefix, create_time, expire_time, last_used_time \
             FROM api_tokens WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3")
            .bind(user_id)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "api tokens"))?;
        page.finish_rows(rows, ApiToken::try_from, |t| t.id)
    }

    /// Returns a token by id.
    pub async fn get_api_token(&self, id: Uuid) -> DomainResult<ApiToken> {
        let row = on_pool!(self, |pool| sqlx::query_as::<_, TokenRow>(
            "SELECT id, user_id, display_name, scope, prefix, create_time, expire_time, last_used_time \
             FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "api token"))?
        .ok_or_else(|| DomainError::not_found("api token", id))?;
        ApiToken::try_from(row)
    }

    /// Deletes a token.
    pub async fn delete_api_token(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM api_tokens WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "api token"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("api token", id));
        }
        Ok(())
    }
}
