//! The worker's lease session: one long-lived bidirectional stream to the
//! control plane, re-opened with jittered backoff whenever it breaks.
//!
//! Runs are executed by tasks that outlive any one stream. Every fenced write
//! (file batch, completion, release) waits in an outbox until the control
//! plane acknowledges it and is sent again after a reconnect; the control
//! plane deduplicates batches by sequence and answers a repeated completion
//! the same way, so at-least-once delivery is safe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_proto::v1 as pb;
use coffer_proto::v1::worker_service_client::WorkerServiceClient;
use rand::Rng;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::fence::{extended_deadline, initial_deadline, PauseClock};

/// Unacknowledged batches a run may have in flight before it waits.
const MAX_UNACKED_BATCHES: usize = 8;
/// Changed progress is sent at most this often, between heartbeats, so that
/// `WatchRun` follows a run closely without a write per file.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the lease watchdog looks at the clock.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The lease TTL assumed until the control plane states its own.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// How a worker introduces itself and how much it takes on.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Control-plane URLs, comma-separated, e.g. `http://127.0.0.1:50051`
    /// (see [`crate::connect::ControlPlanes`]).
    pub control_plane: String,
    /// Worker-scope bearer token (none in loopback no-auth mode).
    pub token: Option<String>,
    /// Stable worker name.
    pub name: String,
    /// Labels for job selectors.
    pub labels: BTreeMap<String, String>,
    /// Runs executed at once.
    pub slots: usize,
    /// Source roots this worker may read.
    pub source_roots: Vec<String>,
    /// Which runs it takes.
    pub class: crate::class::WorkerClass,
    /// How long a drain waits for running work before releasing it.
    pub drain_timeout: Duration,
    /// Time between progress reports (default [`PROGRESS_INTERVAL`]).
    pub progress_interval: Duration,
    /// TLS towards the control plane, and the plaintext rule.
    pub tls: crate::connect::ClientTls,
}

/// What a run can do while it executes: report progress, send staged file
/// batches, and notice cancellation or a lost lease.
#[derive(Clone)]
pub struct RunContext {
    lease: pb::LeaseRef,
    cancel: CancellationToken,
    progress: Arc<Mutex<pb::RunProgress>>,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
    next_sequence: Arc<Mutex<i64>>,
}

/// The lease was lost (or the run cancelled) while a write was pending.
#[derive(Debug, thiserror::Error)]
#[error("the lease is no longer held: {0}")]
pub struct LeaseLost(pub String);

impl RunContext {
    /// The lease this run executes under.
    pub fn lease(&self) -> &pb::LeaseRef {
        &self.lease
    }

    /// Fires when the run is cancelled, its lease is lost or the worker stops.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Replaces the progress reported; it is sent within [`PROGRESS_INTERVAL`]
    /// (and with every heartbeat).
    pub fn set_progress(&self, progress: pb::RunProgress) {
        *lock(&self.progress) = progress;
        self.shared.progress_changed.store(true, Ordering::Release);
    }

    /// Queues a batch of file records and errors; waits while too many
    /// batches are unacknowledged. Returns the batch's sequence number.
    pub async fn send_batch(
        &self,
        files: Vec<pb::FileRecord>,
        errors: Vec<pb::RunError>,
        exclusions: Vec<pb::RunExclusion>,
        snapshot: Option<pb::RebuiltSnapshot>,
    ) -> Result<i64, LeaseLost> {
        let permit = tokio::select! {
            permit = self.window.clone().acquire_owned() => permit.map_err(|_| LeaseLost("session closed".into()))?,
            () = self.cancel.cancelled() => return Err(LeaseLost("cancelled".into())),
        };
        // Returned when the control plane acknowledges the batch.
        permit.forget();
        let sequence = {
            let mut next = lock(&self.next_sequence);
            let sequence = *next;
            *next += 1;
            sequence
        };
        let message = pb::lease_session_request::Message::FileBatch(pb::FileBatch {
            lease: Some(self.lease.clone()),
            files,
            errors,
            sequence,
            snapshot,
            exclusions,
        });
        self.shared.enqueue(key_of(&self.lease, sequence), message);
        Ok(sequence)
    }

