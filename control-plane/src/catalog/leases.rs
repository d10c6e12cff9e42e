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

use coffer_proto::v1 as pb;
use prost::Message;

use super::commit::{
    apply_plan_in_tx, fresh_commit_key, insert_pending_in_tx, lease_commit_key, PendingRow,
    SnapshotScope,
};
use super::objects::PLAN_ATTEMPTS;
use super::{new_id, on_pool, to_json, Backend, Catalog};
use crate::error::{from_sqlx, DomainError, DomainResult};
use crate::model::object::{FileKind, SnapshotEntry};
use crate::model::run::{Run, RunKind, RunSpec, RunState, Target};

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

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Catalog {
    fn lock_clause(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    fn row_lock_clause(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    /// Registers (or re-registers, by name) a worker and marks it connected.
    pub async fn register_worker(&self, worker: &WorkerRegistration) -> DomainResult<Uuid> {
        let now = self.now().await?;
        on_pool!(self, pool => sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO workers (id, name, labels, slots, source_roots, version, connected, last_seen_time, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7) \
             ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, slots = excluded.slots, \
             source_roots = excluded.source_roots, version = excluded.version, connected = TRUE, \
             last_seen_time = excluded.last_seen_time RETURNING id")
            .bind(new_id())
            .bind(&worker.name)
            .bind(to_json(&worker.labels))
            .bind(worker.slots)
            .bind(to_json(&worker.source_roots))
            .bind(&worker.version)
            .bind(now)
            .fetch_one(pool)
            .await)
        .map_err(|e| from_sqlx(e, "worker"))
    }

    /// Records that a worker's session is open or closed, and when it was last heard of.
    pub async fn touch_worker(&self, id: Uuid, connected: bool) -> DomainResult<()> {
        let now = self.now().await?;
        on_pool!(self, pool => sqlx::query("UPDATE workers SET connected = $2, last_seen_time = $3 WHERE id = $1")
            .bind(id).bind(connected).bind(now).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "worker"))?;
        Ok(())
    }

    /// Workers seen since `since` (all when `None`), by name.
    pub async fn list_workers(&self, since: Option<DateTime<Utc>>) -> DomainResult<Vec<WorkerRow>> {
        on_pool!(self, pool => sqlx::query_as::<_, WorkerRow>(
            "SELECT id, name, labels, slots, source_roots, version, connected, last_seen_time FROM workers \
             WHERE ($1 IS NULL OR last_seen_time >= $1 OR connected) ORDER BY name")
            .bind(since)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "workers"))
    }

    /// Current leases of a worker: `(run id, lease token)`.
    pub async fn leases_of_worker(&self, worker_id: Uuid) -> DomainResult<Vec<(Uuid, i64)>> {
        on_pool!(self, pool => sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT id, lease_token FROM runs WHERE worker_id = $1 AND state = 'running' ORDER BY id")
            .bind(worker_id)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "runs"))
    }

    /// Leases up to `max` queued runs that `accept` agrees to, to `worker_id`.
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
        let now = self.now().await?;
        let expire = now + chrono_duration(settings.ttl);
        let deadline = now + chrono_duration(settings.attempt_deadline);
        let scan = i64::try_from(max.saturating_mul(4).saturating_add(16)).unwrap_or(i64::MAX);
        let select = format!(
            "SELECT id, spec, worker_selector FROM runs WHERE state = 'queued' AND not_before_time <= $1 \
             AND NOT cancel_requested ORDER BY not_before_time, id LIMIT $2{}",
            self.lock_clause()
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            let rows: Vec<(Uuid, String, String)> = sqlx::query_as(&select)
                .bind(now)
                .bind(scan)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "runs"))?;
            let mut leased = Vec::new();
            for (id, spec, selector) in rows {
                if leased.len() >= max {
                    break;
                }
                let candidate = Candidate {
                    id,
                    spec,
                    worker_selector: serde_json::from_str(&selector).unwrap_or_default(),
                };
                if !accept(&candidate) {
                    continue;
                }
                let granted: Option<(i64, i32)> = sqlx::query_as(
                    "UPDATE runs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
                     worker_id = $2, lease_expire_time = $3, deadline_time = $4, start_time = $5, update_time = $5 \
                     WHERE id = $1 AND state = 'queued' RETURNING lease_token, attempt")
                    .bind(id)
                    .bind(worker_id)
                    .bind(expire)
                    .bind(deadline)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "run"))?;
                if let Some((lease_token, attempt)) = granted {
                    leased.push(LeasedRun { id, lease_token, attempt, deadline });
                }
            }
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok(leased)
        })
    }

    /// Extends a lease and records progress, if the lease is still current.
    pub async fn heartbeat(
        &self,
        run_id: Uuid,
        lease_token: i64,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<LeaseState> {
        let now = self.now().await?;
        let expire = now + chrono_duration(settings.ttl);
        let cancel: Option<bool> = on_pool!(self, pool => sqlx::query_scalar(
            "UPDATE runs SET lease_expire_time = $3, progress = $4, update_time = $5 \
             WHERE id = $1 AND lease_token = $2 AND state = 'running' RETURNING cancel_requested")
            .bind(run_id)
            .bind(lease_token)
            .bind(expire)
            .bind(progress_json)
            .bind(now)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "run"))?;
        Ok(match cancel {
            Some(cancel_requested) => LeaseState::Current { cancel_requested },
            None => LeaseState::Lost,
        })
    }

    /// Stages one batch of an attempt's output (and records its per-file
    /// errors), if the lease is current. A batch sent twice is stored once.
    ///
    /// A backup's batch is also planned at once (see [`super::commit`]), so
    /// that the completion has little left to do; a batch that cannot be
    /// planned now (a path named twice, an unknown kind) is stored unplanned
    /// and the completion plans again, reporting the error.
    pub async fn stage_batch(
        &self,
        run_id: Uuid,
        lease_token: i64,
        sequence: i64,
        payload: &[u8],
        errors: &[(String, String)],
    ) -> DomainResult<LeaseState> {
        let plan = match self.plan_staged_batch(run_id, payload).await {
            Ok(plan) => plan,
            Err(error) => {
                tracing::debug!(run = %run_id, sequence, %error, "batch staged unplanned");
                None
            }
        };
        if plan.is_some() {
            match self
                .stage(
                    run_id,
                    lease_token,
                    sequence,
                    payload,
                    errors,
                    plan.as_ref(),
                )
                .await
            {
                Ok(state) => return Ok(state),
                Err(error) => {
                    tracing::debug!(run = %run_id, sequence, %error, "batch staged unplanned");
                }
            }
        }
        self.stage(run_id, lease_token, sequence, payload, errors, None)
            .await
    }

    /// The plan of a backup's batch, with the generation it read.
    async fn plan_staged_batch(
        &self,
        run_id: Uuid,
        payload: &[u8],
    ) -> DomainResult<Option<(i64, Vec<PendingRow>)>> {
        let run = self.get_run(run_id).await?;
        let Some(scope) = scope_of_run(&run) else {
            return Ok(None);
        };
        let (entries, removed) = decode_batch(run_id, 0, payload)?;
        let generation = self.commit_generation(&scope).await?;
        let rows = self.plan_entries(&scope, &entries, &removed).await?;
        Ok(Some((generation, rows)))
    }

    async fn stage(
        &self,
        run_id: Uuid,
        lease_token: i64,
        sequence: i64,
        payload: &[u8],
        errors: &[(String, String)],
        plan: Option<&(i64, Vec<PendingRow>)>,
    ) -> DomainResult<LeaseState> {
        let now = self.now().await?;
        let check = format!(
            "SELECT attempt, cancel_requested FROM runs WHERE id = $1 AND lease_token = $2 AND state = 'running'{}",
            self.row_lock_clause()
        );
        let key = lease_commit_key(run_id, lease_token);
        on_pool!(self, pool, dialect => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            let current: Option<(i32, bool)> = sqlx::query_as(&check)
                .bind(run_id).bind(lease_token).fetch_optional(&mut *tx).await
                .map_err(|e| from_sqlx(e, "run"))?;
            let Some((attempt, cancel_requested)) = current else {
                return Ok(LeaseState::Lost);
            };
            let inserted = sqlx::query(
                "INSERT INTO run_staged_batches (run_id, lease_token, sequence, payload, create_time, generation)                  VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
                .bind(run_id).bind(lease_token).bind(sequence).bind(payload).bind(now)
                .bind(plan.map(|(generation, _)| *generation))
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "staged batch"))?;
            if inserted > 0 {
                for (path, message) in errors {
                    sqlx::query("INSERT INTO run_errors (run_id, attempt, path, message, create_time) VALUES ($1, $2, $3, $4, $5)")
                        .bind(run_id).bind(attempt).bind(path).bind(message).bind(now)
                        .execute(&mut *tx).await.map(|r| r.rows_affected())
                        .map_err(|e| from_sqlx(e, "run error"))?;
                }
                if let Some((_, rows)) = plan {
                    insert_pending_in_tx!(tx, dialect, &key, run_id, rows)?;
                }
            }
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok(LeaseState::Current { cancel_requested })
        })
    }

    /// Whether every staged batch of the lease was planned against the
    /// repository's current generation, which is returned if so.
    async fn lease_plan_generation(
        &self,
        run_id: Uuid,
        lease_token: i64,
        scope: &SnapshotScope,
    ) -> DomainResult<Option<i64>> {
        let generation = self.commit_generation(scope).await?;
        let stale: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 \
             AND (generation IS NULL OR generation <> $3)")
            .bind(run_id).bind(lease_token).bind(generation)
            .fetch_one(pool).await)
        .map_err(|e| from_sqlx(e, "staged batches"))?;
        Ok((stale == 0).then_some(generation))
    }

    /// Plans a lease's snapshot again from its staged batches, a few
    /// batches at a time, under a fresh key. Returns the key and generation.
    async fn replan_lease(
        &self,
        run_id: Uuid,
        lease_token: i64,
        scope: &SnapshotScope,
    ) -> DomainResult<(String, i64)> {
        let generation = self.commit_generation(scope).await?;
        let key = fresh_commit_key(run_id, lease_token);
        let mut after = -1i64;
        loop {
            let page: Vec<(i64, Vec<u8>)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT sequence, payload FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 \
                 AND sequence > $3 ORDER BY sequence LIMIT 16")
                .bind(run_id).bind(lease_token).bind(after)
                .fetch_all(pool).await)
            .map_err(|e| from_sqlx(e, "staged batches"))?;
            let Some(&(last, _)) = page.last() else {
                return Ok((key, generation));
            };
            after = last;
            for (sequence, payload) in page {
                let (entries, removed) = decode_batch(run_id, sequence, &payload)?;
                let rows = self.plan_entries(scope, &entries, &removed).await?;
                self.store_pending(&key, run_id, &rows).await?;
            }
        }
    }

    /// The staged batches of a lease, in sequence order.
    pub async fn staged_batches(
        &self,
        run_id: Uuid,
        lease_token: i64,
    ) -> DomainResult<Vec<(i64, Vec<u8>)>> {
        on_pool!(self, pool => sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT sequence, payload FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2 ORDER BY sequence")
            .bind(run_id).bind(lease_token).fetch_all(pool).await)
        .map_err(|e| from_sqlx(e, "staged batches"))
    }

    /// Gives a run back without using up its attempt (worker draining).
    pub async fn release_run(&self, run_id: Uuid, lease_token: i64) -> DomainResult<LeaseState> {
        let now = self.now().await?;
        let released = on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            let released = sqlx::query(
                "UPDATE runs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, \
                 finish_time = CASE WHEN cancel_requested THEN $3 ELSE finish_time END, \
                 attempt = attempt - 1, worker_id = NULL, lease_expire_time = NULL, deadline_time = NULL, \
                 not_before_time = $3, update_time = $3 \
                 WHERE id = $1 AND lease_token = $2 AND state = 'running'")
                .bind(run_id).bind(lease_token).bind(now)
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "run"))?;
            sqlx::query("DELETE FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2")
                .bind(run_id).bind(lease_token)
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "staged batches"))?;
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            released
        });
        self.discard_plans(run_id, lease_token).await?;
        Ok(if released > 0 {
            LeaseState::Current {
                cancel_requested: false,
            }
        } else {
            LeaseState::Lost
        })
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
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            let rows: Vec<(Uuid, i32, i32, bool, i64, i32)> = sqlx::query_as(&select)
                .bind(now).fetch_all(&mut *tx).await.map_err(|e| from_sqlx(e, "runs"))?;
            for (id, attempt, max_attempts, cancel_requested, lease_token, past_deadline) in rows {
                let cause = if past_deadline == 1 { "attempt deadline exceeded" } else { "lease expired (worker lost)" };
                let error = format!("attempt {attempt}: {cause}");
                let (state, not_before, finish) = if cancel_requested {
                    ("cancelled", now, Some(now))
                } else if attempt >= max_attempts {
                    ("failed", now, Some(now))
                } else {
                    ("queued", now + chrono_duration(settings.backoff(attempt)), None)
                };
                sqlx::query(
                    "UPDATE runs SET state = $2, error = $3, not_before_time = $4, finish_time = $5, worker_id = NULL, \
                     lease_expire_time = NULL, deadline_time = NULL, update_time = $6 WHERE id = $1 AND lease_token = $7")
                    .bind(id).bind(state).bind(&error).bind(not_before).bind(finish).bind(now).bind(lease_token)
                    .execute(&mut *tx).await.map(|r| r.rows_affected())
                    .map_err(|e| from_sqlx(e, "run"))?;
                sqlx::query("DELETE FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2")
                    .bind(id).bind(lease_token)
                    .execute(&mut *tx).await.map(|r| r.rows_affected())
                    .map_err(|e| from_sqlx(e, "staged batches"))?;
                changed.push((id, lease_token));
            }
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok::<_, DomainError>(())
        })?;
        for &(id, lease_token) in &changed {
            self.discard_plans(id, lease_token).await?;
        }
        Ok(changed.into_iter().map(|(id, _)| id).collect())
    }

    /// Records the end of an attempt, fenced on the lease. Success makes the
    /// run SUCCEEDED and writes its automatic metadata; failure requeues it
    /// with backoff while attempts remain and it is retryable, else fails it.
    /// A completion repeated by the same lease gets the same answer.
    pub async fn complete_attempt(
        &self,
        run_id: Uuid,
        lease_token: i64,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let result = self
            .finish_attempt(run_id, lease_token, outcome, progress_json, settings, None)
            .await?;
        result
            .ok_or_else(|| DomainError::Internal("an attempt without a snapshot went stale".into()))
    }

    /// [`Catalog::complete_attempt`], applying the snapshot plan `planned`
    /// in the same transaction on success. `None` when the plan went stale
    /// (nothing was written).
    async fn finish_attempt(
        &self,
        run_id: Uuid,
        lease_token: i64,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
        planned: Option<&PlannedCommit<'_>>,
    ) -> DomainResult<Option<CompletionResult>> {
        let now = self.now().await?;
        let select = format!(
            "SELECT state, lease_token, completed_lease_token, attempt, max_attempts, cancel_requested, owner_id, job_id, start_time \
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
        );
        let mut committed = None;
        let state = on_pool!(self, pool, dialect => {
            let mut tx = pool.begin().await.map_err(|e| from_sqlx(e, "catalog"))?;
            let row: Option<RunLease> = sqlx::query_as(&select)
                .bind(run_id).fetch_optional(&mut *tx).await.map_err(|e| from_sqlx(e, "run"))?;
            let Some((state, current_token, completed_token, attempt, max_attempts, cancel_requested, owner_id, job_id, start_time)) = row else {
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
            let new_state = match outcome {
                AttemptOutcome::Success { size_bytes, details, manifest_key, .. } => {
                    if let Some(planned) = planned {
                        let applied = apply_plan_in_tx!(tx, dialect, planned.key, planned.scope, planned.generation, now)?;
                        let Some(stats) = applied else {
                            return Ok(None);
                        };
                        tracing::info!(run = %run_id, ?stats, "snapshot committed");
                        committed = Some(stats);
                    }
                    let duration = start_time.map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0);
                    sqlx::query(
                        "UPDATE runs SET state = 'succeeded', finish_time = $2, progress = $3, error = '', manifest_key = $4, \
                         completed_lease_token = $5, worker_id = NULL, lease_expire_time = NULL, update_time = $2 WHERE id = $1")
                        .bind(run_id).bind(now).bind(progress_json).bind(manifest_key).bind(lease_token)
                        .execute(&mut *tx).await.map(|r| r.rows_affected())
                        .map_err(|e| from_sqlx(e, "run"))?;
                    sqlx::query(
                        "INSERT INTO backup_metadata (id, owner_id, job_id, run_id, size_bytes, duration_seconds, details, source, create_time, update_time) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'automatic', $8, $8)")
                        .bind(new_id()).bind(owner_id).bind(job_id).bind(run_id).bind(*size_bytes).bind(duration).bind(details).bind(now)
                        .execute(&mut *tx).await.map(|r| r.rows_affected())
                        .map_err(|e| from_sqlx(e, "backup metadata"))?;
                    "succeeded"
                }
                AttemptOutcome::Failure { error, retryable } => {
                    let message = format!("attempt {attempt}: {error}");
                    let (state, not_before, finish) = if cancel_requested {
                        ("cancelled", now, Some(now))
                    } else if *retryable && attempt < max_attempts {
                        ("queued", now + chrono_duration(settings.backoff(attempt)), None)
                    } else {
                        ("failed", now, Some(now))
                    };
                    sqlx::query(
                        "UPDATE runs SET state = $2, error = $3, not_before_time = $4, finish_time = $5, progress = $6, \
                         completed_lease_token = $7, worker_id = NULL, lease_expire_time = NULL, deadline_time = NULL, update_time = $8 \
                         WHERE id = $1")
                        .bind(run_id).bind(state).bind(&message).bind(not_before).bind(finish).bind(progress_json)
                        .bind(lease_token).bind(now)
                        .execute(&mut *tx).await.map(|r| r.rows_affected())
                        .map_err(|e| from_sqlx(e, "run"))?;
                    state
                }
            };
            sqlx::query("DELETE FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2")
                .bind(run_id).bind(lease_token)
                .execute(&mut *tx).await.map(|r| r.rows_affected())
                .map_err(|e| from_sqlx(e, "staged batches"))?;
            tx.commit().await.map_err(|e| from_sqlx(e, "catalog"))?;
            Ok::<_, DomainError>(new_state)
        })?;
        if let Some(stats) = committed {
            self.refresh_statistics(&stats).await;
        }
        Ok(Some(CompletionResult::Accepted {
            state: state.to_string(),
        }))
    }
}

