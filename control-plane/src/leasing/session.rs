//! One worker's lease session: a task that owns the bidirectional stream.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use coffer_proto::v1 as pb;
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use uuid::Uuid;

use super::dispatch::Seat;
use super::{resolve_target, settings, WorkerProfile};
use crate::api::convert::{duration, exclusion_from_proto, options_to_proto, timestamp};
use crate::auth::WorkerCaller;
use crate::catalog::leases::{
    AttemptOutcome, CompletionResult, LeaseSettings, LeaseState, LeasedRun, WorkerLease,
};
use crate::catalog::workers::WorkerRegistration;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::RepositoryEncryption;
use crate::model::key_slot::{KeySlotKind, ReportedKeySlot, MAX_SLOTS};
use crate::model::run::{NewRunExclusion, RunSpec, Target};
use crate::model::worker_class;
use crate::runs::admission::RunAdmission;
use crate::state::AppState;

/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer to a write about a lease another worker holds.
const FOREIGN_LEASE: &str = "the lease is held by another worker";

type Outbound = mpsc::Sender<Result<pb::LeaseSessionResponse, Status>>;

/// The open session of each worker on this replica: its serial and what
/// ends it. A worker that opens a second session (it reconnected before
/// this side noticed the old stream break, or was restarted) replaces the
/// first: the old stream is closed, and the leases carry over to the new
/// session through its hello, kept until their TTL like any other lease.
/// Refusing the newcomer instead would lock a worker out for as long as a
/// half-open stream lingers. Both sessions authenticated with the worker's
/// own token (see `Catalog::register_worker`), so neither is a stranger.
static OPEN_SESSIONS: LazyLock<Mutex<HashMap<Uuid, (Uuid, CancellationToken)>>> =
    LazyLock::new(Mutex::default);

/// Registers a new session of `worker_id`, closing the one it replaces.
fn claim_session(worker_id: Uuid) -> (Uuid, CancellationToken) {
    let serial = Uuid::now_v7();
    let replaced = CancellationToken::new();
    let previous = OPEN_SESSIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(worker_id, (serial, replaced.clone()));
    if let Some((_, previous)) = previous {
        previous.cancel();
    }
    (serial, replaced)
}

/// Forgets a session unless a newer one of the same worker replaced it.
fn release_session(worker_id: Uuid, serial: Uuid) {
    let mut sessions = OPEN_SESSIONS.lock().unwrap_or_else(PoisonError::into_inner);
    if sessions
        .get(&worker_id)
        .is_some_and(|(open, _)| *open == serial)
    {
        sessions.remove(&worker_id);
    }
}

/// Serves one session until the worker goes away or the server shuts down.
/// `certificate_names` are the names of the worker's client certificate
/// (mTLS), if it presented one: the announced name must be one of them.
pub async fn serve(
    state: AppState,
    settings: LeaseSettings,
    caller: WorkerCaller,
    certificate_names: Option<Vec<String>>,
    mut inbound: Streaming<pb::LeaseSessionRequest>,
    outbound: Outbound,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::LeaseSessionRequest {
            message: Some(pb::lease_session_request::Message::Hello(hello)),
        }))) => hello,
        Ok(Err(status)) => {
            tracing::debug!(%status, "worker stream failed before hello");
            return;
        }
        _ => {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "the first message of a lease session must be `hello`",
                )))
                .await;
            return;
        }
    };
    if let Err(status) = check_certificate_binding(&hello.name, certificate_names.as_deref()) {
        tracing::warn!(worker = %hello.name.trim(), message = %status.message(), "lease session refused");
        let _ = outbound.send(Err(status)).await;
        return;
    }
    let mut session = match Session::open(state, settings, &caller, hello, outbound).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%error, "lease session refused");
            return;
        }
    };
    session.run(inbound).await;
    session.close().await;
}

/// A worker with a client certificate may announce only a name the
/// certificate carries, compared exactly (no wildcards, no case folding):
/// otherwise a certificate issued to one worker could register as another.
/// Without a certificate (no mTLS) the token alone binds the name.
fn check_certificate_binding(announced: &str, names: Option<&[String]>) -> Result<(), Status> {
    let Some(names) = names else {
        return Ok(());
    };
    let announced = announced.trim();
    if names.iter().any(|name| name == announced) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "hello.name {announced:?} is not a name of the client certificate, which names {}",
        names.join(", ")
    )))
}

