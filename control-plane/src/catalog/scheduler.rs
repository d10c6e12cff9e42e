//! Catalog side of the scheduler: the leader lease, the scan for due ticks,
//! and firing a tick exactly once.
//!
//! Exactly-once lives in the data, not in the election. Firing a tick is one
//! transaction that moves `jobs.next_run_time` from the due tick to the next
//! one with a compare-and-set and creates the tick's run under a request id
//! derived from (job, tick). A second scheduler that saw the same due tick
//! finds the compare-and-set failing (on PostgreSQL its UPDATE waits for the
//! first transaction's row lock and then re-checks the row), and a run for the
//! same tick inserted twice would meet `UNIQUE (owner_id, request_id)`. The
//! leader lease only spares the other replicas the wasted work.
//!
//! Times are the database's clock (`Catalog::now`), read once per operation and
//! bound as parameters, as leasing does.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::jobs::{JobRow, JOB_SELECT};
use super::limits::QUEUED_RUNS_OF_LIMITED_OWNER;
use super::{in_transaction, new_id, on_pool, to_json, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::job::{scheduled_request_id, Job, Schedule};
use crate::model::limits::OwnerLimit;
use crate::model::run::RunSpec;
use crate::scheduler::policy::{decide, TickOutcome};

/// States in which a run counts as active for the overlap policy.
const ACTIVE_RUN: &str =
    "SELECT COUNT(*) FROM runs WHERE job_id = $1 AND state IN ('queued', 'running')";

/// Queues a run inside a firing transaction: the statement `insert_run` in
/// `runs.rs` runs, plus `ON CONFLICT DO NOTHING` because a run for the same
/// tick (same request id) means the tick already has its run. Evaluates to the
/// number of rows inserted.
macro_rules! insert_scheduled_run {
    ($tx:expr, $id:expr, $new:expr, $now:expr) => {
        sqlx::query(concat!(
            include_str!("sql/runs/insert.sql"),
            "ON CONFLICT (owner_id, request_id) DO NOTHING"
        ))
        .bind($id)
        .bind($new.owner_id)
        .bind($new.job_id)
        .bind($new.spec.kind().as_str())
        .bind(to_json(&$new.spec))
        .bind($new.spec.target_bucket_id())
        .bind($new.request_id)
        .bind($new.max_attempts)
        .bind($now)
        .bind(to_json($new.spec.worker_selector()))
        .bind(match &$new.spec {
            RunSpec::Backup(backup) => Some(backup.target.repository()),
            _ => None,
        })
        .execute(&mut *$tx)
        .await
        .map_err(|e| from_sqlx(e, "scheduled run"))?
        .rows_affected()
    };
}

/// This replica leads the scheduler until `expire_time` (database clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// Grows with every change of leader.
    pub term: i64,
    /// When the lease lapses unless renewed.
    pub expire_time: DateTime<Utc>,
}

/// The scheduler's leader lease as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaderLease {
    /// Id of the scheduler instance holding it.
    pub holder: String,
    /// Grows with every change of holder.
    pub term: i64,
    /// When the holder took it.
    pub acquire_time: DateTime<Utc>,
    /// When it lapses unless renewed.
    pub expire_time: DateTime<Utc>,
}

/// A job whose next tick is due, as the scan saw it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DueTick {
    /// The job.
    #[sqlx(rename = "id")]
    pub job_id: Uuid,
    /// The tick: the job's `next_run_time`.
    #[sqlx(rename = "next_run_time")]
    pub fire_time: DateTime<Utc>,
    /// Its cron expression when scanned.
    #[sqlx(rename = "schedule_cron")]
    pub cron: String,
    /// Its time zone when scanned.
    #[sqlx(rename = "schedule_time_zone")]
    pub time_zone: String,
}

