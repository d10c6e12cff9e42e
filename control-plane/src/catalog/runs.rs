//! Catalog queries for runs and their per-file errors.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{from_json, new_id, on_pool, on_read_pool, to_json, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::run::{
    NewRun, Run, RunErrorEntry, RunFilter, RunKind, RunSpec, RunState, DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_LIMIT,
};

const RUN_COLUMNS: &str = "id, owner_id, job_id, kind, state, spec, target_bucket_id, \
     request_id, attempt, max_attempts, cancel_requested, progress, error, worker_id, \
     lease_token, lease_expire_time, deadline_time, not_before_time, worker_selector, \
     create_time, start_time, finish_time, update_time, manifest_key, repository_id";

/// How often CancelRun retries when the run changes state under it.
const CANCEL_RETRIES: usize = 3;

#[derive(sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    owner_id: Uuid,
    job_id: Option<Uuid>,
    kind: String,
    state: String,
    spec: String,
    target_bucket_id: Option<Uuid>,
    request_id: Option<Uuid>,
    attempt: i32,
    max_attempts: i32,
    cancel_requested: bool,
    progress: String,
    error: String,
    worker_id: Option<Uuid>,
    lease_token: i64,
    lease_expire_time: Option<DateTime<Utc>>,
    deadline_time: Option<DateTime<Utc>>,
    not_before_time: DateTime<Utc>,
    worker_selector: String,
    create_time: DateTime<Utc>,
    start_time: Option<DateTime<Utc>>,
    finish_time: Option<DateTime<Utc>>,
    update_time: DateTime<Utc>,
    manifest_key: String,
    repository_id: Option<Uuid>,
}

impl TryFrom<RunRow> for Run {
    type Error = DomainError;

    fn try_from(row: RunRow) -> DomainResult<Self> {
        Ok(Run {
            id: row.id,
            owner_id: row.owner_id,
            kind: RunKind::parse(&row.kind)?,
            job_id: row.job_id,
            state: RunState::parse(&row.state)?,
            spec: from_json::<RunSpec>(&row.spec, "runs.spec")?,
            target_bucket_id: row.target_bucket_id,
            request_id: row.request_id,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            cancel_requested: row.cancel_requested,
            progress: from_json(&row.progress, "runs.progress")?,
            error: row.error,
            worker_id: row.worker_id,
            lease_token: row.lease_token,
            lease_expire_time: row.lease_expire_time,
            deadline_time: row.deadline_time,
            not_before_time: row.not_before_time,
            worker_selector: from_json(&row.worker_selector, "runs.worker_selector")?,
            create_time: row.create_time,
            start_time: row.start_time,
            finish_time: row.finish_time,
            update_time: row.update_time,
            manifest_key: row.manifest_key,
            repository_id: row.repository_id,
        })
    }
}

/// Whether a run was created or an earlier one with the same request id returned.
#[derive(Clone, Debug, PartialEq)]
pub struct CreatedRun {
    /// The run.
    pub run: Run,
    /// False when the request id matched an existing run.
    pub created: bool,
}

impl Catalog {
    /// Queues a run. With a request id, a run of the same owner and request id
    /// is returned instead of creating a second one.
    pub async fn create_run(&self, new: &NewRun) -> DomainResult<CreatedRun> {
        if let Some(run) = self
            .find_run_by_request(new.owner_id, new.request_id)
            .await?
        {
            return Ok(CreatedRun {
                run,
                created: false,
            });
        }
        let id = new_id();
        match self.insert_run(id, new).await {
            Ok(()) => Ok(CreatedRun {
                run: self.get_run(id).await?,
                created: true,
            }),
            // A concurrent retry with the same request id won the race.
            Err(DomainError::AlreadyExists(message)) => {
                match self
                    .find_run_by_request(new.owner_id, new.request_id)
                    .await?
                {
                    Some(run) => Ok(CreatedRun {
                        run,
                        created: false,
                    }),
                    None => Err(DomainError::AlreadyExists(message)),
                }
            }
            Err(other) => Err(other),
        }
    }