impl Catalog {
    /// Ends an attempt as the worker reported it. A successful backup's staged
    /// file batches become the snapshot's objects and versions in the same
    /// transaction as the run's final state and metadata, so a failed,
    /// cancelled or fenced-off attempt leaves no half-visible versions. A
    /// success whose batches did not all arrive is recorded as a retryable failure.
    pub async fn commit_attempt(
        &self,
        run_id: Uuid,
        lease_token: i64,
        outcome: &AttemptOutcome,
        progress_json: &str,
        batch_count: i64,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let AttemptOutcome::Success { parent_run_id, .. } = outcome else {
            return self
                .complete_attempt(run_id, lease_token, outcome, progress_json, settings)
                .await;
        };
        let run = self.get_run(run_id).await?;
        if let RunSpec::Retention(retention) = &run.spec {
            // Only the current attempt removes anything; a stale one is
            // refused by `complete_attempt` as usual.
            if run.state == RunState::Running && run.lease_token == lease_token {
                let stats = self.remove_snapshots(&retention.removed).await?;
                tracing::info!(run = %run_id, ?stats, "snapshots removed from the catalog");
            }
            return self
                .complete_attempt(run_id, lease_token, outcome, progress_json, settings)
                .await;
        }
        if !matches!(run.kind, RunKind::Backup | RunKind::RebuildCatalog) {
            return self
                .complete_attempt(run_id, lease_token, outcome, progress_json, settings)
                .await;
        }
        let received = self.staged_batch_count(run_id, lease_token).await?;
        if received != batch_count {
            return self
                .incomplete(
                    run_id,
                    lease_token,
                    received,
                    batch_count,
                    progress_json,
                    settings,
                )
                .await;
        }
        if run.kind == RunKind::RebuildCatalog {
            let batches = self.staged_batches(run_id, lease_token).await?;
            return self
                .commit_rebuild(
                    &run,
                    lease_token,
                    outcome,
                    progress_json,
                    &batches,
                    settings,
                )
                .await;
        }
        let Some(scope) = scope_of_run(&run) else {
            return Err(DomainError::Internal(format!(
                "run {run_id} is not a backup"
            )));
        };
        if let Some(parent) = parent_run_id {
            let latest = self.latest_snapshot(&scope.repository, run.job_id).await?;
            if latest.as_ref().map(|s| s.id) != Some(*parent) {
                let failure = AttemptOutcome::Failure {
                    error: format!(
                        "the incremental was taken against snapshot {parent}, which is no \
                         longer the latest of this job in {}",
                        scope.repository
                    ),
                    retryable: true,
                };
                return self
                    .complete_attempt(run_id, lease_token, &failure, progress_json, settings)
                    .await;
            }
        }
        let result = self
            .commit_snapshot(
                &scope,
                lease_token,
                outcome,
                progress_json,
                settings,
                parent_run_id.is_none(),
            )
            .await;
        // Whatever the outcome, this lease's plans are spent.
        self.discard_plans(run_id, lease_token).await?;
        result
    }