/// What firing a tick did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiredTick {
    /// What the policies decided.
    pub outcome: TickOutcome,
    /// The run created for the tick.
    pub run_id: Option<Uuid>,
    /// The job's next tick afterwards.
    pub next_run_time: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Takes the scheduler leadership for `holder`, or renews it, for `ttl`
    /// from now by the database clock. Returns `None` while another holder's
    /// lease has not expired.
    pub async fn acquire_scheduler_leadership(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> DomainResult<Option<Leadership>> {
        let now = self.now().await?;
        let expire = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let row = on_pool!(self, |pool| sqlx::query_as::<_, (i64, DateTime<Utc>)>(
            include_str!("sql/scheduler/take_leadership.sql")
        )
        .bind(holder)
        .bind(now)
        .bind(expire)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "scheduler leader lease"))?;
        Ok(row.map(|(term, expire_time)| Leadership { term, expire_time }))
    }

    /// Gives the leadership up (if `holder` has it), so another replica takes
    /// over at its next attempt instead of after the lease expires.
    pub async fn release_scheduler_leadership(&self, holder: &str) -> DomainResult<()> {
        let now = self.now().await?;
        on_pool!(self, |pool| sqlx::query(
            "UPDATE scheduler_leader SET expire_time = $2 WHERE id = 1 AND holder = $1"
        )
        .bind(holder)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "scheduler leader lease"))?;
        Ok(())
    }

    /// The scheduler's leader lease, if any replica ever took it.
    pub async fn scheduler_leader(&self) -> DomainResult<Option<LeaderLease>> {
        on_pool!(self, |pool| sqlx::query_as::<_, LeaderLease>(
            "SELECT holder, term, acquire_time, expire_time FROM scheduler_leader WHERE id = 1"
        )
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "scheduler leader lease"))
    }

    /// Up to `limit` jobs whose next tick is at or before `now`, oldest tick first.
    pub async fn due_ticks(&self, now: DateTime<Utc>, limit: i64) -> DomainResult<Vec<DueTick>> {
        on_pool!(self, |pool| sqlx::query_as::<_, DueTick>(
            "SELECT id, next_run_time, schedule_cron, schedule_time_zone FROM jobs \
             WHERE next_run_time IS NOT NULL AND next_run_time <= $1 \
             ORDER BY next_run_time LIMIT $2"
        )
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "due jobs"))
    }

    /// The earliest next tick of any job.
    pub async fn earliest_next_run_time(&self) -> DomainResult<Option<DateTime<Utc>>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT next_run_time FROM jobs WHERE next_run_time IS NOT NULL \
             ORDER BY next_run_time LIMIT 1"
        )
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "jobs"))
    }

    /// Fires one due tick at `now`: in one transaction, moves the job's next
    /// tick on (compare-and-set from `tick.fire_time`), applies the policies
    /// and creates the tick's run owned by the job's owner, or lets the tick
    /// wait (overlap policy queue). Returns `None` when the tick is no longer
    /// due as scanned: another scheduler fired it, or the schedule changed.
    ///
    /// The next tick is the first after `now`, so several missed ticks end in
    /// one decision (one run under the run-once policy).
    pub async fn fire_tick(
        &self,
        tick: &DueTick,
        now: DateTime<Utc>,
        misfire_grace: Duration,
        default_max_attempts: i32,
    ) -> DomainResult<Option<FiredTick>> {
        let scanned = Schedule {
            cron: tick.cron.clone(),
            time_zone: tick.time_zone.clone(),
            ..Schedule::default()
        };
        // A stored schedule that no longer parses stops firing instead of
        // failing every pass.
        let next_run_time = scanned.next_fire_after(now).unwrap_or_else(|error| {
            tracing::error!(job = %tick.job_id, %error, "schedule cannot be evaluated; it stops firing");
            None
        });
        let select_job = format!("{JOB_SELECT} WHERE j.id = $1");
        let queue_limit = self.owner_limit(OwnerLimit::QueuedRuns).await?;
        let fired = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let moved = sqlx::query(
                "UPDATE jobs SET next_run_time = $2 WHERE id = $1 AND next_run_time = $3 \
                 AND schedule_cron = $4 AND schedule_time_zone = $5 AND NOT schedule_paused",
            )
            .bind(tick.job_id)
            .bind(next_run_time)
            .bind(tick.fire_time)
            .bind(&tick.cron)
            .bind(&tick.time_zone)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "job"))?
            .rows_affected();
            if moved == 0 {
                return Ok(None);
            }
            // The row is ours until commit; read the job as it is now.
            let row = sqlx::query_as::<_, JobRow>(&select_job)
                .bind(tick.job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "job"))?;
            let job = Job::try_from(row)?;
            let active_runs = sqlx::query_scalar::<_, i64>(ACTIVE_RUN)
                .bind(job.id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "runs of job"))?;
            let mut outcome = decide(
                &job.draft.schedule,
                tick.fire_time,
                now,
                misfire_grace,
                active_runs > 0,
            );
            if outcome == TickOutcome::Run {
                let queued = sqlx::query_scalar::<_, i64>(QUEUED_RUNS_OF_LIMITED_OWNER)
                    .bind(job.draft.owner_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "queued runs of owner"))?;
                if queued >= queue_limit {
                    outcome = TickOutcome::SkipQueueLimit;
                }
            }
            let mut run_id = None;
            match outcome {
                TickOutcome::Run => {
                    let request_id = scheduled_request_id(job.id, tick.fire_time);
                    let new = job.backup_run(default_max_attempts, Some(request_id));
                    let id = new_id();
                    if insert_scheduled_run!(tx, id, new, now) > 0 {
                        run_id = Some(id);
                    }
                    // A waiting tick is served by this run too.
                    sqlx::query("UPDATE jobs SET schedule_pending_time = NULL WHERE id = $1")
                        .bind(job.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| from_sqlx(e, "job"))?;
                }
                TickOutcome::Queue => {
                    // At most one tick waits; a later one merges into it.
                    sqlx::query(
                        "UPDATE jobs SET schedule_pending_time = COALESCE(schedule_pending_time, $2) \
                         WHERE id = $1")
                        .bind(job.id)
                        .bind(tick.fire_time)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| from_sqlx(e, "job"))?;
                }
                TickOutcome::SkipMissed
                | TickOutcome::SkipOverlap
                | TickOutcome::SkipQueueLimit => {}
            }
            Ok(Some(FiredTick {
                outcome,
                run_id,
                next_run_time,
            }))
        }))?;
        if let Some(id) = fired.as_ref().and_then(|fired| fired.run_id) {
            self.publish_run(id);
        }
        Ok(fired)
    }

    /// Up to `limit` jobs with a waiting tick and no queued or running run:
    /// `(job id, tick)`, oldest tick first.
    pub async fn ready_pending_ticks(
        &self,
        limit: i64,
    ) -> DomainResult<Vec<(Uuid, DateTime<Utc>)>> {
        on_pool!(self, |pool| sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(
            "SELECT j.id, j.schedule_pending_time FROM jobs j \
             WHERE j.schedule_pending_time IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM runs r WHERE r.job_id = j.id AND r.state IN ('queued', 'running')) \
             ORDER BY j.schedule_pending_time LIMIT $1"
        )
        .bind(limit)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "jobs with a waiting tick"))
    }

    /// Creates the run of a job's waiting tick once no run of the job is
    /// queued or running, in one transaction that clears the tick with a
    /// compare-and-set. Returns the run, or `None` when the tick is gone
    /// (another scheduler created it, or the schedule changed), a run is
    /// still active, or the job's owner is at its queued-run limit (the
    /// tick keeps waiting until the owner's queue drains).
    pub async fn start_pending_tick(
        &self,
        job_id: Uuid,
        fire_time: DateTime<Utc>,
        now: DateTime<Utc>,
        default_max_attempts: i32,
    ) -> DomainResult<Option<Uuid>> {
        let select_job = format!("{JOB_SELECT} WHERE j.id = $1");
        let queue_limit = self.owner_limit(OwnerLimit::QueuedRuns).await?;
        let created = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let owner: Option<Uuid> = sqlx::query_scalar("SELECT owner_id FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "job"))?;
            let Some(owner) = owner else {
                return Ok(None);
            };
            let queued = sqlx::query_scalar::<_, i64>(QUEUED_RUNS_OF_LIMITED_OWNER)
                .bind(owner)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "queued runs of owner"))?;
            if queued >= queue_limit {
                return Ok(None);
            }
            let cleared = sqlx::query(
                "UPDATE jobs SET schedule_pending_time = NULL \
                 WHERE id = $1 AND schedule_pending_time = $2 AND NOT EXISTS \
                 (SELECT 1 FROM runs WHERE job_id = $1 AND state IN ('queued', 'running'))",
            )
            .bind(job_id)
            .bind(fire_time)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "job"))?
            .rows_affected();
            if cleared == 0 {
                return Ok(None);
            }
            let row = sqlx::query_as::<_, JobRow>(&select_job)
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "job"))?;
            let job = Job::try_from(row)?;
            let request_id = scheduled_request_id(job.id, fire_time);
            let new = job.backup_run(default_max_attempts, Some(request_id));
            let id = new_id();
            let inserted = insert_scheduled_run!(tx, id, new, now);
            Ok((inserted > 0).then_some(id))
        }))?;
        if let Some(id) = created {
            self.publish_run(id);
        }
        Ok(created)
    }

    /// Gives every active schedule without a next tick (jobs from before the
    /// scheduler existed) its next tick after `now`. Returns how many it set.
    pub async fn schedule_unscheduled_jobs(&self, now: DateTime<Utc>) -> DomainResult<usize> {
        let jobs = on_pool!(self, |pool| sqlx::query_as::<_, (Uuid, String, String)>(
            "SELECT id, schedule_cron, schedule_time_zone FROM jobs \
             WHERE next_run_time IS NULL AND schedule_cron <> '' AND NOT schedule_paused"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "jobs"))?;
        let mut scheduled = 0;
        for (id, cron, time_zone) in jobs {
            let schedule = Schedule {
                cron,
                time_zone,
                ..Schedule::default()
            };
            let Some(next) = schedule.next_fire_after(now)? else {
                continue;
            };
            let set = on_pool!(self, |pool| sqlx::query(
                "UPDATE jobs SET next_run_time = $2 WHERE id = $1 AND next_run_time IS NULL \
                 AND schedule_cron = $3 AND schedule_time_zone = $4 AND NOT schedule_paused"
            )
            .bind(id)
            .bind(next)
            .bind(&schedule.cron)
            .bind(&schedule.time_zone)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| from_sqlx(e, "job"))?;
            scheduled += usize::try_from(set).unwrap_or(0);
        }
        Ok(scheduled)
    }

    /// Sets a job's next tick, for administration and tests: the scheduler
    /// fires the job at `time` as if it were a tick of its schedule (a time
    /// in the past is a late tick, subject to the missed-run policy).
    pub async fn set_next_run_time(&self, job_id: Uuid, time: DateTime<Utc>) -> DomainResult<()> {
        let updated = on_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET next_run_time = $2 WHERE id = $1"
        )
        .bind(job_id)
        .bind(time)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "job"))?;
        if updated == 0 {
            return Err(DomainError::not_found("job", job_id));
        }
        Ok(())
    }
}
