//! Leasing: the catalog is the single source of truth for who runs what.
//!
//! A lease is three columns of `runs`: `worker_id`, `lease_token` and
//! `lease_expire_time`. The token only ever grows (every grant increments it,
//! a release does not give it back), so a write that names an old token — a
//! zombie worker's — never matches the run again. `attempt` counts attempts
//! that were used up; a release (drain) hands the attempt back.
//!
//! Times come from the database clock (`Catalog::now`), read once per
//! operation and bound as a parameter, so the same SQL runs on both backends.
//! On PostgreSQL, candidate rows are locked with `FOR UPDATE SKIP LOCKED`, so
//! replicas sharing the catalog never hand out the same run; the conditional
//! `UPDATE … WHERE state = 'queued'` makes a double grant impossible even without it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queue::QueueScan;
use super::snapshots::apply::{apply_plan_in_tx, PlannedCommit};
use super::{in_transaction, new_id, on_pool, Backend, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::run::RunKind;

/// Timing rules of leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lives without a heartbeat.
    pub ttl: Duration,
    /// Delay before the second attempt; doubles with every further attempt.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Hard limit of one attempt, heartbeats or not.
    pub attempt_deadline: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(30),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            attempt_deadline: Duration::from_secs(24 * 3600),
        }
    }
}

impl LeaseSettings {
    /// Delay before the attempt after `attempt` (1-based) failed.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        self.backoff_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.backoff_max)
    }
}

/// A queued run offered to the assignment filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The run.
    pub id: Uuid,
    /// Its stored spec (JSON).
    pub spec: String,
    /// Labels a worker must carry.
    pub worker_selector: BTreeMap<String, String>,
}

/// A run just leased to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedRun {
    /// The run.
    pub id: Uuid,
    /// The fencing token of this lease.
    pub lease_token: i64,
    /// The attempt this lease is (1-based).
    pub attempt: i32,
    /// Hard deadline of the attempt.
    pub deadline: DateTime<Utc>,
}

/// A lease as a worker's write names it: the run, the token of the grant,
/// and the worker writing. Writes are fenced on all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLease {
    /// The run.
    pub run_id: Uuid,
    /// The lease token the write was made under.
    pub token: i64,
    /// The worker writing.
    pub worker_id: Uuid,
}

/// Whether a fenced write found its lease current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease is current; `cancel_requested` tells the worker to stop.
    Current {
        /// A user asked to cancel the run.
        cancel_requested: bool,
    },
    /// The lease moved on (expired and re-leased, released, run finished).
    Lost,
    /// The lease is current, but another worker holds it: nothing was
    /// written.
    HeldByAnother,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// It succeeded.
    Success {
        /// Bytes in the backup.
        size_bytes: i64,
        /// Summary for the automatic metadata record.
        details: String,
        /// Storage key of the snapshot manifest.
        manifest_key: String,
        /// For an incremental backup: the snapshot its batches are relative to.
        parent_run_id: Option<Uuid>,
    },
    /// It failed.
    Failure {
        /// What went wrong.
        error: String,
        /// Whether another attempt may help.
        retryable: bool,
    },
}

/// The result of a completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompletionResult {
    /// Recorded (or recorded earlier by the same lease: completions are idempotent).
    Accepted {
        /// The run's state afterwards.
        state: String,
    },
    /// The lease is no longer current; nothing was written.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The lease is current, but another worker holds it; nothing was
    /// written.
    HeldByAnother,
}

/// The worker holding lease `$2` of run `$1`, when that is the run's
/// current lease (a token is granted once, to one worker).
const LEASE_HOLDER: &str =
    "SELECT worker_id FROM runs WHERE id = $1 AND lease_token = $2 AND state = 'running'";

/// Why a fenced write by `worker_id` matched nothing, given the current
/// lease's `holder`: the lease is current but another worker holds it, or it
/// moved on.
fn refusal(holder: Option<Uuid>, worker_id: Uuid) -> LeaseState {
    match holder {
        Some(holder) if holder != worker_id => LeaseState::HeldByAnother,
        _ => LeaseState::Lost,
    }
}

/// Runs the bound statement `$query` inside the open transaction `$tx` of
/// either backend and evaluates to the number of rows it changed; a database
/// error (named after `$what`) returns from the enclosing body.
macro_rules! execute_in_tx {
    ($tx:ident, $query:expr, $what:expr) => {
        $query
            .execute(&mut *$tx)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| from_sqlx(e, $what))?
    };
}