    /// Applies a backup's snapshot with the run's success: with the plan
    /// made while its batches arrived if that is still current, else with
    /// a new one (a few times, should the repository keep changing).
    async fn commit_snapshot(
        &self,
        scope: &SnapshotScope,
        lease_token: i64,
        outcome: &AttemptOutcome,
        progress_json: &str,
        settings: &LeaseSettings,
        full: bool,
    ) -> DomainResult<CompletionResult> {
        let run_id = scope.run_id;
        let _serialized = self.lock_commits(scope).await;
        for attempt in 0..PLAN_ATTEMPTS {
            if attempt > 0 {
                self.stale_plan_pause().await;
            }
            let current = if attempt == 0 {
                self.lease_plan_generation(run_id, lease_token, scope)
                    .await?
            } else {
                None
            };
            let (key, generation) = match current {
                Some(generation) => (lease_commit_key(run_id, lease_token), generation),
                None => self.replan_lease(run_id, lease_token, scope).await?,
            };
            if full {
                if self.plan_has_deletions(&key).await? {
                    return Err(DomainError::invalid(
                        "file_batch.files.kind",
                        "`deleted` records belong to incremental backups only",
                    ));
                }
                self.plan_deletions(scope, &key).await?;
            }
            let planned = PlannedCommit {
                key: &key,
                scope,
                generation,
            };
            if let Some(result) = self
                .finish_attempt(
                    run_id,
                    lease_token,
                    outcome,
                    progress_json,
                    settings,
                    Some(&planned),
                )
                .await?
            {
                return Ok(result);
            }
            tracing::info!(run = %run_id, "the repository changed while the snapshot was planned; planning again");
        }
        let failure = AttemptOutcome::Failure {
            error: "the repository kept changing while the snapshot was committed".into(),
            retryable: true,
        };
        self.complete_attempt(run_id, lease_token, &failure, progress_json, settings)
            .await
    }

