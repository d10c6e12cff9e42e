//! Assignment on one replica: a single coordinator leases queued runs to
//! every worker session open on this replica.
//!
//! Sessions take a [`Seat`]: they state the worker's credit (free slots) and
//! when it last spoke, and receive the runs leased to it. The coordinator
//! wakes when a run changes anywhere in the cluster (this replica's changes
//! and those relayed from the others, `run_events.rs`), when a seat gains
//! credit, when a retry backoff ends, and on a slow safety tick. Events that
//! arrive together are handled by one pass, and a pass reads the queue once
//! per distinct label set of the waiting workers (usually one), however many
//! sessions are open: the cost of an event is one scan per replica, not one
//! per session. A pass with no seat wanting work reads nothing.
//!
//! The rules of leasing do not change here: the fair order, the selector
//! filter and the fencing grant are `Catalog::acquire_runs_for`'s; a worker's
//! source roots are [`WorkerProfile::accepts`]; a worker silent for half a
//! TTL is offered nothing. Candidates go round-robin to the seats that
//! accept them, so workers of one replica share the work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{settings, WorkerProfile};
use crate::catalog::leases::{LeaseSettings, LeasedRun, WorkerLease};
use crate::catalog::Catalog;

/// Longest time between two passes when nothing announces a change: a
/// fallback for what no event reports (a lost notification, a clock step).
const SAFETY_TICK: Duration = Duration::from_secs(10);

/// The assignment coordinator of one replica, shared by its sessions.
#[derive(Clone, Debug, Default)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// This replica, as download runs name it.
    replica: Uuid,
    seats: Mutex<HashMap<u64, SeatState>>,
    next_seat: AtomicU64,
    /// Wakes the coordinator (credit gained, a silent worker spoke again).
    wake: Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            replica: Uuid::new_v4(),
            seats: Mutex::default(),
            next_seat: AtomicU64::default(),
            wake: Notify::default(),
        }
    }
}

#[derive(Debug)]
struct SeatState {
    worker_id: Uuid,
    profile: WorkerProfile,
    credit: usize,
    last_heard: Instant,
    grants: mpsc::UnboundedSender<LeasedRun>,
}

/// A session's place at the coordinator; leaving it (drop) ends the offers.
#[derive(Debug)]
pub struct Seat {
    id: u64,
    shared: Arc<Shared>,
    /// Runs leased to this worker, to be handed to it.
    pub grants: mpsc::UnboundedReceiver<LeasedRun>,
}