    /// Number of batches sent so far.
    pub fn batch_count(&self) -> i64 {
        *lock(&self.next_sequence)
    }
}

/// Where calls beside the lease session go: the session's own connection.
#[derive(Clone, Debug)]
struct Uplink {
    channel: Channel,
    token: Option<String>,
}

/// The answer to a download's `SendDownload` call, once it ends.
pub type DownloadCall = tokio::task::JoinHandle<Result<pb::SendDownloadResponse, tonic::Status>>;

impl RunContext {
    /// Opens the `SendDownload` call of this run on the connection of the
    /// current session (the replica that leased the run), its first message
    /// naming the lease. Returns where the content goes and the call.
    pub async fn open_download(
        &self,
    ) -> Result<(mpsc::Sender<pb::SendDownloadRequest>, DownloadCall), LeaseLost> {
        let Some(uplink) = lock(&self.shared.uplink).clone() else {
            return Err(LeaseLost("no session to send the download through".into()));
        };
        let (sender, receiver) = mpsc::channel(4);
        sender
            .send(pb::SendDownloadRequest {
                lease: Some(self.lease.clone()),
                ..Default::default()
            })
            .await
            .map_err(|_| LeaseLost("download stream closed".into()))?;
        let mut call = tonic::Request::new(ReceiverStream::new(receiver));
        if let Some(token) = &uplink.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| LeaseLost("the worker token is not a valid header".into()))?;
            call.metadata_mut().insert("authorization", value);
        }
        let mut client = WorkerServiceClient::new(uplink.channel);
        let handle = tokio::spawn(async move {
            client
                .send_download(call)
                .await
                .map(tonic::Response::into_inner)
        });
        Ok((sender, handle))
    }
}

/// Executes assigned runs.
#[tonic::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt to its end and says how it ended.
    async fn execute(
        &self,
        assignment: pb::RunAssignment,
        context: RunContext,
    ) -> pb::run_completion::Outcome;
}

/// Key of a fenced write awaiting acknowledgement: run, token, batch sequence
/// (-1 for completions and releases).
type PendingKey = (String, i64, i64);

fn key_of(lease: &pb::LeaseRef, sequence: i64) -> PendingKey {
    (lease.run_id.clone(), lease.lease_token, sequence)
}

struct Running {
    lease: pb::LeaseRef,
    cancel: CancellationToken,
    progress: Arc<Mutex<pb::RunProgress>>,
    window: Arc<Semaphore>,
    finished: bool,
    /// The control plane revoked the lease (a cancel, or a lease that moved
    /// on): the attempt is stopping and is no longer heartbeated.
    revoked: bool,
    /// When the lease ends on this worker's clock unless a heartbeat
    /// answer extends it.
    deadline: Instant,
}

/// State shared by the session loop and the run tasks.
pub struct Shared {
    running: Mutex<HashMap<String, Running>>,
    pending: Mutex<BTreeMap<PendingKey, pb::lease_session_request::Message>>,
    /// Messages not yet written to the current stream.
    unsent: Mutex<Vec<pb::lease_session_request::Message>>,
    wake: Notify,
    /// Some run's progress changed since the last heartbeat.
    progress_changed: AtomicBool,
    /// The lease TTL the control plane last stated.
    lease_ttl: Mutex<Duration>,
    /// When each heartbeat naming leases was sent on the current stream and
    /// is not answered yet, oldest first (answers come in order).
    heartbeats_sent: Mutex<VecDeque<Instant>>,
    /// Notices that the process was stopped.
    pause: PauseClock,
    /// The channel of the current (or last) session and the worker's
    /// token, for calls beside the session (a download's content).
    uplink: Mutex<Option<Uplink>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn enqueue(&self, key: PendingKey, message: pb::lease_session_request::Message) {
        lock(&self.pending).insert(key, message.clone());
        lock(&self.unsent).push(message);
        self.wake.notify_one();
    }