    /// Records a success whose batches did not all arrive as a retryable failure.
    async fn incomplete(
        &self,
        run_id: Uuid,
        lease_token: i64,
        received: i64,
        batch_count: i64,
        progress_json: &str,
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let failure = AttemptOutcome::Failure {
            error: format!("the control plane received {received} of {batch_count} file batches"),
            retryable: true,
        };
        self.complete_attempt(run_id, lease_token, &failure, progress_json, settings)
            .await
    }

    async fn staged_batch_count(&self, run_id: Uuid, lease_token: i64) -> DomainResult<i64> {
        on_pool!(self, pool => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM run_staged_batches WHERE run_id = $1 AND lease_token = $2")
            .bind(run_id).bind(lease_token).fetch_one(pool).await)
        .map_err(|e| from_sqlx(e, "staged batches"))
    }

    /// Completes a catalog rebuild whose batches all arrived: every snapshot
    /// they describe that the catalog does not know becomes a succeeded backup run with its
    /// versions (each in its own transaction, so a retried rebuild resumes),
    /// then the rebuild run's own outcome is recorded.
    async fn commit_rebuild(
        &self,
        run: &Run,
        lease_token: i64,
        outcome: &AttemptOutcome,
        progress_json: &str,
        batches: &[(i64, Vec<u8>)],
        settings: &LeaseSettings,
    ) -> DomainResult<CompletionResult> {
        let mut snapshots: Vec<(pb::RebuiltSnapshot, Vec<SnapshotEntry>)> = Vec::new();
        for (sequence, payload) in batches {
            let batch = pb::FileBatch::decode(payload.as_slice()).map_err(|e| {
                DomainError::Internal(format!(
                    "staged batch {sequence} of run {} is corrupt: {e}",
                    run.id
                ))
            })?;
            let Some(snapshot) = batch.snapshot else {
                return Err(DomainError::invalid(
                    "file_batch.snapshot",
                    "is required in a rebuild",
                ));
            };
            if snapshots
                .last()
                .is_none_or(|(last, _)| last.run_id != snapshot.run_id)
            {
                snapshots.push((snapshot, Vec::new()));
            }
            let entries = &mut snapshots.last_mut().expect("just pushed").1;
            for file in batch.files {
                entries.push(entry_from_record(file)?);
            }
        }
        for (snapshot, entries) in snapshots {
            self.record_rebuilt_snapshot(run, &snapshot, entries)
                .await?;
        }
        self.complete_attempt(run.id, lease_token, outcome, progress_json, settings)
            .await
    }
}

