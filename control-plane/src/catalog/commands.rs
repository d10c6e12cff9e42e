//! Catalog queries for admin-defined commands. Arguments, environment and
//! grantees are stored as JSON text.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{from_json, new_id, now_micros, on_pool, on_read_pool, to_json};
use super::{Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::command::{Command, CommandSpec};

const COLUMNS: &str = "id, name, description, executable, args, environment, \
     working_directory, timeout_seconds, output_file_name, grantee_ids, creator_id, create_time";

#[derive(sqlx::FromRow)]
struct CommandRow {
    id: Uuid,
    name: String,
    description: String,
    executable: String,
    args: String,
    environment: String,
    working_directory: String,
    timeout_seconds: i64,
    output_file_name: String,
    grantee_ids: String,
    creator_id: Uuid,
    create_time: DateTime<Utc>,
}

impl TryFrom<CommandRow> for Command {
    type Error = DomainError;

    fn try_from(row: CommandRow) -> DomainResult<Self> {
        Ok(Command {
            id: row.id,
            spec: CommandSpec {
                name: row.name,
                description: row.description,
                executable: row.executable,
                args: from_json(&row.args, "commands.args")?,
                environment: from_json(&row.environment, "commands.environment")?,
                working_directory: row.working_directory,
                timeout: Duration::from_secs(u64::try_from(row.timeout_seconds).map_err(|_| {
                    DomainError::Internal("negative commands.timeout_seconds".into())
                })?),
                output_file_name: row.output_file_name,
                grantee_ids: from_json(&row.grantee_ids, "commands.grantee_ids")?,
            },
            creator_id: row.creator_id,
            create_time: row.create_time,
        })
    }
}

impl Catalog {
    /// Stores a validated command created by `creator_id`.
    pub async fn create_command(
        &self,
        spec: &CommandSpec,
        creator_id: Uuid,
    ) -> DomainResult<Command> {
        let sql = format!(
            "INSERT INTO commands ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
        );
        let timeout = i64::try_from(spec.timeout.as_secs()).unwrap_or(i64::MAX);
        let row = on_pool!(self, |pool| sqlx::query_as::<_, CommandRow>(&sql)
            .bind(new_id())
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(&spec.executable)
            .bind(to_json(&spec.args))
            .bind(to_json(&spec.environment))
            .bind(&spec.working_directory)
            .bind(timeout)
            .bind(&spec.output_file_name)
            .bind(to_json(&spec.grantee_ids))
            .bind(creator_id)
            .bind(now_micros())
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, &format!("command named {:?}", spec.name)))?;
        Command::try_from(row)
    }

    /// A command by id, read from the writer so that a command deleted or
    /// a grant withdrawn a moment ago is never used.
    pub async fn get_command(&self, id: Uuid) -> DomainResult<Command> {
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE id = $1");
        let row = on_pool!(self, |pool| sqlx::query_as::<_, CommandRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "command"))?
        .ok_or_else(|| DomainError::not_found("command", id))?;
        Command::try_from(row)
    }

    /// Lists commands by id, oldest first: all of them, or (`grantee`)
    /// those granted to one user.
    pub async fn list_commands(
        &self,
        page: Page,
        grantee: Option<Uuid>,
    ) -> DomainResult<(Vec<Command>, String)> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE ($1 IS NULL OR grantee_ids LIKE $1) \
             AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        // `grantee_ids` is a JSON array of hyphenated UUIDs, which hold no
        // LIKE wildcards.
        let pattern = grantee.map(|id| format!("%\"{id}\"%"));
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, CommandRow>(&sql)
            .bind(&pattern)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "commands"))?;
        page.finish_rows(rows, Command::try_from, |c| c.id)
    }

    /// Deletes a command.
    pub async fn delete_command(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM commands WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "command"))?;
        if deleted == 0 {
            return Err(DomainError::not_found("command", id));
        }
        Ok(())
    }
}