    fn free_slots(&self, slots: usize) -> i32 {
        let busy = lock(&self.running).len();
        i32::try_from(slots.saturating_sub(busy)).unwrap_or(0)
    }

    fn lease_ttl(&self) -> Duration {
        *lock(&self.lease_ttl)
    }

    /// Stops a run and forgets its unsent writes, its completion included:
    /// the lease can no longer be trusted to be held (the worker's own
    /// fence; a revocation goes through [`Shared::stop_revoked`]).
    fn drop_lease(&self, lease: &pb::LeaseRef, reason: &str) {
        let mut running = lock(&self.running);
        if let Some(run) = running.get(&lease.run_id) {
            if run.lease.lease_token == lease.lease_token {
                tracing::info!(run = %lease.run_id, token = lease.lease_token, %reason, "stopping run");
                run.cancel.cancel();
                running.remove(&lease.run_id);
            }
        }
        drop(running);
        lock(&self.pending).retain(|key, _| !(key.0 == lease.run_id && key.1 == lease.lease_token));
        self.wake.notify_one();
    }

    /// Stops a run whose lease the control plane revoked, and reports how
    /// it ended once it has stopped: that report is the acknowledgement a
    /// cancelled run waits for to become CANCELLED at once (rather than
    /// when its lease expires). The control plane accepts it only while the
    /// lease is current, so after a lease that moved on it is refused like
    /// any zombie's write. Unsent file batches are dropped: no attempt that
    /// stops commits them. A completion already queued stays queued.
    fn stop_revoked(&self, lease: &pb::LeaseRef, reason: &str) {
        let mut running = lock(&self.running);
        let Some(run) = running.get_mut(&lease.run_id) else {
            return;
        };
        if run.lease.lease_token != lease.lease_token {
            return;
        }
        tracing::info!(run = %lease.run_id, token = lease.lease_token, %reason, "stopping run");
        run.revoked = true;
        run.cancel.cancel();
        drop(running);
        lock(&self.pending)
            .retain(|key, _| !(key.0 == lease.run_id && key.1 == lease.lease_token && key.2 >= 0));
        lock(&self.unsent).retain(|message| !is_batch_of(message, lease));
        self.wake.notify_one();
    }

    /// Enforces the worker's own fence (see [`crate::fence`]): after a pause
    /// longer than a lease lives, every attempt still executing stops; an
    /// attempt whose lease deadline passed on this clock stops. An attempt
    /// that already ended keeps its queued completion, which the control
    /// plane accepts only if the lease is still current. Returns whether a
    /// pause was noticed.
    fn check_fence(&self) -> bool {
        let paused = self.pause.observe(self.lease_ttl());
        let now = Instant::now();
        let stale: Vec<pb::LeaseRef> = lock(&self.running)
            .values()
            .filter(|run| !run.finished && (paused || now >= run.deadline))
            .map(|run| run.lease.clone())
            .collect();
        let reason = if paused {
            "the lease is no longer held: the worker was paused for longer than a lease lives"
        } else {
            "the lease is no longer held: its deadline passed on the worker's clock"
        };
        for lease in &stale {
            self.drop_lease(lease, reason);
        }
        paused
    }
}

/// Whether `message` is a file batch written under `lease`.
fn is_batch_of(message: &pb::lease_session_request::Message, lease: &pb::LeaseRef) -> bool {
    matches!(
        message,
        pb::lease_session_request::Message::FileBatch(batch)
            if batch.lease.as_ref() == Some(lease)
    )
}

/// Checks the fence every [`WATCH_INTERVAL`], so an attempt stops soon after
/// its deadline even while no session is open (the control plane is
/// unreachable: exactly when its leases may be handed to others).
async fn watch_leases(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.check_fence();
    }
}