/// The repository a backup writes to, as objects are keyed: one per bucket
/// and prefix, or per filesystem path.
pub fn repository_of(target: &Target) -> String {
    match target {
        Target::Bucket { bucket_id, prefix } => {
            format!("bucket:{bucket_id}/{}", prefix.trim_matches('/'))
        }
        Target::Filesystem { path } => format!("filesystem:{path}"),
        Target::Nfs { path } => format!("nfs:{path}"),
    }
}

/// A snapshot plan ready to apply: its key, where it goes, and the
/// repository generation it was made against.
struct PlannedCommit<'a> {
    key: &'a str,
    scope: &'a SnapshotScope,
    generation: i64,
}

/// Where a backup run's snapshot goes; `None` for other runs.
fn scope_of_run(run: &Run) -> Option<SnapshotScope> {
    let RunSpec::Backup(backup) = &run.spec else {
        return None;
    };
    Some(SnapshotScope {
        run_id: run.id,
        owner_id: run.owner_id,
        bucket_id: backup.target.bucket_id(),
        repository: repository_of(&backup.target),
        job_id: run.job_id,
    })
}

/// The entries of a staged batch, and the paths it records as deleted.
fn decode_batch(
    run_id: Uuid,
    sequence: i64,
    payload: &[u8],
) -> DomainResult<(Vec<SnapshotEntry>, Vec<Vec<u8>>)> {
    let batch = pb::FileBatch::decode(payload).map_err(|e| {
        DomainError::Internal(format!(
            "staged batch {sequence} of run {run_id} is corrupt: {e}"
        ))
    })?;
    let mut entries = Vec::with_capacity(batch.files.len());
    let mut removed = Vec::new();
    for file in batch.files {
        if file.kind == "deleted" {
            removed.push(file.path);
        } else {
            entries.push(entry_from_record(file)?);
        }
    }
    Ok((entries, removed))
}

fn entry_from_record(file: pb::FileRecord) -> DomainResult<SnapshotEntry> {
    let kind = match file.kind.as_str() {
        "regular" => FileKind::Regular,
        "directory" => FileKind::Directory,
        "symlink" => FileKind::Symlink,
        other => {
            return Err(DomainError::invalid(
                "file_batch.files.kind",
                format!("unknown kind {other:?}"),
            ))
        }
    };
    let mtime = file
        .mtime
        .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)));
    Ok(SnapshotEntry {
        path: file.path,
        kind,
        size_bytes: file.size_bytes,
        mode: file.mode,
        uid: file.uid,
        gid: file.gid,
        mtime,
        content_hash: file.content_hash,
        symlink_target: (kind == FileKind::Symlink).then_some(file.symlink_target),
        storage_key: file.storage_key,
    })
}