struct Session {
    state: AppState,
    /// The server's lease settings, before the configuration overrides them.
    base: LeaseSettings,
    /// The settings in effect, read again at every lease operation.
    settings: LeaseSettings,
    worker_id: Uuid,
    name: String,
    profile: WorkerProfile,
    /// This session's place at the replica's assignment coordinator, which
    /// leases runs to it while it has credit (see `dispatch.rs`).
    seat: Seat,
    /// Leases granted to (or resumed by) this worker: run id -> token.
    held: HashMap<Uuid, i64>,
    outbound: Outbound,
    /// This session's serial among the worker's sessions.
    serial: Uuid,
    /// Fires when a newer session of the same worker replaces this one.
    replaced: CancellationToken,
}

impl Session {
    async fn open(
        state: AppState,
        base: LeaseSettings,
        caller: &WorkerCaller,
        hello: pb::WorkerHello,
        outbound: Outbound,
    ) -> DomainResult<Session> {
        let name = hello.name.trim().to_string();
        if name.is_empty() || name.len() > 255 {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "hello.name must be 1-255 characters",
                )))
                .await;
            return Err(DomainError::invalid(
                "hello.name",
                "must be 1-255 characters",
            ));
        }
        let Some(class) = worker_class::from_proto(hello.class) else {
            let _ = outbound
                .send(Err(Status::invalid_argument(
                    "hello.class is not a known worker class",
                )))
                .await;
            return Err(DomainError::invalid(
                "hello.class",
                "is not a known worker class",
            ));
        };
        let registration = WorkerRegistration {
            name: name.clone(),
            class,
            labels: hello.labels.clone().into_iter().collect(),
            slots: hello.slots.max(0),
            source_roots: hello.source_roots.clone(),
            version: hello.version.clone(),
            token_id: caller.token_id,
        };
        let worker_id = match state.catalog.register_worker(&registration).await {
            Ok(id) => id,
            Err(error) => {
                let status = Status::from(error);
                let refused =
                    DomainError::Aborted(format!("registration refused: {}", status.message()));
                let _ = outbound.send(Err(status)).await;
                return Err(refused);
            }
        };
        let (serial, replaced) = claim_session(worker_id);
        let current = settings::current(&state.catalog, base).await;
        let profile = WorkerProfile {
            labels: registration.labels,
            source_roots: registration.source_roots,
            class: registration.class,
        };
        let seat = state.dispatch.join(worker_id, profile.clone());
        let mut session = Session {
            state,
            base,
            settings: current,
            worker_id,
            name,
            profile,
            seat,
            held: HashMap::new(),
            outbound,
            serial,
            replaced,
        };
        session
            .send(pb::lease_session_response::Message::Welcome(
                pb::SessionWelcome {
                    worker_id: worker_id.to_string(),
                    lease_ttl: Some(duration(current.ttl)),
                    heartbeat_interval: Some(duration(current.ttl / 3)),
                },
            ))
            .await;
        // Leases held across a reconnect continue if they are still current
        // and this worker's.
        for lease in hello.held_leases {
            let Ok(run_id) = Uuid::parse_str(&lease.run_id) else {
                continue;
            };
            if session.holds(run_id, lease.lease_token).await? {
                session.held.insert(run_id, lease.lease_token);
            }
        }
        tracing::info!(worker = %session.name, id = %worker_id, resumed = session.held.len(), "worker session opened");
        Ok(session)
    }

    async fn run(&mut self, mut inbound: Streaming<pb::LeaseSessionRequest>) {
        let mut events = self.state.catalog.subscribe_runs();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        self.seat.heard(self.settings.ttl);
                        if let Err(error) = self.handle(message).await {
                            tracing::warn!(worker = %self.name, %error, "worker message failed");
                            let _ = self.outbound.send(Err(Status::from(error))).await;
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::info!(worker = %self.name, %status, "worker stream broke");
                        return;
                    }
                },
                // Only the runs this worker holds concern the session:
                // assignment is the coordinator's.
                event = events.recv() => match event {
                    Ok(run_id) => {
                        if self.held.contains_key(&run_id) {
                            self.check_cancellation(run_id).await;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let held: Vec<Uuid> = self.held.keys().copied().collect();
                        for run_id in held {
                            self.check_cancellation(run_id).await;
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
                Some(leased) = self.seat.grants.recv() => self.hand_over(leased).await,
                () = self.outbound.closed() => return,
                () = self.state.stopping.cancelled() => return,
                () = self.replaced.cancelled() => {
                    tracing::info!(worker = %self.name, "a newer session of this worker replaced this one");
                    let _ = self
                        .outbound
                        .send(Err(Status::aborted("replaced by a newer session of the same worker")))
                        .await;
                    return;
                }
            }
        }
    }

    async fn close(&mut self) {
        release_session(self.worker_id, self.serial);
        // Runs leased to this session but not handed over go back at once.
        self.seat.grants.close();
        while let Ok(leased) = self.seat.grants.try_recv() {
            let lease = self.lease(leased.id, leased.lease_token);
            if let Err(error) = self.state.catalog.release_run(lease).await {
                tracing::warn!(run = %leased.id, %error, "could not release a run not handed over");
            }
        }
        // A replaced session leaves the worker marked connected: its successor is.
        if !self.replaced.is_cancelled() {
            if let Err(error) = self.state.catalog.touch_worker(self.worker_id, false).await {
                tracing::warn!(%error, "could not mark worker disconnected");
            }
        }
        // Leases stay: only their TTL ends them, so a worker that reconnects
        // quickly keeps its runs.
        tracing::info!(worker = %self.name, held = self.held.len(), "worker session closed");
    }

    async fn send(&self, message: pb::lease_session_response::Message) {
        let _ = self
            .outbound
            .send(Ok(pb::LeaseSessionResponse {
                message: Some(message),
            }))
            .await;
    }

    async fn ack(&self, run_id: Uuid, token: i64, accepted: bool, reason: &str, sequence: i64) {
        self.send(pb::lease_session_response::Message::Ack(pb::LeaseAck {
            lease: Some(lease_ref(run_id, token)),
            accepted,
            reason: reason.to_string(),
            sequence,
        }))
        .await;
    }

    async fn revoke(&mut self, run_id: Uuid, token: i64, reason: &str) {
        self.held.remove(&run_id);
        self.send(pb::lease_session_response::Message::Revocation(
            pb::RunRevocation {
                lease: Some(lease_ref(run_id, token)),
                reason: reason.to_string(),
            },
        ))
        .await;
    }

    async fn handle(&mut self, message: pb::LeaseSessionRequest) -> DomainResult<()> {
        use pb::lease_session_request::Message as M;
        match message.message {
            Some(M::Credit(credit)) => {
                self.seat
                    .set_credit(usize::try_from(credit.free_slots).unwrap_or(0));
            }
            Some(M::Heartbeat(heartbeat)) => self.heartbeat(heartbeat).await?,
            Some(M::FileBatch(batch)) => self.file_batch(batch).await?,
            Some(M::Completion(completion)) => {
                self.refresh_settings().await;
                self.completion(completion).await?;
            }
            Some(M::Release(release)) => self.release(release).await?,
            Some(M::Hello(_)) => {
                return Err(DomainError::invalid("hello", "sent twice in one session"))
            }
            None => return Err(DomainError::invalid("message", "is required")),
        }
        self.state.catalog.touch_worker(self.worker_id, true).await
    }

    /// Whether `(run_id, token)` is the run's current lease and this worker
    /// holds it.
    async fn holds(&self, run_id: Uuid, token: i64) -> DomainResult<bool> {
        let holder = self.state.catalog.lease_holder(run_id, token).await?;
        Ok(holder == Some(self.worker_id))
    }

    /// `(run_id, token)` as this worker's writes name it.
    fn lease(&self, run_id: Uuid, token: i64) -> WorkerLease {
        WorkerLease {
            run_id,
            token,
            worker_id: self.worker_id,
        }
    }

    /// Reads the lease settings in effect again.
    async fn refresh_settings(&mut self) {
        self.settings = settings::current(&self.state.catalog, self.base).await;
    }

    /// Sends the worker a run the coordinator leased to it; a run that
    /// cannot be executed as specified (e.g. its bucket is gone) fails this
    /// attempt without a retry, and the slot is offered again.
    async fn hand_over(&mut self, lease: LeasedRun) {
        self.held.insert(lease.id, lease.lease_token);
        match self
            .assignment(lease.id, lease.lease_token, lease.deadline)
            .await
        {
            Ok(assignment) => {
                tracing::info!(worker = %self.name, run = %lease.id, token = lease.lease_token, "run assigned");
                self.send(pb::lease_session_response::Message::Assignment(assignment))
                    .await;
            }
            Err(error) => {
                tracing::warn!(run = %lease.id, %error, "run cannot be assigned");
                self.refresh_settings().await;
                let outcome = AttemptOutcome::Failure {
                    error: error.to_string(),
                    retryable: false,
                };
                let _ = self
                    .state
                    .catalog
                    .complete_attempt(
                        self.lease(lease.id, lease.lease_token),
                        &outcome,
                        "{}",
                        &self.settings,
                    )
                    .await;
                self.held.remove(&lease.id);
                self.seat.restore_credit();
            }
        }
    }

    async fn assignment(
        &self,
        run_id: Uuid,
        token: i64,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> DomainResult<pb::RunAssignment> {
        let run = self.state.catalog.get_run(run_id).await?;
        if let RunSpec::BackupDryRun(backup) = &run.spec {
            return self
                .dry_run_assignment(run_id, token, deadline, backup.options.clone(), run)
                .await;
        }
        let target = resolve_target(&self.state.catalog, &self.state.secrets, &run.spec).await?;
        let stored = crate::runs::repositories::ensure_repository(
            &self.state.catalog,
            &self.state.secrets,
            run.spec.target(),
            run.owner_id,
        )
        .await?;
        let writes_snapshot = matches!(run.spec, RunSpec::Backup(_) | RunSpec::Copy(_));
        if writes_snapshot && stored.owner_id != Some(run.owner_id) {
            return Err(DomainError::PermissionDenied(
                "the repository of this run's target belongs to another user".to_string(),
            ));
        }
        if run.repository_id != Some(stored.id) {
            self.state
                .catalog
                .record_run_repository(run_id, stored.id)
                .await?;
        }
        let path_grants = self.path_grants(&run).await?;
        let catalog_key =
            crate::runs::repositories::open_catalog_key(&self.state.secrets, &stored)?;
        let passphrase = self.lease_passphrase(&run, &stored).await?;
        let mut assignment = pb::RunAssignment {
            lease: Some(lease_ref(run_id, token)),
            target: Some(target),
            deadline: Some(timestamp(deadline)),
            repository_id: stored.storage_identity(),
            repository_format: u32::try_from(stored.format_version).unwrap_or_default(),
            repository_encryption: repository_encryption(&stored)?.into(),
            repository_generation: pinned_generation(&stored),
            catalog_key: catalog_key.map(|key| key.to_vec()).unwrap_or_default(),
            passphrase: passphrase
                .map(|passphrase| passphrase.expose().to_owned())
                .unwrap_or_default(),
            // Only a v1 repository is created with the catalog's chunk key.
            repository_key: if stored.format_version == 1 {
                stored.chunk_key
            } else {
                Vec::new()
            },
            path_grants,
            ..Default::default()
        };
        match &run.spec {
            RunSpec::Backup(backup) => {
                assignment.options = Some(options_to_proto(&backup.options));
                // The job's storage class for packs, over its bucket's.
                if let Some(bucket) = assignment.target.as_mut().and_then(|t| t.bucket.as_mut()) {
                    if !backup.options.pack_storage_class.is_empty() {
                        bucket.pack_storage_class = backup.options.pack_storage_class.clone();
                    }
                }
                if let Some(parent) = self
                    .state
                    .catalog
                    .latest_snapshot(stored.id, backup.job_id)
                    .await?
                {
                    assignment.parent_manifest_key = parent.manifest_key;
                    assignment.parent_run_id = parent.id.to_string();
                }
            }
            RunSpec::Restore(restore) => {
                assignment.snapshot_manifest_key = restore.snapshot.manifest_key.clone();
            }
            RunSpec::Verify(verify) => {
                assignment.snapshot_manifest_key = verify.snapshot.manifest_key.clone();
            }
            RunSpec::Download(download) => {
                assignment.snapshot_manifest_key = download.snapshot.manifest_key.clone();
            }
            RunSpec::Copy(copy) => {
                assignment.copy_source = Some(self.copy_source(copy, stored.id).await?);
            }
            RunSpec::RebuildCatalog(_) | RunSpec::BackupDryRun(_) => {}
            RunSpec::Retention(retention) => {
                for snapshot in &retention.removed {
                    assignment.removals.push(pb::SnapshotRemoval {
                        run_id: snapshot.run_id.to_string(),
                        manifest_key: snapshot.manifest_key.clone(),
                        target: Some(
                            super::resolve(
                                &self.state.catalog,
                                &self.state.secrets,
                                &snapshot.target,
                                true,
                            )
                            .await?,
                        ),
                    });
                }
            }
            RunSpec::KeySlots(key_slots) => {
                super::key_slots::assign(
                    &self.state.catalog,
                    &self.state.secrets,
                    run.owner_id,
                    key_slots,
                    &mut assignment,
                )
                .await?;
            }
            RunSpec::GarbageCollection(_) => {
                assignment.oldest_in_flight_start_time = self
                    .state
                    .catalog
                    .oldest_in_flight_start(stored.id, run_id)
                    .await?
                    .map(timestamp);
            }
        }
        super::object_lock::assign(&self.state.catalog, &run, deadline, &mut assignment).await?;
        crate::runs::commands::assign(&self.state.catalog, &run, &mut assignment).await?;
        assignment.run = Some(run.into());
        Ok(assignment)
    }

    /// The repository a copy reads, described for the lease like the run's
    /// own: checked again now that the snapshot is still a snapshot, that it
    /// lives in the repository the catalog knows, and that the copy does
    /// not write into it.
    async fn copy_source(
        &self,
        copy: &crate::model::run::CopySpec,
        destination: Uuid,
    ) -> DomainResult<pb::CopySource> {
        let catalog = &self.state.catalog;
        let snapshot = catalog.get_run(copy.snapshot.run_id).await?;
        if snapshot.state != crate::model::run::RunState::Succeeded
            || snapshot.manifest_key != copy.snapshot.manifest_key
        {
            return Err(DomainError::FailedPrecondition(format!(
                "snapshot {} is no longer there to copy",
                copy.snapshot.run_id
            )));
        }
        let source = catalog
            .find_repository(&copy.snapshot.target.repository())
            .await?
            .filter(|source| Some(source.id) == snapshot.repository_id)
            .ok_or_else(|| {
                DomainError::FailedPrecondition(format!(
                    "snapshot {} is not in the repository the catalog records for it",
                    copy.snapshot.run_id
                ))
            })?;
        if source.id == destination {
            return Err(DomainError::FailedPrecondition(
                "a copy cannot write into the snapshot's own repository".into(),
            ));
        }
        let target =
            super::resolve(catalog, &self.state.secrets, &copy.snapshot.target, false).await?;
        let catalog_key =
            crate::runs::repositories::open_catalog_key(&self.state.secrets, &source)?;
        Ok(pb::CopySource {
            target: Some(target),
            repository_id: source.storage_identity(),
            repository_format: u32::try_from(source.format_version).unwrap_or_default(),
            repository_encryption: repository_encryption(&source)?.into(),
            repository_generation: pinned_generation(&source),
            catalog_key: catalog_key.map(|key| key.to_vec()).unwrap_or_default(),
            manifest_key: copy.snapshot.manifest_key.clone(),
        })
    }

    /// The grants of the run's owner covering its paths on this worker,
    /// checked again at lease time: a grant deleted since admission no
    /// longer counts, and the grant must cover this worker.
    async fn path_grants(&self, run: &crate::model::run::Run) -> DomainResult<Vec<pb::PathGrant>> {
        let granted = crate::runs::grants::for_worker(
            &self.state.catalog,
            run.owner_id,
            &run.spec,
            &self.profile.labels,
        )
        .await?;
        Ok(granted
            .into_iter()
            .map(crate::api::grants::path_grant_to_proto)
            .collect())
    }

    /// A dry run's assignment: the grants and options the walk needs, and
    /// nothing about storage (no target, credentials or keys).
    async fn dry_run_assignment(
        &self,
        run_id: Uuid,
        token: i64,
        deadline: chrono::DateTime<chrono::Utc>,
        options: crate::model::run::JobOptions,
        run: crate::model::run::Run,
    ) -> DomainResult<pb::RunAssignment> {
        Ok(pb::RunAssignment {
            lease: Some(lease_ref(run_id, token)),
            deadline: Some(timestamp(deadline)),
            options: Some(options_to_proto(&options)),
            path_grants: self.path_grants(&run).await?,
            run: Some(run.into()),
            ..Default::default()
        })
    }

    /// The passphrase of the run's bucket, for the only runs that use it:
    /// a backup that may create an encrypted repository (none pinned yet:
    /// it gets a passphrase slot), and a catalog rebuild (which opens with
    /// it when the catalog that held the repository's key was lost).
    async fn lease_passphrase(
        &self,
        run: &crate::model::run::Run,
        stored: &crate::catalog::repositories::Repository,
    ) -> DomainResult<Option<crate::model::secret::Passphrase>> {
        let Target::Bucket { bucket_id, .. } = run.spec.target() else {
            return Ok(None);
        };
        let wanted = match run.spec {
            RunSpec::Backup(_) | RunSpec::Copy(_) => stored.pinned_generation().is_none(),
            RunSpec::RebuildCatalog(_) => true,
            _ => false,
        };
        let encrypted = stored.encryption()? == Some(RepositoryEncryption::Aes256Gcm);
        if !wanted || !encrypted {
            return Ok(None);
        }
        let bucket = self.state.catalog.get_bucket(*bucket_id, None).await?;
        crate::secrets::access::lease_passphrase(&self.state.catalog, &self.state.secrets, &bucket)
            .await
    }

    async fn check_cancellation(&mut self, run_id: Uuid) {
        let Some(&token) = self.held.get(&run_id) else {
            return;
        };
        match self.state.catalog.get_run(run_id).await {
            Ok(run) if run.lease_token != token || run.state.is_final() => {
                self.revoke(run_id, token, "lease is no longer current")
                    .await;
            }
            Ok(run) if run.cancel_requested => self.revoke(run_id, token, "cancelled").await,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not check run for cancellation"),
        }
    }

    async fn heartbeat(&mut self, heartbeat: pb::WorkerHeartbeat) -> DomainResult<()> {
        if heartbeat.leases.is_empty() {
            return Ok(());
        }
        self.refresh_settings().await;
        let mut extended = Vec::new();
        for lease in heartbeat.leases {
            let Some((run_id, token)) = parse_lease(lease.lease.as_ref()) else {
                continue;
            };
            let progress = progress_json(lease.progress.as_ref());
            match self
                .state
                .catalog
                .heartbeat(self.lease(run_id, token), &progress, &self.settings)
                .await?
            {
                LeaseState::Current {
                    cancel_requested: false,
                } => {
                    self.held.insert(run_id, token);
                    extended.push(lease_ref(run_id, token));
                }
                LeaseState::Current {
                    cancel_requested: true,
                } => self.revoke(run_id, token, "cancelled").await,
                LeaseState::Lost => {
                    self.revoke(run_id, token, "lease is no longer current")
                        .await
                }
                LeaseState::HeldByAnother => self.revoke(run_id, token, FOREIGN_LEASE).await,
            }
        }
        self.send(pb::lease_session_response::Message::HeartbeatAck(
            pb::HeartbeatAck {
                leases: extended,
                lease_ttl: Some(duration(self.settings.ttl)),
            },
        ))
        .await;
        Ok(())
    }

    async fn file_batch(&mut self, batch: pb::FileBatch) -> DomainResult<()> {
        let Some((run_id, token)) = parse_lease(batch.lease.as_ref()) else {
            return Err(DomainError::invalid("file_batch.lease", "is required"));
        };
        let errors: Vec<(String, String)> = batch
            .errors
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        let exclusions: Vec<NewRunExclusion> =
            batch.exclusions.iter().map(exclusion_from_proto).collect();
        let payload = batch.encode_to_vec();
        match self
            .state
            .catalog
            .stage_batch(
                self.lease(run_id, token),
                batch.sequence,
                &payload,
                &errors,
                &exclusions,
            )
            .await?
        {
            LeaseState::Current { .. } => self.ack(run_id, token, true, "", batch.sequence).await,
            LeaseState::HeldByAnother => {
                self.ack(run_id, token, false, FOREIGN_LEASE, batch.sequence)
                    .await
            }
            LeaseState::Lost => {
                self.ack(
                    run_id,
                    token,
                    false,
                    "lease is no longer current",
                    batch.sequence,
                )
                .await;
                self.revoke(run_id, token, "lease is no longer current")
                    .await;
            }
        }
        Ok(())
    }

    async fn completion(&mut self, completion: pb::RunCompletion) -> DomainResult<()> {
        let Some((run_id, token)) = parse_lease(completion.lease.as_ref()) else {
            return Err(DomainError::invalid("completion.lease", "is required"));
        };
        let progress = progress_json(completion.progress.as_ref());
        let reported = match &completion.outcome {
            Some(pb::run_completion::Outcome::Success(success)) => parse_reported(success)?,
            _ => ReportedRepository::default(),
        };
        let outcome = match completion.outcome {
            Some(pb::run_completion::Outcome::Success(success)) => AttemptOutcome::Success {
                size_bytes: success.size_bytes,
                details: success.details,
                manifest_key: success.manifest_key,
                parent_run_id: match success.parent_run_id.as_str() {
                    "" => None,
                    id => Some(Uuid::parse_str(id).map_err(|_| {
                        DomainError::invalid("completion.success.parent_run_id", "is not a UUID")
                    })?),
                },
            },
            Some(pb::run_completion::Outcome::Failure(failure)) => AttemptOutcome::Failure {
                error: failure.error,
                retryable: failure.retryable,
            },
            None => return Err(DomainError::invalid("completion.outcome", "is required")),
        };
        // Recorded before the commit makes the run's end visible, fenced by
        // the lease like the commit itself.
        let unrecorded = self.record_repository(run_id, token, &reported).await;
        // A key-slot run succeeded only once the catalog pinned its new
        // generation: otherwise writers would stay on the old one, which a
        // removed slot still reads. The next attempt starts again.
        let outcome = match (outcome, unrecorded) {
            (AttemptOutcome::Success { .. }, Some(error)) => AttemptOutcome::Failure {
                error,
                retryable: true,
            },
            (outcome, _) => outcome,
        };
        let result = self
            .state
            .catalog
            .commit_attempt(
                self.lease(run_id, token),
                &outcome,
                &progress,
                completion.batch_count,
                &self.settings,
            )
            .await?;
        if result == CompletionResult::HeldByAnother {
            tracing::warn!(worker = %self.name, run = %run_id, "completion for another worker's lease refused");
            self.ack(run_id, token, false, FOREIGN_LEASE, -1).await;
            return Ok(());
        }
        // A completion sent again (after a lost acknowledgement) finds the
        // lease no longer held and is not counted twice.
        let was_held = self.held.remove(&run_id).is_some();
        match result {
            CompletionResult::Accepted { state } => {
                tracing::info!(worker = %self.name, run = %run_id, %state, "attempt completed");
                self.ack(run_id, token, true, "", -1).await;
                if was_held && state == "queued" {
                    crate::monitoring::run_requeued();
                } else if was_held {
                    crate::monitoring::attempt_ended(&self.state.catalog, run_id, false).await;
                }
                if state == "succeeded" {
                    self.record_commit_lock(run_id).await;
                    tokio::spawn(apply_retention_after_backup(
                        self.state.runs.clone(),
                        run_id,
                    ));
                }
            }
            CompletionResult::Rejected { reason } => {
                tracing::warn!(worker = %self.name, run = %run_id, %reason, "completion refused");
                self.ack(run_id, token, false, &reason, -1).await;
            }
            CompletionResult::HeldByAnother => {}
        }
        Ok(())
    }

    /// Brings a committed backup's recorded Object Lock down to its real
    /// date; on failure the upper bound recorded at the lease stays, which
    /// only makes retention wait longer.
    async fn record_commit_lock(&self, run_id: Uuid) {
        let catalog = &self.state.catalog;
        let recorded = async {
            let run = catalog.get_run(run_id).await?;
            super::object_lock::committed(catalog, &run, catalog.now().await?).await
        };
        if let Err(error) = recorded.await {
            tracing::warn!(run = %run_id, %error, "could not record the snapshot's Object Lock");
        }
    }

    /// Records what the succeeded run `run_id` reported about its
    /// repository: a backup, the key generation it created the repository
    /// with; a catalog rebuild (admin only), the format and identity found
    /// in storage, then the generation. Each is taken only while the
    /// repository has no pinned generation, and only while the attempt
    /// still holds its lease, so a zombie attempt records nothing.
    /// Returns the error of a key-slot run whose new generation was not
    /// recorded (its success depends on it).
    async fn record_repository(
        &self,
        run_id: Uuid,
        token: i64,
        reported: &ReportedRepository,
    ) -> Option<String> {
        if reported.generation.is_none()
            && reported.found.is_none()
            && reported.key_slots.is_empty()
        {
            return None;
        }
        let catalog = &self.state.catalog;
        let mut key_slots_run = false;
        let recorded = async {
            let run = catalog.get_run(run_id).await?;
            key_slots_run = matches!(run.spec, RunSpec::KeySlots(_));
            let Some(repository_id) = run.repository_id else {
                return Ok(());
            };
            if !reported.key_slots.is_empty() {
                catalog
                    .record_key_slots(repository_id, &reported.key_slots, (run_id, token))
                    .await?;
            }
            let rebuild = matches!(run.spec, RunSpec::RebuildCatalog(_));
            if let (true, Some((format, storage_id))) = (rebuild, &reported.found) {
                catalog
                    .adopt_repository(repository_id, *format, storage_id, (run_id, token))
                    .await?;
            }
            match (&run.spec, &reported.generation) {
                (RunSpec::KeySlots(_), Some((generation, fingerprint))) => {
                    super::key_slots::advance_pin(
                        catalog,
                        repository_id,
                        (*generation, fingerprint),
                        (run_id, token),
                    )
                    .await
                }
                (
                    RunSpec::Backup(_) | RunSpec::RebuildCatalog(_) | RunSpec::Copy(_),
                    Some((generation, fingerprint)),
                ) => {
                    catalog
                        .pin_repository_generation(
                            repository_id,
                            *generation,
                            fingerprint,
                            (run_id, token),
                        )
                        .await
                }
                _ => Ok(()),
            }
        };
        let Err(error) = recorded.await else {
            return None;
        };
        // The next backup reports the generation again.
        tracing::warn!(run = %run_id, %error, "recording the repository's format and key generation failed");
        key_slots_run.then(|| format!("the catalog did not record the new key generation: {error}"))
    }

    async fn release(&mut self, release: pb::RunRelease) -> DomainResult<()> {
        let Some((run_id, token)) = parse_lease(release.lease.as_ref()) else {
            return Err(DomainError::invalid("release.lease", "is required"));
        };
        let result = self
            .state
            .catalog
            .release_run(self.lease(run_id, token))
            .await?;
        if result == LeaseState::HeldByAnother {
            self.ack(run_id, token, false, FOREIGN_LEASE, -1).await;
            return Ok(());
        }
        self.held.remove(&run_id);
        let accepted = result != LeaseState::Lost;
        let reason = if accepted {
            ""
        } else {
            "lease is no longer current"
        };
        tracing::info!(worker = %self.name, run = %run_id, reason = %release.reason, accepted, "run released");
        self.ack(run_id, token, accepted, reason, -1).await;
        Ok(())
    }
}

fn lease_ref(run_id: Uuid, token: i64) -> pb::LeaseRef {
    pb::LeaseRef {
        run_id: run_id.to_string(),
        lease_token: token,
    }
}

fn parse_lease(lease: Option<&pb::LeaseRef>) -> Option<(Uuid, i64)> {
    let lease = lease?;
    Some((Uuid::parse_str(&lease.run_id).ok()?, lease.lease_token))
}

fn progress_json(progress: Option<&pb::RunProgress>) -> String {
    let progress = progress.cloned().unwrap_or_default();
    crate::catalog::to_json(&crate::model::run::RunProgress::from(progress))
}

/// Queues the retention that follows a successful backup, if configured
/// (see [`RunAdmission::retention_after_backup`]).
async fn apply_retention_after_backup(runs: RunAdmission, run_id: Uuid) {
    match runs.retention_after_backup(run_id).await {
        Ok(Some(retention)) => {
            tracing::info!(backup = %run_id, retention = %retention.id, "retention queued after the backup");
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(backup = %run_id, %error, "could not apply retention after the backup");
        }
    }
}

/// The encryption a lease names: unspecified for a v1 repository.
fn repository_encryption(
    repository: &crate::catalog::repositories::Repository,
) -> DomainResult<pb::RepositoryEncryption> {
    Ok(repository.encryption()?.map_or(
        pb::RepositoryEncryption::Unspecified,
        crate::api::buckets::encryption_to_proto,
    ))
}

/// The key generation the catalog pinned for a repository, for a lease.
fn pinned_generation(
    repository: &crate::catalog::repositories::Repository,
) -> Option<pb::RepositoryGeneration> {
    repository
        .pinned_generation()
        .map(|(generation, fingerprint)| pb::RepositoryGeneration {
            generation,
            fingerprint: fingerprint.to_owned(),
        })
}

/// What a succeeded run reported about its repository.
#[derive(Debug, Default)]
struct ReportedRepository {
    /// The current key generation and its fingerprint (format v2).
    generation: Option<(u32, String)>,
    /// A rebuild's finding: the format and the identity in storage.
    found: Option<(u32, String)>,
    /// The repository's key slots as the run found them (encrypted v2).
    key_slots: Vec<ReportedKeySlot>,
}

fn parse_reported(success: &pb::RunSuccess) -> DomainResult<ReportedRepository> {
    let generation = success
        .repository_generation
        .as_ref()
        .map(parse_generation)
        .transpose()?;
    let found = match success.repository_format {
        0 => None,
        format => {
            let id = &success.repository_id;
            if format == 2 && Uuid::parse_str(id).is_err() {
                return Err(DomainError::invalid(
                    "completion.success.repository_id",
                    "is not a UUID",
                ));
            }
            Some((format, id.clone()))
        }
    };
    Ok(ReportedRepository {
        generation,
        found,
        key_slots: parse_key_slots(&success.key_slots)?,
    })
}

/// The key slots a worker reported, checked for shape and bounds.
fn parse_key_slots(slots: &[pb::RepositoryKeySlot]) -> DomainResult<Vec<ReportedKeySlot>> {
    let field = "completion.success.key_slots";
    if slots.len() > MAX_SLOTS {
        return Err(DomainError::invalid(
            field,
            format!(
                "names {} slots, at most {MAX_SLOTS} are accepted",
                slots.len()
            ),
        ));
    }
    slots
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            let field = format!("{field}[{index}]");
            let kind = match pb::KeySlotKind::try_from(slot.kind) {
                Ok(pb::KeySlotKind::Passphrase) => KeySlotKind::Passphrase,
                Ok(pb::KeySlotKind::Catalog) => KeySlotKind::Catalog,
                _ => {
                    return Err(DomainError::invalid(
                        format!("{field}.kind"),
                        "must be PASSPHRASE or CATALOG",
                    ))
                }
            };
            let create_time = slot
                .create_time
                .as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
                .ok_or_else(|| {
                    DomainError::invalid(format!("{field}.create_time"), "is required")
                })?;
            ReportedKeySlot::new(
                &field,
                slot.slot_id.clone(),
                kind,
                slot.generations.clone(),
                create_time,
            )
        })
        .collect()
}

/// A key generation a worker reported: a number from 1 and a fingerprint
/// of 64 lowercase hex digits.
fn parse_generation(generation: &pb::RepositoryGeneration) -> DomainResult<(u32, String)> {
    let field = "completion.success.repository_generation";
    if generation.generation == 0 {
        return Err(DomainError::invalid(
            format!("{field}.generation"),
            "must be at least 1",
        ));
    }
    let fingerprint = &generation.fingerprint;
    let is_hex = fingerprint.len() == 64
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex {
        return Err(DomainError::invalid(
            format!("{field}.fingerprint"),
            "must be 64 lowercase hex digits",
        ));
    }
    Ok((generation.generation, fingerprint.clone()))
}