    async fn insert_run(&self, id: Uuid, new: &NewRun) -> DomainResult<()> {
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(include_str!(
            "sql/runs/insert.sql"
        ))
        .bind(id)
        .bind(new.owner_id)
        .bind(new.job_id)
        .bind(new.spec.kind().as_str())
        .bind(to_json(&new.spec))
        .bind(new.spec.target_bucket_id())
        .bind(new.request_id)
        .bind(new.max_attempts)
        .bind(now)
        .bind(to_json(new.spec.worker_selector()))
        .bind(new.spec.target().repository())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "run with this request id"))?;
        self.publish_run(id);
        Ok(())
    }

    pub(crate) async fn find_run_by_request(
        &self,
        owner_id: Uuid,
        request_id: Option<Uuid>,
    ) -> DomainResult<Option<Run>> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE owner_id = $1 AND request_id = $2");
        let row = on_pool!(self, |pool| sqlx::query_as::<_, RunRow>(&sql)
            .bind(owner_id)
            .bind(request_id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "run"))?;
        row.map(Run::try_from).transpose()
    }

    /// Returns a run by id.
    pub async fn get_run(&self, id: Uuid) -> DomainResult<Run> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = on_read_pool!(self, |pool| sqlx::query_as::<_, RunRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "run"))?
        .ok_or_else(|| DomainError::not_found("run", id))?;
        Run::try_from(row)
    }

    /// Lists runs newest first; `owner_id` None means every owner.
    pub async fn list_runs(
        &self,
        owner_id: Option<Uuid>,
        filter: &RunFilter,
        page: Page,
    ) -> DomainResult<(Vec<Run>, String)> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 IS NULL OR owner_id = $1) \
             AND ($2 IS NULL OR job_id = $2) AND ($3 IS NULL OR state = $3) \
             AND ($4 IS NULL OR kind = $4) \
             AND ($5 IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE t.resource_kind = 'run' \
                  AND t.resource_id = runs.id AND t.key = $5 AND ($6 IS NULL OR t.value = $6))) \
             AND ($7 IS NULL OR id < $7) ORDER BY id DESC LIMIT $8"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, RunRow>(&sql)
            .bind(owner_id)
            .bind(filter.job_id)
            .bind(filter.state.map(RunState::as_str))
            .bind(filter.kind.map(RunKind::as_str))
            .bind(filter.tag_key.as_deref())
            .bind(filter.tag_value.as_deref())
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "runs"))?;
        page.finish_rows(rows, Run::try_from, |run| run.id)
    }

    /// Cancels a run: a queued run becomes cancelled at once, a running one
    /// gets `cancel_requested`. Final runs are FAILED_PRECONDITION. Each step
    /// is a conditional update, so a run changing state concurrently is never
    /// overwritten.
    pub async fn cancel_run(&self, id: Uuid, cancelled_by: &str) -> DomainResult<Run> {
        let message = format!("cancelled by {cancelled_by}");
        for _ in 0..CANCEL_RETRIES {
            let now = self.now().await?;
            let cancelled = on_pool!(self, |pool| sqlx::query(
                "UPDATE runs SET state = 'cancelled', finish_time = $2, error = $3, \
                 update_time = $2, lease_expire_time = NULL WHERE id = $1 AND state = 'queued'"
            )
            .bind(id)
            .bind(now)
            .bind(&message)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| from_sqlx(e, "run"))?;
            if cancelled > 0 {
                self.publish_run(id);
                return self.get_run(id).await;
            }
            let requested = on_pool!(self, |pool| sqlx::query(
                "UPDATE runs SET cancel_requested = $2, update_time = $3 \
                 WHERE id = $1 AND state = 'running'"
            )
            .bind(id)
            .bind(true)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| from_sqlx(e, "run"))?;
            if requested > 0 {
                self.publish_run(id);
                return self.get_run(id).await;
            }
            let run = self.get_run(id).await?;
            if run.state.is_final() {
                return Err(DomainError::FailedPrecondition(format!(
                    "run {id} already finished ({}); only queued or running runs can be cancelled",
                    run.state.as_str()
                )));
            }
            // It moved between queued and running under us: try again.
        }
        Err(DomainError::Aborted(format!(
            "run {id} kept changing state; retry the cancellation"
        )))
    }

    /// Lists a run's per-file errors in the order they were reported, after
    /// the error with id `after`.
    pub async fn list_run_errors(
        &self,
        run_id: Uuid,
        after: Option<i64>,
        size: i64,
    ) -> DomainResult<(Vec<RunErrorEntry>, String)> {
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, RunErrorEntry>(
            "SELECT id, path, message, attempt, create_time FROM run_errors \
             WHERE run_id = $1 AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        )
        .bind(run_id)
        .bind(after)
        .bind(size + 1)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run errors"))?;
        Ok(super::exclusions::finish_numbered(rows, size, |row| row.id))
    }

    /// A run of `kind` on repository `repository_id` that is queued or
    /// running, if any (garbage collections and key-slot runs of one
    /// repository go one at a time).
    pub async fn active_run_of_kind(
        &self,
        repository_id: Uuid,
        kind: crate::model::run::RunKind,
    ) -> DomainResult<Option<Uuid>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM runs WHERE kind = $2 AND repository_id = $1 \
             AND state IN ('queued', 'running') ORDER BY id LIMIT 1"
        )
        .bind(repository_id)
        .bind(kind.as_str())
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run"))
    }

    /// Records the repository a run's target resolved to at its lease, for a
    /// run queued before the catalog knew that repository. A run already
    /// recorded with another repository is an internal error: one location
    /// resolves to one repository for good.
    pub async fn record_run_repository(
        &self,
        run_id: Uuid,
        repository_id: Uuid,
    ) -> DomainResult<()> {
        let recorded = on_pool!(self, |pool| sqlx::query_scalar::<_, Option<Uuid>>(
            "UPDATE runs SET repository_id = COALESCE(repository_id, $2) WHERE id = $1 \
             RETURNING repository_id"
        )
        .bind(run_id)
        .bind(repository_id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run"))?;
        match recorded {
            None => Err(DomainError::not_found("run", run_id)),
            Some(Some(id)) if id == repository_id => Ok(()),
            Some(other) => Err(DomainError::Internal(format!(
                "run {run_id} is recorded in repository {other:?}, not {repository_id}"
            ))),
        }
    }

    /// When the oldest run other than `except` that is executing on
    /// repository `repository_id` started: a collection must not delete what
    /// such a run may have seen before the packs were condemned.
    pub async fn oldest_in_flight_start(
        &self,
        repository_id: Uuid,
        except: Uuid,
    ) -> DomainResult<Option<DateTime<Utc>>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT MIN(COALESCE(start_time, create_time)) FROM runs \
             WHERE repository_id = $1 AND state = 'running' AND id <> $2"
        )
        .bind(repository_id)
        .bind(except)
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run"))
    }

    /// Whether the `nfs_mount_path` configuration is set (NFS targets need it).
    pub async fn nfs_mount_configured(&self) -> DomainResult<bool> {
        let value = lookup_configuration(self, "nfs_mount_path").await?;
        Ok(value.is_some_and(|v| !v.trim().is_empty()))
    }

    /// Attempts for a run whose job does not say: the `default_max_attempts`
    /// configuration if it holds a number in 1..=100, else 3.
    pub async fn run_default_max_attempts(&self) -> DomainResult<i32> {
        let configured = lookup_configuration(self, "default_max_attempts").await?;
        let parsed = configured
            .as_deref()
            .map(|value| value.trim().parse::<i32>());
        Ok(match parsed {
            Some(Ok(value)) if (1..=MAX_ATTEMPTS_LIMIT).contains(&value) => value,
            Some(_) => {
                tracing::warn!(
                    value = configured.as_deref().unwrap_or_default(),
                    "configuration default_max_attempts is not a number in 1..=100; using {DEFAULT_MAX_ATTEMPTS}"
                );
                DEFAULT_MAX_ATTEMPTS
            }
            None => DEFAULT_MAX_ATTEMPTS,
        })
    }
}

/// A configuration value, if the key is set. Private to runs so this module
/// does not depend on the configuration service's code.
pub(crate) async fn lookup_configuration(
    catalog: &Catalog,
    key: &str,
) -> DomainResult<Option<String>> {
    on_pool!(catalog, |pool| sqlx::query_scalar::<_, String>(
        "SELECT value FROM configurations WHERE key = $1"
    )
    .bind(key)
    .fetch_optional(pool)
    .await)
    .map_err(|e| from_sqlx(e, "configuration"))
}
