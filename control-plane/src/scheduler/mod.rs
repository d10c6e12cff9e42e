//! The job scheduler: creates the runs of scheduled jobs on time, exactly once,
//! however many control-plane replicas share the catalog.
//!
//! Every replica runs [`run`]. Each round it tries to take or renew the
//! scheduler's leader lease in the catalog (one row, expiry by the database
//! clock); only the leader fires. When the leader stops, it gives the lease
//! up; when it dies, the lease expires after its TTL and another replica takes
//! over (failover). Exactly-once does not rest on the election: firing is a
//! compare-and-set on the job's `next_run_time` in the same transaction that
//! creates the run, under a request id derived from the tick (see
//! `catalog/scheduler.rs`), so even two leaders at once create one run per tick.
//!
//! The leader sleeps until the earliest `next_run_time` of any job, or at most
//! the poll interval, so it fires on time and notices schedules changed through
//! other replicas within one interval.

pub mod cron;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::scheduler::FiredTick;
use crate::catalog::Catalog;
use crate::error::DomainResult;
use crate::runs::admission::RunAdmission;
use policy::TickOutcome;

/// Due ticks handled per catalog scan.
const BATCH: i64 = 100;
/// Shortest pause between rounds, so a tick that stays due (set into the past
/// by hand while a round runs) never makes a tight loop.
const MIN_WAIT: Duration = Duration::from_millis(10);

/// Timing of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// Whether this replica takes part (a replica that does not never leads).
    pub enabled: bool,
    /// Longest sleep between rounds; the leader renews its lease every round.
    pub poll_interval: Duration,
    /// How long the leader lease lives without renewal: the failover time
    /// when a leader dies. At least three poll intervals.
    pub lease_ttl: Duration,
    /// A tick reached later than this after its time counts as missed.
    pub misfire_grace: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            enabled: true,
            poll_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            misfire_grace: Duration::from_secs(120),
        }
    }
}

/// What a scheduler instance has done so far, published after every round so
/// operators' tools and tests can follow it without polling the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// Whether it led during its last round.
    pub leading: bool,
    /// The lease term of its current leadership.
    pub term: Option<i64>,
    /// Rounds completed (leading or not).
    pub rounds: u64,
    /// Ticks it decided (runs created, queued or skipped).
    pub ticks: u64,
    /// Runs it created (for ticks and waiting ticks).
    pub runs_created: u64,
    /// Ticks it skipped by policy (missed or overlapping).
    pub ticks_skipped: u64,
}

/// The scheduler instance of one control plane: its settings, its identity in
/// the leader lease, and its published status. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    settings: SchedulerSettings,
    holder: Arc<str>,
    status: Arc<watch::Sender<SchedulerStatus>>,
}

impl SchedulerHandle {
    /// A scheduler instance with a new identity.
    pub fn new(settings: SchedulerSettings) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "control-plane".to_string());
        let holder = format!("{host}/{}", uuid::Uuid::new_v4().simple());
        let (status, _) = watch::channel(SchedulerStatus::default());
        SchedulerHandle {
            settings,
            holder: holder.into(),
            status: Arc::new(status),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> SchedulerSettings {
        self.settings
    }

    /// Its id in the leader lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Its status now.
    pub fn status(&self) -> SchedulerStatus {
        self.status.borrow().clone()
    }

    /// Follows its status, which changes after every round.
    pub fn subscribe(&self) -> watch::Receiver<SchedulerStatus> {
        self.status.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut SchedulerStatus)) {
        self.status.send_modify(change);
    }
}

/// Runs the scheduler `handle` describes until `cancel` fires (the server
/// starts stopping), then gives the leadership up so another replica takes
/// over at once.
pub async fn run(
    catalog: Catalog,
    runs: RunAdmission,
    handle: SchedulerHandle,
    cancel: CancellationToken,
) {
    let scheduler = Scheduler::new(catalog, runs, handle);
    let settings = scheduler.handle.settings;
    if !settings.enabled {
        tracing::info!("scheduler disabled on this replica");
        return;
    }
    tracing::info!(holder = scheduler.handle.holder(), "scheduler started");
    loop {
        let wait = tokio::select! {
            () = cancel.cancelled() => break,
            wait = scheduler.round() => wait,
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(wait) => {}
        }
    }
    scheduler.resign().await;
}

/// One replica's scheduler.
pub struct Scheduler {
    catalog: Catalog,
    runs: RunAdmission,
    handle: SchedulerHandle,
}

impl Scheduler {
    /// The scheduler `handle` describes, firing through `runs`.
    pub fn new(catalog: Catalog, runs: RunAdmission, handle: SchedulerHandle) -> Self {
        Scheduler {
            catalog,
            runs,
            handle,
        }
    }