/// Deletes the staged batches of a lease whose attempt is over, inside the
/// open transaction `$tx` of either backend.
macro_rules! delete_staged_batches_in_tx {
    ($tx:ident, $run_id:expr, $lease_token:expr) => {
        execute_in_tx!(
            $tx,
            sqlx::query("DELETE FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2")
                .bind($run_id)
                .bind($lease_token),
            "staged batches"
        )
    };
}

/// How the error of a run cancelled while it ran begins.
pub const CANCELLED_ON_REQUEST: &str = "cancelled on request";

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Where a run goes when an attempt ends without success (its lease expired,
/// or the worker reported a failure): the columns that end writes.
struct AttemptEnd {
    /// The run's new state: `cancelled`, `queued` or `failed`.
    state: &'static str,
    /// Why the attempt ended, as the run's error.
    error: String,
    /// When the run may be leased again.
    not_before: DateTime<Utc>,
    /// When the run finished, unless it is queued again.
    finish: Option<DateTime<Utc>>,
}

impl AttemptEnd {
    /// Cancelled if a cancel is pending, else queued again after the backoff
    /// of `attempt` if `may_retry`, else failed; `cause` says why the
    /// attempt ended.
    fn decide(
        attempt: i32,
        cause: &str,
        cancel_requested: bool,
        may_retry: bool,
        now: DateTime<Utc>,
        settings: &LeaseSettings,
    ) -> Self {
        if cancel_requested {
            return AttemptEnd::cancelled(attempt, cause, now);
        }
        let error = format!("attempt {attempt}: {cause}");
        let (state, not_before, finish) = if may_retry {
            let retry_at = now + chrono_duration(settings.backoff(attempt));
            ("queued", retry_at, None)
        } else {
            ("failed", now, Some(now))
        };
        AttemptEnd {
            state,
            error,
            not_before,
            finish,
        }
    }

    /// The end of a run whose cancel was accepted while `attempt` ran.
    fn cancelled(attempt: i32, cause: &str, now: DateTime<Utc>) -> Self {
        AttemptEnd {
            state: "cancelled",
            error: format!("{CANCELLED_ON_REQUEST}; attempt {attempt}: {cause}"),
            not_before: now,
            finish: Some(now),
        }
    }
}

/// The statement `$sql` with the run `$run_id` and the [`AttemptEnd`] `$end`
/// bound as `$1` to `$5` (id, state, error, not before, finish).
macro_rules! attempt_end_query {
    ($sql:expr, $run_id:expr, $end:expr) => {
        sqlx::query($sql)
            .bind($run_id)
            .bind($end.state)
            .bind(&$end.error)
            .bind($end.not_before)
            .bind($end.finish)
    };
}

/// Records in the open transaction `$tx` that the attempt of lease
/// `$lease_token` ended as the [`AttemptEnd`] `$end` says, with the worker's
/// last progress; evaluates to the run's new state.
macro_rules! end_attempt_in_tx {
    ($tx:ident, $run_id:expr, $end:expr, $progress_json:expr, $lease_token:expr, $now:expr) => {{
        let end = $end;
        let sql = include_str!("sql/leases/end_attempt.sql");
        let end_attempt = attempt_end_query!(sql, $run_id, end)
            .bind($progress_json)
            .bind($lease_token)
            .bind($now);
        execute_in_tx!($tx, end_attempt, "run");
        end.state
    }};
}

impl Catalog {
    fn lock_clause(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    pub(crate) fn row_lock_clause(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// Why a write fenced on `lease` matched nothing. Asked only after such
    /// a write failed, so the writes themselves stay one statement.
    async fn why_refused(&self, lease: WorkerLease) -> DomainResult<LeaseState> {
        let holder = self.lease_holder(lease.run_id, lease.token).await?;
        Ok(refusal(holder, lease.worker_id))
    }

    /// The worker holding `(run_id, lease_token)` when that is the run's
    /// current lease; `None` when the lease is not current (ended, or a
    /// newer one was granted). A token is granted once, to one worker.
    pub async fn lease_holder(&self, run_id: Uuid, lease_token: i64) -> DomainResult<Option<Uuid>> {
        let holder: Option<Option<Uuid>> = on_pool!(self, |pool| {
            sqlx::query_scalar(LEASE_HOLDER)
                .bind(run_id)
                .bind(lease_token)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| from_sqlx(e, "run"))?;
        Ok(holder.flatten())
    }

    /// Current leases of a worker: `(run id, lease token)`.
    pub async fn leases_of_worker(&self, worker_id: Uuid) -> DomainResult<Vec<(Uuid, i64)>> {
        on_pool!(self, |pool| sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT id, lease_token FROM runs WHERE worker_id = $1 AND state = 'running' ORDER BY id")
            .bind(worker_id)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "runs"))
    }

    /// Leases up to `max` queued runs that `accept` agrees to, to `worker_id`,
    /// in the fair order of `queue.rs` (see [`Catalog::acquire_runs_for`]).
    pub async fn acquire_runs(
        &self,
        worker_id: Uuid,
        max: usize,
        settings: &LeaseSettings,
        accept: impl Fn(&Candidate) -> bool,
    ) -> DomainResult<Vec<LeasedRun>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let labels = self.worker_labels(worker_id).await?;
        let leased = self
            .acquire_runs_for(&labels, max, settings, |candidate| {
                accept(candidate).then_some(worker_id)
            })
            .await?;
        Ok(leased.into_iter().map(|(_, run)| run).collect())
    }

    /// Leases up to `max` queued runs to workers that carry `labels`, in the
    /// fair order of `queue.rs`: runs whose selector `labels` do not satisfy
    /// are never read, and for every other candidate `take` names the worker
    /// that gets it, or `None` to pass it over, so a refused row never keeps
    /// the workers from the runs behind it. One scan serves any number of
    /// workers with the same labels (a replica's coordinator, see
    /// `leasing/dispatch.rs`). Returns each grant with its worker.
    ///
    /// Each grant is one conditional `UPDATE … WHERE state = 'queued'`; on
    /// PostgreSQL the row is first locked with `SKIP LOCKED`, so replicas
    /// leasing at once pass over each other's candidates instead of waiting.
    /// A candidate granted elsewhere meanwhile is skipped: `take` chose a
    /// worker for it that this call does not report.
    pub async fn acquire_runs_for(
        &self,
        labels: &BTreeMap<String, String>,
        max: usize,
        settings: &LeaseSettings,
        mut take: impl FnMut(&Candidate) -> Option<Uuid>,
    ) -> DomainResult<Vec<(Uuid, LeasedRun)>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = self.now().await?;
        let expire = now + chrono_duration(settings.ttl);
        let deadline = now + chrono_duration(settings.attempt_deadline);
        let mut scan = QueueScan::new(now, labels, max);
        let lock = format!(
            "SELECT id FROM runs WHERE id = $1 AND state = 'queued'{}",
            self.lock_clause()
        );
        let mut leased = Vec::new();
        while leased.len() < max {
            let Some(candidate) = self.next_candidate(&mut scan).await? else {
                break;
            };
            let Some(worker_id) = take(&candidate) else {
                continue;
            };
            let id = candidate.id;
            let granted = on_pool!(self, |pool| in_transaction!(pool, |tx| {
                let free: Option<Uuid> = sqlx::query_scalar(&lock)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "run"))?;
                if free.is_none() {
                    return Ok(None);
                }
                sqlx::query_as::<_, (i64, i32)>(include_str!("sql/leases/grant.sql"))
                    .bind(id)
                    .bind(worker_id)
                    .bind(expire)
                    .bind(deadline)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "run"))
            }))?;
            if let Some((lease_token, attempt)) = granted {
                self.publish_run(id);
                leased.push((
                    worker_id,
                    LeasedRun {
                        id,
                        lease_token,
                        attempt,
                        deadline,
                    },
                ));
            }
        }
        Ok(leased)
    }

    /// Extends a lease and records progress, if the lease is still current
    /// and `worker_id` holds it.
    pub async fn heartbeat(
        &self,
        lease: WorkerLease,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<LeaseState> {
        let WorkerLease {
            run_id,
            token: lease_token,
            worker_id,
        } = lease;
        let now = self.now().await?;
        let expire = now + chrono_duration(settings.ttl);
        let cancel: Option<bool> = on_pool!(self, |pool| sqlx::query_scalar(include_str!(
            "sql/leases/heartbeat.sql"
        ))
        .bind(run_id)
        .bind(lease_token)
        .bind(expire)
        .bind(progress_json)
        .bind(now)
        .bind(worker_id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run"))?;
        let Some(cancel_requested) = cancel else {
            return self.why_refused(lease).await;
        };
        self.publish_run(run_id);
        Ok(LeaseState::Current { cancel_requested })
    }

    /// Gives a run back without using up its attempt (worker draining), if
    /// the lease is current and `worker_id` holds it. Whatever is staged
    /// under a lease that moved on is dropped; another worker's is kept.
    pub async fn release_run(&self, lease: WorkerLease) -> DomainResult<LeaseState> {
        let WorkerLease {
            run_id,
            token: lease_token,
            worker_id,
        } = lease;
        let now = self.now().await?;
        let state = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let release = sqlx::query(include_str!("sql/leases/release.sql"))
                .bind(run_id)
                .bind(lease_token)
                .bind(now)
                .bind(worker_id);
            let state = if execute_in_tx!(tx, release, "run") > 0 {
                LeaseState::Current {
                    cancel_requested: false,
                }
            } else {
                let holder: Option<Option<Uuid>> = sqlx::query_scalar(LEASE_HOLDER)
                    .bind(run_id)
                    .bind(lease_token)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "run"))?;
                refusal(holder.flatten(), worker_id)
            };
            if state != LeaseState::HeldByAnother {
                delete_staged_batches_in_tx!(tx, run_id, lease_token);
            }
            Ok(state)
        }))?;
        match state {
            LeaseState::HeldByAnother => return Ok(state),
            LeaseState::Current { .. } => self.publish_run(run_id),
            LeaseState::Lost => {}
        }
        self.discard_plans(run_id, lease_token).await?;
        Ok(state)
    }

    /// Ends every lease whose TTL or attempt deadline passed: the run is
    /// requeued with backoff, or fails after its last attempt, or is cancelled
    /// if a cancel was pending. Returns the ids of the runs changed.
    pub async fn expire_leases(&self, settings: &LeaseSettings) -> DomainResult<Vec<Uuid>> {
        let now = self.now().await?;
        let select = format!(
            "SELECT id, attempt, max_attempts, cancel_requested, lease_token, \
             CASE WHEN deadline_time < $1 THEN 1 ELSE 0 END FROM runs \
             WHERE state = 'running' AND (lease_expire_time < $1 OR deadline_time < $1){}",
            self.lock_clause()
        );
        let mut changed = Vec::new();
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let rows: Vec<(Uuid, i32, i32, bool, i64, i32)> = sqlx::query_as(&select)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "runs"))?;
            for (id, attempt, max_attempts, cancel_requested, lease_token, past_deadline) in rows {
                let cause = if past_deadline == 1 {
                    "attempt deadline exceeded"
                } else {
                    "lease expired (worker lost)"
                };
                let end = AttemptEnd::decide(
                    attempt,
                    cause,
                    cancel_requested,
                    attempt < max_attempts,
                    now,
                    settings,
                );
                let expire = attempt_end_query!(include_str!("sql/leases/expire.sql"), id, end)
                    .bind(now)
                    .bind(lease_token);
                execute_in_tx!(tx, expire, "run");
                delete_staged_batches_in_tx!(tx, id, lease_token);
                changed.push((id, lease_token));
            }
            Ok(())
        }))?;
        for &(id, _) in &changed {
            self.publish_run(id);
        }
        for &(id, lease_token) in &changed {
            self.discard_plans(id, lease_token).await?;
        }
        Ok(changed.into_iter().map(|(id, _)| id).collect())
    }

    /// Records the end of an attempt, fenced on the lease. Success makes the
    /// run SUCCEEDED and writes its automatic metadata; failure requeues it
    /// with backoff while attempts remain and it is retryable, else fails it.
    /// A completion repeated by the same lease gets the same answer; one
    /// about a current lease another worker holds is refused.
    pub async fn complete_attempt(
        &self,
        lease: WorkerLease,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let result = self
            .finish_attempt(lease, outcome, progress_json, settings, None, None)
            .await?;
        result
            .ok_or_else(|| DomainError::Internal("an attempt without a snapshot went stale".into()))
    }

    /// [`Catalog::complete_attempt`], applying the snapshot plan `planned`
    /// (a backup) or recording the snapshot copy `copy` (a copy run) in the
    /// same transaction on success. `None` when the plan went stale
    /// (nothing was written).
    pub(crate) async fn finish_attempt(
        &self,
        lease: WorkerLease,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
        planned: Option<&PlannedCommit<'_>>,
        copy: Option<&crate::catalog::copies::CopyCommit>,
    ) -> DomainResult<Option<CompletionResult>> {
        let WorkerLease {
            run_id,
            token: lease_token,
            worker_id,
        } = lease;
        let now = self.now().await?;
        let select = format!(
            "SELECT state, lease_token, completed_lease_token, attempt, max_attempts, cancel_requested, owner_id, job_id, start_time, worker_id, kind \
             FROM runs WHERE id = $1{}",
            self.row_lock_clause()
        );
        type RunLease = (
            String,
            i64,
            Option<i64>,
            i32,
            i32,
            bool,
            Uuid,
            Option<Uuid>,
            Option<DateTime<Utc>>,
            Option<Uuid>,
            String,
        );
        let mut committed = None;
        let mut changed = false;
        let result = on_pool!(self, |pool, dialect| in_transaction!(pool, |tx| {
            let row: Option<RunLease> = sqlx::query_as(&select)
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "run"))?;
            let Some((
                state,
                current_token,
                completed_token,
                attempt,
                max_attempts,
                cancel_requested,
                owner_id,
                job_id,
                start_time,
                holder,
                kind,
            )) = row
            else {
                return Err(DomainError::not_found("run", run_id));
            };
            if completed_token == Some(lease_token) {
                return Ok(Some(CompletionResult::Accepted { state }));
            }
            if state != "running" || current_token != lease_token {
                return Ok(Some(CompletionResult::Rejected {
                    reason: format!("lease {lease_token} of run {run_id} is no longer current"),
                }));
            }
            if refusal(holder, worker_id) == LeaseState::HeldByAnother {
                return Ok(Some(CompletionResult::HeldByAnother));
            }
            // The accepted cancel wins over a success reported after it:
            // nothing of the attempt is committed. Not for a retention,
            // whose worker already deleted the manifests: the catalog
            // must follow what storage holds.
            let cancel_wins = cancel_requested && kind != RunKind::Retention.as_str();
            let new_state = match outcome {
                AttemptOutcome::Success { .. } if cancel_wins => {
                    let end = AttemptEnd::cancelled(
                        attempt,
                        "it finished after the cancel was accepted; nothing of it was committed",
                        now,
                    );
                    end_attempt_in_tx!(tx, run_id, end, progress_json, lease_token, now)
                }
                AttemptOutcome::Success {
                    size_bytes,
                    details,
                    manifest_key,
                    ..
                } => {
                    if let Some(planned) = planned {
                        let applied = apply_plan_in_tx!(
                            tx,
                            dialect,
                            planned.key,
                            planned.scope,
                            planned.generation,
                            now
                        )?;
                        let Some(stats) = applied else {
                            return Ok(None);
                        };
                        tracing::info!(run = %run_id, ?stats, "snapshot committed");
                        committed = Some(stats);
                    }
                    let duration =
                        start_time.map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0);
                    let succeed = sqlx::query(include_str!("sql/leases/succeed.sql"))
                        .bind(run_id)
                        .bind(now)
                        .bind(progress_json)
                        .bind(manifest_key)
                        .bind(lease_token);
                    execute_in_tx!(tx, succeed, "run");
                    if let Some(copy) = copy {
                        let record = sqlx::query(include_str!("sql/leases/record_copy.sql"))
                            .bind(new_id())
                            .bind(copy.snapshot_run_id)
                            .bind(copy.repository_id)
                            .bind(run_id)
                            .bind(&copy.target_json)
                            .bind(manifest_key)
                            .bind(now);
                        execute_in_tx!(tx, record, "snapshot copy");
                    }
                    let record = sqlx::query(include_str!("sql/leases/record_metadata.sql"))
                        .bind(new_id())
                        .bind(owner_id)
                        .bind(job_id)
                        .bind(run_id)
                        .bind(*size_bytes)
                        .bind(duration)
                        .bind(details)
                        .bind(now);
                    execute_in_tx!(tx, record, "backup metadata");
                    "succeeded"
                }
                AttemptOutcome::Failure { error, retryable } => {
                    let cause = if cancel_requested {
                        format!("the worker stopped it ({error})")
                    } else {
                        error.clone()
                    };
                    let end = AttemptEnd::decide(
                        attempt,
                        &cause,
                        cancel_requested,
                        *retryable && attempt < max_attempts,
                        now,
                        settings,
                    );
                    end_attempt_in_tx!(tx, run_id, end, progress_json, lease_token, now)
                }
            };
            delete_staged_batches_in_tx!(tx, run_id, lease_token);
            changed = true;
            Ok(Some(CompletionResult::Accepted {
                state: new_state.to_string(),
            }))
        }))?;
        if changed {
            self.publish_run(run_id);
        }
        if let Some(stats) = committed {
            self.refresh_statistics(&stats).await;
        }
        Ok(result)
    }
}
