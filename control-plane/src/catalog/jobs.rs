//! Catalog queries for jobs, and the reference checks jobs and ad-hoc runs share.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    from_json, in_transaction, new_id, now_micros, on_pool, on_read_pool, to_json, Catalog, Page,
};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::job::{
    Job, JobDraft, JobFilter, JobRunSummary, MissedRunPolicy, OverlapPolicy, Schedule,
};
use crate::model::run::{RunState, Target};

/// Every job column plus its latest run, for Get and List (and the scheduler).
pub(super) const JOB_SELECT: &str =
    "SELECT j.id, j.owner_id, j.name, j.description, j.source_path, \
     j.target_kind, j.target_bucket_id, j.target_path, j.options, j.schedule_cron, \
     j.schedule_time_zone, j.schedule_paused, j.schedule_missed_policy, \
     j.schedule_overlap_policy, j.next_run_time, j.schedule_pending_time, j.retention_policy_id, \
     j.worker_selector, j.max_attempts, j.create_time, j.update_time, \
     lr.id AS last_run_id, lr.state AS last_run_state, lr.error AS last_run_error, \
     lr.finish_time AS last_run_finish_time, \
     j.commands, j.start_time \
     FROM jobs j LEFT JOIN runs lr ON lr.id = \
     (SELECT r.id FROM runs r WHERE r.job_id = j.id ORDER BY r.id DESC LIMIT 1)";

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    description: String,
    source_path: String,
    target_kind: String,
    target_bucket_id: Option<Uuid>,
    target_path: String,
    options: String,
    schedule_cron: String,
    schedule_time_zone: String,
    schedule_paused: bool,
    schedule_missed_policy: String,
    schedule_overlap_policy: String,
    next_run_time: Option<DateTime<Utc>>,
    schedule_pending_time: Option<DateTime<Utc>>,
    retention_policy_id: Option<Uuid>,
    worker_selector: String,
    max_attempts: i32,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    last_run_id: Option<Uuid>,
    last_run_state: Option<String>,
    last_run_error: Option<String>,
    last_run_finish_time: Option<DateTime<Utc>>,
    commands: String,
    start_time: Option<DateTime<Utc>>,
}

impl TryFrom<JobRow> for Job {
    type Error = DomainError;

    fn try_from(row: JobRow) -> DomainResult<Self> {
        let last_run = match (row.last_run_id, row.last_run_state) {
            (Some(run_id), Some(state)) => Some(JobRunSummary {
                run_id,
                state: RunState::parse(&state)?,
                error: row.last_run_error.unwrap_or_default(),
                finish_time: row.last_run_finish_time,
            }),
            _ => None,
        };
        Ok(Job {
            id: row.id,
            draft: JobDraft {
                owner_id: row.owner_id,
                name: row.name,
                description: row.description,
                source_path: row.source_path,
                target: Target::from_columns(
                    &row.target_kind,
                    row.target_bucket_id,
                    row.target_path,
                )?,
                options: from_json(&row.options, "jobs.options")?,
                schedule: Schedule {
                    cron: row.schedule_cron,
                    time_zone: row.schedule_time_zone,
                    paused: row.schedule_paused,
                    missed_runs: MissedRunPolicy::parse(&row.schedule_missed_policy)?,
                    overlap: OverlapPolicy::parse(&row.schedule_overlap_policy)?,
                },
                retention_policy_id: row.retention_policy_id,
                worker_selector: from_json(&row.worker_selector, "jobs.worker_selector")?,
                max_attempts: row.max_attempts,
                commands: from_json(&row.commands, "jobs.commands")?,
                start_time: row.start_time,
            },
            next_run_time: row.next_run_time,
            pending_fire_time: row.schedule_pending_time,
            last_run,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

fn describe_job(draft: &JobDraft) -> String {
    format!("job named {:?} of this owner", draft.name)
}

/// Binds the columns `$2` to `$12` that creating and updating a job write
/// alike (owner to schedule pause) to `$query`, in that order.
macro_rules! bind_draft {
    ($query:expr, $draft:expr) => {
        $query
            .bind($draft.owner_id)
            .bind(&$draft.name)
            .bind(&$draft.description)
            .bind(&$draft.source_path)
            .bind($draft.target.kind_str())
            .bind($draft.target.bucket_id())
            .bind($draft.target.path())
            .bind(to_json(&$draft.options))
            .bind(&$draft.schedule.cron)
            .bind(&$draft.schedule.time_zone)
            .bind($draft.schedule.paused)
    };
}

impl Catalog {
    /// Creates a job. The draft must be validated (see `check_job_references`).
    /// An active schedule gets its first tick after now (the catalog's clock).
    pub async fn create_job(&self, draft: &JobDraft) -> DomainResult<Job> {
        let id = new_id();
        let now = self.now().await?;
        let next_run_time = draft.first_fire_after(now)?;
        on_pool!(self, |pool| bind_draft!(
            sqlx::query(include_str!("sql/jobs/insert.sql")).bind(id),
            draft
        )
        .bind(draft.schedule.missed_runs.as_str())
        .bind(draft.schedule.overlap.as_str())
        .bind(next_run_time)
        .bind(draft.retention_policy_id)
        .bind(to_json(&draft.worker_selector))
        .bind(draft.max_attempts)
        .bind(now_micros())
        .bind(to_json(&draft.commands))
        .bind(draft.start_time)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, &describe_job(draft)))?;
        self.get_job(id).await
    }

    /// Returns a job with its latest run.
    pub async fn get_job(&self, id: Uuid) -> DomainResult<Job> {
        let sql = format!("{JOB_SELECT} WHERE j.id = $1");
        let row = on_read_pool!(self, |pool| sqlx::query_as::<_, JobRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "job"))?
        .ok_or_else(|| DomainError::not_found("job", id))?;
        Job::try_from(row)
    }

    /// Lists jobs, oldest first.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: Page,
    ) -> DomainResult<(Vec<Job>, String)> {
        let sql = format!(
            "{JOB_SELECT} WHERE ($1 IS NULL OR j.owner_id = $1) \
             AND ($2 IS NULL OR j.target_bucket_id = $2) \
             AND substr(j.name, 1, length($3)) = $3 \
             AND ($4 IS NULL OR j.id > $4) ORDER BY j.id LIMIT $5"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, JobRow>(&sql)
            .bind(filter.owner_id)
            .bind(filter.bucket_id)
            .bind(&filter.name_prefix)
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "jobs"))?;
        page.finish_rows(rows, Job::try_from, |job| job.id)
    }