    /// One round: take or renew the leadership and, as leader, handle every
    /// due tick. Returns when the next round should start.
    pub async fn round(&self) -> Instant {
        let settings = self.handle.settings;
        let poll = Instant::now() + settings.poll_interval;
        let leadership = match self
            .catalog
            .acquire_scheduler_leadership(self.handle.holder(), settings.lease_ttl)
            .await
        {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::warn!(%error, "scheduler cannot reach the leader lease");
                None
            }
        };
        let previous = self.handle.status();
        let term = leadership.map(|l| l.term);
        if term != previous.term {
            match term {
                Some(term) => tracing::info!(term, "this replica now leads the scheduler"),
                None => tracing::info!("this replica no longer leads the scheduler"),
            }
        }
        self.handle.update(|status| {
            status.leading = term.is_some();
            status.term = term;
        });
        let mut wake = poll;
        if let Some(leadership) = leadership {
            let new_term = previous.term != Some(leadership.term);
            match self.fire_due(new_term).await {
                Ok(next) => wake = next.map_or(poll, |next| next.min(poll)),
                Err(error) => tracing::warn!(%error, "scheduler round failed; retrying"),
            }
        }
        self.handle.update(|status| status.rounds += 1);
        wake
    }

    /// Handles every due tick and every waiting tick whose job is idle.
    /// Returns when the earliest next tick is due, if any job has one.
    async fn fire_due(&self, new_term: bool) -> DomainResult<Option<Instant>> {
        let catalog = &self.catalog;
        let grace = self.handle.settings.misfire_grace;
        let now = catalog.now().await?;
        let measured = Instant::now();
        if new_term {
            let scheduled = catalog.schedule_unscheduled_jobs(now).await?;
            if scheduled > 0 {
                tracing::info!(jobs = scheduled, "scheduled jobs that had no next run time");
            }
        }
        let mut admission = self.runs.scheduled();
        let mut failed = false;
        loop {
            let due = catalog.due_ticks(now, BATCH).await?;
            let full = i64::try_from(due.len()).unwrap_or(i64::MAX) >= BATCH;
            let mut progressed = false;
            for tick in &due {
                match admission.fire_tick(tick, now, grace).await {
                    Ok(Some(fired)) => {
                        progressed = true;
                        self.record(tick.job_id, tick.fire_time, &fired);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        failed = true;
                        tracing::warn!(job = %tick.job_id, %error, "could not fire a due tick; retrying next round");
                    }
                }
            }
            if !(full && progressed) {
                break;
            }
        }
        for (job_id, fire_time) in catalog.ready_pending_ticks(BATCH).await? {
            match admission.start_pending_tick(job_id, fire_time, now).await {
                Ok(Some(run_id)) => {
                    tracing::info!(job = %job_id, tick = %fire_time, run = %run_id, "waiting tick started: the earlier run ended");
                    self.handle.update(|status| status.runs_created += 1);
                }
                Ok(None) => {}
                Err(error) => {
                    failed = true;
                    tracing::warn!(job = %job_id, %error, "could not start a waiting tick; retrying next round");
                }
            }
        }
        if failed {
            // Whatever failed is retried after a poll interval, not in a tight loop.
            return Ok(None);
        }
        let earliest = catalog.earliest_next_run_time().await?;
        Ok(earliest.map(|next| {
            let ahead = (next - now).to_std().unwrap_or(Duration::ZERO);
            (measured + ahead).max(Instant::now() + MIN_WAIT)
        }))
    }

    fn record(
        &self,
        job_id: uuid::Uuid,
        fire_time: chrono::DateTime<chrono::Utc>,
        fired: &FiredTick,
    ) {
        let run = fired
            .run_id
            .map_or_else(|| "none".to_string(), |id| id.to_string());
        let next = fired
            .next_run_time
            .map_or_else(|| "none".to_string(), |t| t.to_rfc3339());
        tracing::info!(
            job = %job_id,
            tick = %fire_time,
            run,
            next,
            "scheduled tick: {}",
            fired.outcome.as_str()
        );
        crate::monitoring::tick_handled(
            fired.run_id.is_some(),
            fired.outcome == TickOutcome::SkipMissed,
        );
        self.handle.update(|status| {
            status.ticks += 1;
            if fired.run_id.is_some() {
                status.runs_created += 1;
            }
            if matches!(
                fired.outcome,
                TickOutcome::SkipMissed | TickOutcome::SkipOverlap | TickOutcome::SkipQueueLimit
            ) {
                status.ticks_skipped += 1;
            }
        });
    }

    /// Gives the leadership up if this replica holds it.
    async fn resign(&self) {
        if !self.handle.status().leading {
            return;
        }
        match self
            .catalog
            .release_scheduler_leadership(self.handle.holder())
            .await
        {
            Ok(()) => tracing::info!("scheduler stopped; leadership released"),
            Err(error) => {
                tracing::warn!(%error, "scheduler stopped; could not release the leadership, it expires by itself")
            }
        }
        self.handle.update(|status| {
            status.leading = false;
            status.term = None;
        });
    }
}