/// Runs the worker until `shutdown` fires and its work is drained.
pub async fn run(
    config: SessionConfig,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        running: Mutex::new(HashMap::new()),
        pending: Mutex::new(BTreeMap::new()),
        unsent: Mutex::new(Vec::new()),
        wake: Notify::new(),
        progress_changed: AtomicBool::new(false),
        lease_ttl: Mutex::new(DEFAULT_LEASE_TTL),
        heartbeats_sent: Mutex::new(VecDeque::new()),
        uplink: Mutex::new(None),
        pause: PauseClock::default(),
    });
    let watchdog = tokio::spawn(watch_leases(shared.clone()));
    let result = serve(&config, &shared, &executor, &shutdown).await;
    watchdog.abort();
    result
}

/// Opens sessions one after the other until the worker drained. A failed
/// connect or a broken session moves on to the next control-plane address
/// (another replica); the leases the worker holds go with it in its hello,
/// so its runs continue.
async fn serve(
    config: &SessionConfig,
    shared: &Arc<Shared>,
    executor: &Arc<dyn Executor>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let planes = crate::connect::ControlPlanes::parse(&config.control_plane, &config.tls)?;
    let mut addresses = VecDeque::new();
    let draining = CancellationToken::new();
    let mut drain_started: Option<tokio::time::Instant> = None;
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() && drain_started.is_none() {
            drain_started = Some(tokio::time::Instant::now());
            draining.cancel();
        }
        if draining.is_cancelled()
            && lock(&shared.running).is_empty()
            && lock(&shared.pending).is_empty()
        {
            tracing::info!("drained; exiting");
            return Ok(());
        }
        if addresses.is_empty() {
            // Each round through the addresses resolves the names again.
            addresses.extend(planes.resolve().await);
        }
        let Some(address) = addresses.pop_front() else {
            anyhow::bail!("no control-plane address to dial");
        };
        let outcome = match address.endpoint.connect().await {
            Ok(channel) => {
                tracing::info!(control_plane = %address.label, "connected to the control plane");
                let result = session(
                    config,
                    channel,
                    shared,
                    executor,
                    shutdown,
                    &draining,
                    &mut drain_started,
                )
                .await;
                if result.is_ok() {
                    failures = 0;
                }
                result
            }
            // With its causes: "transport error" alone hides a refused
            // certificate.
            Err(error) => {
                Err(anyhow::Error::new(error)
                    .context(format!("cannot connect to {}", address.label)))
            }
        };
        match outcome {
            Ok(SessionEnd::Drained) => return Ok(()),
            Ok(SessionEnd::Paused) => {
                // What the old stream still holds was pushed while this
                // worker could not answer: it is dropped unread, and a new
                // session (to the same address) announces the worker's
                // credit afresh.
                tracing::warn!("the worker was paused for longer than a lease lives; reconnecting");
                addresses.push_front(address);
                continue;
            }
            Ok(SessionEnd::Broken) => {
                tracing::info!(control_plane = %address.label, "session ended; reconnecting to the next address");
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "session failed; trying the next address"
                )
            }
        }
        failures = failures.saturating_add(1);
        let delay = reconnect_delay(failures);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled(), if drain_started.is_none() => {}
        }
    }
}

/// Exponential backoff with full jitter, from 200 ms up to 15 s.
fn reconnect_delay(failures: u32) -> Duration {
    let ceiling_ms = (200u64 << failures.min(7)).min(15_000);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling_ms / 2..=ceiling_ms))
}

enum SessionEnd {
    Drained,
    Broken,
    /// The process was paused past its leases (see [`crate::fence`]).
    Paused,
}