    /// Replaces the editable fields of a job.
    ///
    /// The next tick is recomputed from now only when the expression, the
    /// time zone, the pause flag or the one-shot start time changes (resuming a schedule does not make
    /// up for ticks while paused); other edits keep it, so an edit never moves
    /// or drops a tick that is due. The comparison with the stored schedule is
    /// part of the one UPDATE, so it cannot race with another edit. A waiting
    /// tick (overlap policy queue) is dropped when the schedule stops being
    /// active or stops queueing.
    pub async fn update_job(&self, id: Uuid, draft: &JobDraft) -> DomainResult<Job> {
        let now = self.now().await?;
        let next_run_time = draft.first_fire_after(now)?;
        let keeps_pending =
            draft.schedule.is_active() && draft.schedule.overlap == OverlapPolicy::Queue;
        let updated = on_pool!(self, |pool| bind_draft!(
            sqlx::query(include_str!("sql/jobs/update.sql")).bind(id),
            draft
        )
        .bind(draft.retention_policy_id)
        .bind(to_json(&draft.worker_selector))
        .bind(draft.max_attempts)
        .bind(draft.schedule.missed_runs.as_str())
        .bind(draft.schedule.overlap.as_str())
        .bind(next_run_time)
        .bind(keeps_pending)
        .bind(now_micros())
        .bind(to_json(&draft.commands))
        .bind(draft.start_time)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, &describe_job(draft)))?;
        if updated == 0 {
            return Err(DomainError::not_found("job", id));
        }
        self.get_job(id).await
    }

    /// Deletes a job and its tags, refusing while one of its runs is queued or
    /// running. The check and the delete are one statement, so a run that is
    /// queued concurrently either blocks the delete or fails on the job's key.
    pub async fn delete_job(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let deleted = sqlx::query(
                "DELETE FROM jobs WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM runs WHERE job_id = $1 AND state IN ('queued', 'running'))",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "job"))?
            .rows_affected();
            if deleted > 0 {
                sqlx::query("DELETE FROM tags WHERE resource_kind = 'job' AND resource_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "tags of job"))?;
            }
            Ok(deleted)
        }))?;
        if deleted > 0 {
            return Ok(());
        }
        // Nothing deleted: either the job is gone or a run holds it.
        self.get_job(id).await?;
        Err(DomainError::FailedPrecondition(format!(
            "job {id} has a queued or running run; cancel it or wait for it to finish"
        )))
    }

    /// Records violations for references a job or an ad-hoc run makes: the
    /// target bucket and the retention policy must exist and belong to
    /// `owner_id`. Only catalog failures are returned as errors.
    pub async fn check_job_references(
        &self,
        field_prefix: &str,
        owner_id: Uuid,
        target: Option<&Target>,
        retention_policy_id: Option<Uuid>,
        violations: &mut Violations,
    ) -> DomainResult<()> {
        if let Some(bucket_id) = target.and_then(Target::bucket_id) {
            if row_owner(self, "buckets", bucket_id).await? != Some(owner_id) {
                violations.add(
                    format!("{field_prefix}target.bucket.bucket_id"),
                    format!("no bucket {bucket_id} of the owner exists"),
                );
            }
        }
        if let Some(policy_id) = retention_policy_id {
            if row_owner(self, "retention_policies", policy_id).await? != Some(owner_id) {
                violations.add(
                    format!("{field_prefix}retention_policy_id"),
                    format!("no retention policy {policy_id} of the owner exists"),
                );
            }
        }
        Ok(())
    }
}

/// The owner of a row of an owned table, if the row exists.
async fn row_owner(catalog: &Catalog, table: &'static str, id: Uuid) -> DomainResult<Option<Uuid>> {
    let sql = format!("SELECT owner_id FROM {table} WHERE id = $1");
    on_pool!(catalog, |pool| sqlx::query_scalar::<_, Uuid>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await)
    .map_err(|e| from_sqlx(e, table))
}