impl Shared {
    fn seats(&self) -> MutexGuard<'_, HashMap<u64, SeatState>> {
        self.seats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Dispatcher {
    /// Seats a session of `worker_id`, which has no credit yet.
    pub fn join(&self, worker_id: Uuid, profile: WorkerProfile) -> Seat {
        let id = self.shared.next_seat.fetch_add(1, Ordering::Relaxed);
        let (sender, grants) = mpsc::unbounded_channel();
        self.shared.seats().insert(
            id,
            SeatState {
                worker_id,
                profile,
                credit: 0,
                last_heard: Instant::now(),
                grants: sender,
            },
        );
        Seat {
            id,
            shared: self.shared.clone(),
            grants,
        }
    }

    /// This replica's id, which download runs name so that only this
    /// coordinator leases them.
    pub fn replica(&self) -> Uuid {
        self.shared.replica
    }

    /// Whether a session of `worker_id` is open on this replica.
    pub fn serves(&self, worker_id: Uuid) -> bool {
        self.shared
            .seats()
            .values()
            .any(|seat| seat.worker_id == worker_id)
    }

    /// Runs the coordinator until `cancel` fires. `base` are the server's
    /// lease settings, before the configuration overrides them.
    pub async fn run(self, catalog: Catalog, base: LeaseSettings, cancel: CancellationToken) {
        let mut events = catalog.subscribe_runs();
        let mut safety = tokio::time::interval(SAFETY_TICK);
        safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass = Pass {
            catalog,
            base,
            shared: self.shared.clone(),
            own_grants: HashSet::new(),
            rotation: 0,
        };
        let mut backoff_ends: Option<tokio::time::Instant> = None;
        loop {
            let needed = tokio::select! {
                () = cancel.cancelled() => return,
                () = self.shared.wake.notified() => true,
                _ = safety.tick() => true,
                () = sleep_until(backoff_ends), if backoff_ends.is_some() => true,
                event = events.recv() => match event {
                    Ok(run_id) => !pass.own_grants.contains(&run_id),
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                },
            };
            // Everything announced meanwhile is served by the same pass.
            let needed = needed | drain(&mut events, &pass.own_grants);
            if !needed {
                continue;
            }
            if let Some(wait) = pass.run().await {
                backoff_ends = Some(tokio::time::Instant::now() + wait);
            } else {
                backoff_ends = None;
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Takes every event already waiting; true if one of them is not just the
/// announcement of a grant the coordinator made itself.
fn drain(events: &mut tokio::sync::broadcast::Receiver<Uuid>, own: &HashSet<Uuid>) -> bool {
    let mut needed = false;
    loop {
        match events.try_recv() {
            Ok(run_id) => needed |= !own.contains(&run_id),
            Err(TryRecvError::Lagged(_)) => needed = true,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return needed,
        }
    }
}

impl Seat {
    /// The worker's free slots, as it announced them.
    pub fn set_credit(&self, credit: usize) {
        let gained = {
            let mut seats = self.shared.seats();
            let Some(seat) = seats.get_mut(&self.id) else {
                return;
            };
            let gained = credit > seat.credit;
            seat.credit = credit;
            gained
        };
        if gained {
            self.shared.wake.notify_one();
        }
    }

    /// Gives back the slot of a run that was leased but not handed over.
    pub fn restore_credit(&self) {
        if let Some(seat) = self.shared.seats().get_mut(&self.id) {
            seat.credit += 1;
        }
        self.shared.wake.notify_one();
    }

    /// The worker spoke. One that was silent long enough to be passed over
    /// may be offered work again, so the coordinator looks.
    pub fn heard(&self, ttl: Duration) {
        let was_silent = {
            let mut seats = self.shared.seats();
            let Some(seat) = seats.get_mut(&self.id) else {
                return;
            };
            let was_silent = !recently_heard(seat.last_heard, ttl);
            seat.last_heard = Instant::now();
            was_silent && seat.credit > 0
        };
        if was_silent {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.shared.seats().remove(&self.id);
    }
}

/// Whether a worker last heard at `last_heard` may be pushed new work: a
/// worker silent for half a TTL (frozen, or cut off) would only let every
/// run pushed to it wait out its lease.
fn recently_heard(last_heard: Instant, ttl: Duration) -> bool {
    last_heard.elapsed() <= ttl / 2
}

/// A seat wanting work, as one pass sees it.
struct Wanting {
    seat: u64,
    worker_id: Uuid,
    profile: WorkerProfile,
    credit: usize,
}

/// What the coordinator keeps between passes.
struct Pass {
    catalog: Catalog,
    base: LeaseSettings,
    shared: Arc<Shared>,
    /// The runs the last pass leased: their announcements need no new pass.
    own_grants: HashSet<Uuid>,
    /// Where the round-robin starts, moved on every pass.
    rotation: usize,
}

impl Pass {
    /// Leases what the seats wanting work can take. Returns how long until
    /// a queued run's backoff ends, if credit is left for it.
    async fn run(&mut self) -> Option<Duration> {
        let settings = settings::current(&self.catalog, self.base).await;
        let wanting: Vec<Wanting> = self
            .shared
            .seats()
            .iter()
            .filter(|(_, seat)| seat.credit > 0 && recently_heard(seat.last_heard, settings.ttl))
            .map(|(id, seat)| Wanting {
                seat: *id,
                worker_id: seat.worker_id,
                profile: seat.profile.clone(),
                credit: seat.credit,
            })
            .collect();
        self.own_grants.clear();
        if wanting.is_empty() {
            return None;
        }
        let mut by_labels: BTreeMap<BTreeMap<String, String>, Vec<Wanting>> = BTreeMap::new();
        for seat in wanting {
            by_labels
                .entry(seat.profile.labels.clone())
                .or_default()
                .push(seat);
        }
        self.rotation = self.rotation.wrapping_add(1);
        let mut credit_left = false;
        for (labels, mut seats) in by_labels {
            let start = self.rotation % seats.len();
            seats.rotate_left(start);
            credit_left |= self.lease_to(&labels, &mut seats, &settings).await;
        }
        if !credit_left {
            return None;
        }
        match self.catalog.next_ready_in().await {
            Ok(wait) => wait,
            Err(error) => {
                tracing::warn!(%error, "could not read when the next retry is due");
                None
            }
        }
    }

    /// One scan for the seats sharing `labels`; returns whether any of them
    /// still has credit afterwards.
    async fn lease_to(
        &mut self,
        labels: &BTreeMap<String, String>,
        seats: &mut [Wanting],
        settings: &LeaseSettings,
    ) -> bool {
        let total: usize = seats.iter().map(|seat| seat.credit).sum();
        let mut next = 0usize;
        let mut chosen: HashMap<Uuid, u64> = HashMap::new();
        let replica = self.shared.replica;
        let leased = self
            .catalog
            .acquire_runs_for(labels, total, settings, |candidate| {
                if super::required_replica(candidate).is_some_and(|required| required != replica) {
                    return None;
                }
                let count = seats.len();
                let taker = (0..count)
                    .map(|offset| (next + offset) % count)
                    .find(|&i| seats[i].credit > 0 && seats[i].profile.accepts(candidate))?;
                seats[taker].credit -= 1;
                next = taker + 1;
                chosen.insert(candidate.id, seats[taker].seat);
                Some(seats[taker].worker_id)
            })
            .await;
        let leased = match leased {
            Ok(leased) => leased,
            Err(error) => {
                tracing::warn!(%error, "could not lease runs");
                return false;
            }
        };
        let granted = leased.len();
        crate::monitoring::leases_granted(granted);
        for (worker_id, run) in leased {
            self.own_grants.insert(run.id);
            let seat = chosen.get(&run.id).copied();
            self.hand_over(seat, worker_id, run).await;
        }
        // Credit reserved for candidates granted elsewhere meanwhile is not
        // lost: those grants were announced, so another pass follows.
        total > granted
    }

    /// Gives a run to the seat it was leased for; if that session closed
    /// meanwhile, releases the run at once (no attempt used) rather than
    /// letting it wait out a lease nobody knows about.
    async fn hand_over(&self, seat: Option<u64>, worker_id: Uuid, run: LeasedRun) {
        let lease = WorkerLease {
            run_id: run.id,
            token: run.lease_token,
            worker_id,
        };
        let delivered = seat.is_some_and(|seat| {
            let mut seats = self.shared.seats();
            let Some(state) = seats.get_mut(&seat) else {
                return false;
            };
            state.credit = state.credit.saturating_sub(1);
            state.grants.send(run).is_ok()
        });
        if delivered {
            return;
        }
        tracing::info!(run = %lease.run_id, "the session closed before its run was handed over; released");
        if let Err(error) = self.catalog.release_run(lease).await {
            tracing::warn!(run = %lease.run_id, %error, "could not release a run no session took");
        }
    }
}