#[allow(clippy::too_many_lines)]
async fn session(
    config: &SessionConfig,
    channel: Channel,
    shared: &Arc<Shared>,
    executor: &Arc<dyn Executor>,
    shutdown: &CancellationToken,
    draining: &CancellationToken,
    drain_started: &mut Option<tokio::time::Instant>,
) -> anyhow::Result<SessionEnd> {
    *lock(&shared.uplink) = Some(Uplink {
        channel: channel.clone(),
        token: config.token.clone(),
    });
    let mut client = WorkerServiceClient::new(channel);
    let epoch = shared.pause.epoch();
    lock(&shared.heartbeats_sent).clear();
    let (tx, rx) = mpsc::channel::<pb::LeaseSessionRequest>(64);
    let held_leases: Vec<pb::LeaseRef> = lock(&shared.running)
        .values()
        .map(|r| r.lease.clone())
        .collect();
    let hello = pb::WorkerHello {
        name: config.name.clone(),
        labels: config.labels.clone().into_iter().collect(),
        slots: i32::try_from(config.slots).unwrap_or(i32::MAX),
        source_roots: config.source_roots.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        held_leases,
        class: config.class.to_proto().into(),
    };
    tx.send(request(pb::lease_session_request::Message::Hello(hello)))
        .await?;
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.token {
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let mut inbound = client.lease_session(call).await?.into_inner();

    // Everything not acknowledged yet goes out again on the new stream,
    // file batches before the completions and releases that count them.
    {
        let mut pending: Vec<_> = lock(&shared.pending).values().cloned().collect();
        pending.sort_by_key(|message| {
            !matches!(message, pb::lease_session_request::Message::FileBatch(_))
        });
        let mut unsent = lock(&shared.unsent);
        unsent.clear();
        unsent.extend(pending);
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut progress_tick = tokio::time::interval(config.progress_interval);
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_credit = -1;
    loop {
        if shared.check_fence() || shared.pause.epoch() != epoch {
            return Ok(SessionEnd::Paused);
        }
        flush(shared, &tx).await?;
        let credit = if draining.is_cancelled() {
            0
        } else {
            shared.free_slots(config.slots)
        };
        if credit != last_credit {
            tx.send(request(pb::lease_session_request::Message::Credit(
                pb::WorkerCredit { free_slots: credit },
            )))
            .await?;
            last_credit = credit;
        }
        if draining.is_cancelled() {
            if let Some(started) = drain_started {
                if started.elapsed() >= config.drain_timeout {
                    release_all(shared);
                }
            }
            if lock(&shared.running).is_empty() && lock(&shared.pending).is_empty() {
                return Ok(SessionEnd::Drained);
            }
        }
        tokio::select! {
            message = inbound.message() => match message? {
                Some(response) => {
                    // Nothing received is acted on before the pause check:
                    // after a pause it may be an assignment pushed meanwhile.
                    if shared.check_fence() || shared.pause.epoch() != epoch {
                        return Ok(SessionEnd::Paused);
                    }
                    handle_response(response, config, shared, executor, &mut heartbeat);
                }
                None => return Ok(SessionEnd::Broken),
            },
            _ = heartbeat.tick() => send_heartbeat(shared, &tx).await?,
            _ = progress_tick.tick() => {
                if shared.progress_changed.load(Ordering::Acquire) {
                    send_heartbeat(shared, &tx).await?;
                }
            }
            () = shared.wake.notified() => {}
            () = shutdown.cancelled(), if !draining.is_cancelled() => {
                tracing::info!("shutdown requested: taking no new work, draining");
                *drain_started = Some(tokio::time::Instant::now());
                draining.cancel();
            }
            () = tokio::time::sleep(Duration::from_millis(500)), if draining.is_cancelled() => {}
        }
    }
}

fn request(message: pb::lease_session_request::Message) -> pb::LeaseSessionRequest {
    pb::LeaseSessionRequest {
        message: Some(message),
    }
}

async fn flush(shared: &Shared, tx: &mpsc::Sender<pb::LeaseSessionRequest>) -> anyhow::Result<()> {
    let messages: Vec<_> = std::mem::take(&mut *lock(&shared.unsent));
    for message in messages {
        tx.send(request(message)).await?;
    }
    Ok(())
}

async fn send_heartbeat(
    shared: &Shared,
    tx: &mpsc::Sender<pb::LeaseSessionRequest>,
) -> anyhow::Result<()> {
    shared.progress_changed.store(false, Ordering::Release);
    let leases: Vec<pb::LeaseProgress> = lock(&shared.running)
        .values()
        .filter(|run| !run.revoked)
        .map(|run| pb::LeaseProgress {
            lease: Some(run.lease.clone()),
            progress: Some(lock(&run.progress).clone()),
        })
        .collect();
    // Sent without leases too: a worker the control plane has not heard
    // from for half a TTL is pushed no work.
    if !leases.is_empty() {
        lock(&shared.heartbeats_sent).push_back(Instant::now());
    }
    tx.send(request(pb::lease_session_request::Message::Heartbeat(
        pb::WorkerHeartbeat { leases },
    )))
    .await?;
    Ok(())
}

/// Cancels every running attempt and queues a release for each, so the
/// control plane requeues them without using up an attempt.
fn release_all(shared: &Shared) {
    let leases: Vec<pb::LeaseRef> = lock(&shared.running)
        .values_mut()
        .filter(|run| !run.finished)
        .map(|run| {
            run.finished = true;
            run.cancel.cancel();
            run.lease.clone()
        })
        .collect();
    for lease in leases {
        tracing::info!(run = %lease.run_id, "releasing run (drain timeout)");
        let message = pb::lease_session_request::Message::Release(pb::RunRelease {
            lease: Some(lease.clone()),
            reason: "worker draining".to_string(),
        });
        shared.enqueue(key_of(&lease, -1), message);
    }
}

fn handle_response(
    response: pb::LeaseSessionResponse,
    config: &SessionConfig,
    shared: &Arc<Shared>,
    executor: &Arc<dyn Executor>,
    heartbeat: &mut tokio::time::Interval,
) {
    use pb::lease_session_response::Message as M;
    match response.message {
        Some(M::Welcome(welcome)) => {
            let interval = welcome
                .heartbeat_interval
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(5));
            *heartbeat = tokio::time::interval(interval);
            if let Some(ttl) = positive_duration(welcome.lease_ttl) {
                *lock(&shared.lease_ttl) = ttl;
            }
            tracing::info!(worker_id = %welcome.worker_id, ?interval, "session established");
        }
        Some(M::Assignment(assignment)) => start_run(assignment, config, shared, executor),
        Some(M::Revocation(revocation)) => {
            let Some(lease) = revocation.lease else {
                return;
            };
            let reason = format!("lease revoked: {}", revocation.reason);
            shared.stop_revoked(&lease, &reason);
        }
        Some(M::Ack(ack)) => handle_ack(ack, shared),
        Some(M::HeartbeatAck(ack)) => handle_heartbeat_ack(ack, shared),
        None => {}
    }
}

fn positive_duration(duration: Option<prost_types::Duration>) -> Option<Duration> {
    duration
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
}

/// Moves the deadline of every lease the heartbeat extended to a TTL after
/// the heartbeat was sent.
fn handle_heartbeat_ack(ack: pb::HeartbeatAck, shared: &Shared) {
    let Some(sent) = lock(&shared.heartbeats_sent).pop_front() else {
        return;
    };
    if let Some(ttl) = positive_duration(ack.lease_ttl) {
        *lock(&shared.lease_ttl) = ttl;
    }
    let deadline = extended_deadline(sent, shared.lease_ttl());
    let mut running = lock(&shared.running);
    for lease in ack.leases {
        if let Some(run) = running.get_mut(&lease.run_id) {
            if run.lease.lease_token == lease.lease_token {
                run.deadline = run.deadline.max(deadline);
            }
        }
    }
}

fn handle_ack(ack: pb::LeaseAck, shared: &Shared) {
    let Some(lease) = ack.lease else { return };
    let key = key_of(&lease, ack.sequence);
    lock(&shared.pending).remove(&key);
    let mut running = lock(&shared.running);
    if ack.sequence >= 0 {
        if let Some(run) = running.get(&lease.run_id) {
            run.window.add_permits(1);
            if !ack.accepted {
                run.cancel.cancel();
            }
        }
    } else {
        // A completion or release was recorded (or refused): the slot is free.
        if !ack.accepted {
            tracing::warn!(run = %lease.run_id, reason = %ack.reason, "control plane refused the result of the attempt");
        }
        if running
            .get(&lease.run_id)
            .is_some_and(|r| r.lease.lease_token == lease.lease_token)
        {
            running.remove(&lease.run_id);
        }
    }
    drop(running);
    shared.wake.notify_one();
}

fn start_run(
    assignment: pb::RunAssignment,
    config: &SessionConfig,
    shared: &Arc<Shared>,
    executor: &Arc<dyn Executor>,
) {
    let Some(lease) = assignment.lease.clone() else {
        return;
    };
    let mut running = lock(&shared.running);
    if running.len() >= config.slots || running.contains_key(&lease.run_id) {
        drop(running);
        // More work than slots (credit raced with an assignment): hand it back.
        let message = pb::lease_session_request::Message::Release(pb::RunRelease {
            lease: Some(lease.clone()),
            reason: "no free slot".to_string(),
        });
        shared.enqueue(key_of(&lease, -1), message);
        return;
    }
    let cancel = CancellationToken::new();
    let progress = Arc::new(Mutex::new(pb::RunProgress::default()));
    let window = Arc::new(Semaphore::new(MAX_UNACKED_BATCHES));
    running.insert(
        lease.run_id.clone(),
        Running {
            lease: lease.clone(),
            cancel: cancel.clone(),
            progress: progress.clone(),
            window: window.clone(),
            finished: false,
            revoked: false,
            deadline: initial_deadline(Instant::now(), shared.lease_ttl()),
        },
    );
    drop(running);
    // Reported at the next progress tick rather than the next heartbeat, so
    // the answer that sets the lease's exact local deadline comes soon.
    shared.progress_changed.store(true, Ordering::Release);
    let context = RunContext {
        lease: lease.clone(),
        cancel,
        progress: progress.clone(),
        shared: shared.clone(),
        window,
        next_sequence: Arc::new(Mutex::new(0)),
    };
    let shared = shared.clone();
    let executor = executor.clone();
    tracing::info!(run = %lease.run_id, token = lease.lease_token, "run started");
    tokio::spawn(async move {
        let outcome = executor.execute(assignment, context.clone()).await;
        finish_run(&shared, &context, outcome);
    });
}

fn finish_run(shared: &Shared, context: &RunContext, outcome: pb::run_completion::Outcome) {
    // A pause or a passed deadline drops the run here, before anything is reported.
    shared.check_fence();
    {
        let mut running = lock(&shared.running);
        let Some(run) = running.get_mut(&context.lease.run_id) else {
            // Revoked or fenced off meanwhile: nothing to report.
            return;
        };
        if run.finished || run.lease.lease_token != context.lease.lease_token {
            return;
        }
        run.finished = true;
    }
    let message = pb::lease_session_request::Message::Completion(pb::RunCompletion {
        lease: Some(context.lease.clone()),
        outcome: Some(outcome),
        progress: Some(lock(&context.progress).clone()),
        batch_count: context.batch_count(),
    });
    tracing::info!(run = %context.lease.run_id, "attempt finished; reporting");
    shared.enqueue(key_of(&context.lease, -1), message);
}

/// Parses a run id for logging and bookkeeping.
pub fn run_id(lease: &pb::LeaseRef) -> Option<Uuid> {
    Uuid::parse_str(&lease.run_id).ok()
}
