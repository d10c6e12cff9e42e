//! RunService: queueing, inspecting, cancelling and watching runs. Queueing
//! converts the request here and leaves the rest to
//! [`RunAdmission`](crate::runs::admission::RunAdmission).

use std::pin::Pin;
use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::run_service_server::RunService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use uuid::Uuid;

use super::convert::{
    optional_time, options_from_proto, run_kind_from_proto, run_state_from_proto,
    selector_from_proto, target_from_proto, whole_seconds,
};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::leases::LeaseSettings;
use crate::catalog::{Catalog, Page};
use crate::error::{DomainError, DomainResult, Violations};
use crate::leasing::waiting::{explain_runs, WaitingReason};
use crate::model::limits::OwnerLimit;
use crate::model::run::{check_bandwidth_limit, BackupSpec, Run, RunFilter};
use crate::model::{
    check_absolute_path, check_len, check_relative_path, parse_id, parse_optional_id,
};
use crate::runs::admission::{
    CopyRequest, GcRequest, RestoreRequest, RunRequest, SnapshotChoice, VerifyRequest,
};
use crate::runs::watch_slots::{WatchSlot, WatchSlots};
use crate::state::AppState;

/// How often a watch re-reads its run when no change was announced.
const WATCH_FALLBACK: Duration = Duration::from_secs(5);
/// Updates buffered per watch before the watcher waits for the client.
const WATCH_BUFFER: usize = 16;

/// Handler of `coffer.v1.RunService`.
#[derive(Clone, Debug)]
pub struct RunApi {
    state: AppState,
    /// Open watches per owner on this replica.
    watches: WatchSlots,
}

impl RunApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        RunApi {
            state,
            watches: WatchSlots::default(),
        }
    }
}

fn waiting_reason_to_proto(reason: WaitingReason) -> pb::WaitingReason {
    match reason {
        WaitingReason::NoMatchingWorker => pb::WaitingReason::NoMatchingWorker,
        WaitingReason::PathOutsideWorkerRoots => pb::WaitingReason::PathOutsideWorkerRoots,
        WaitingReason::Backoff => pb::WaitingReason::Backoff,
        WaitingReason::AllSlotsBusy => pb::WaitingReason::AllSlotsBusy,
        WaitingReason::Ready => pb::WaitingReason::Ready,
    }
}

/// Converts runs for the API, saying why each queued one waits (`base`:
/// the server's lease settings, which say how fresh a connected worker is).
async fn runs_to_proto(
    catalog: &Catalog,
    base: LeaseSettings,
    runs: Vec<Run>,
) -> DomainResult<Vec<pb::Run>> {
    let waiting = explain_runs(catalog, base, &runs).await?;
    Ok(runs
        .into_iter()
        .zip(waiting)
        .map(|(run, waiting)| {
            let mut message = pb::Run::from(run);
            if let Some(waiting) = waiting {
                message.waiting_reason = waiting_reason_to_proto(waiting.reason) as i32;
                message.waiting_message = waiting.message;
            }
            message
        })
        .collect())
}

/// [`runs_to_proto`] for one run.
async fn run_to_proto(catalog: &Catalog, base: LeaseSettings, run: Run) -> DomainResult<pb::Run> {
    let mut converted = runs_to_proto(catalog, base, vec![run]).await?;
    converted
        .pop()
        .ok_or_else(|| DomainError::Internal("a converted run went missing".into()))
}

/// Grace period of a collection that names none.
const DEFAULT_GC_GRACE_SECONDS: i64 = 3600;
/// Longest grace period a collection may ask for.
const MAX_GC_GRACE_SECONDS: i64 = 30 * 24 * 3600;
/// Repack threshold of a collection that names none.
const DEFAULT_REPACK_THRESHOLD_PERCENT: f64 = 50.0;
/// Most paths one restore may name.
const MAX_RESTORE_PATHS: usize = 1000;

/// Converts the spec of a CreateRun request, checking every field that needs
/// no catalog.
fn run_request(spec: Option<pb::create_run_request::Spec>) -> DomainResult<RunRequest> {
    use pb::create_run_request::Spec;
    match spec {
        Some(Spec::Backup(backup)) => backup_request(backup),
        Some(Spec::Restore(restore)) => restore_request(restore).map(RunRequest::Restore),
        Some(Spec::Verify(verify)) => verify_request(&verify).map(RunRequest::Verify),
        Some(Spec::GarbageCollection(gc)) => gc_request(gc).map(RunRequest::GarbageCollection),
        Some(Spec::Copy(copy)) => copy_request(copy).map(RunRequest::Copy),
        Some(Spec::KeySlots(spec)) => {
            super::key_slots::spec_from_proto(spec).map(RunRequest::KeySlots)
        }
        None => Err(DomainError::invalid(
            "spec",
            "one of backup, restore, verify, garbage_collection, copy or key_slots is required",
        )),
    }
}

/// A job's backup (no inline fields), or an ad-hoc one.
/// With `dry_run`, its dry run.
fn backup_request(backup: pb::BackupSpec) -> DomainResult<RunRequest> {
    let dry_run = backup.dry_run;
    if let Some(job_id) = parse_optional_id("backup.job_id", &backup.job_id)? {
        check_inline_fields_empty(&backup)?;
        return Ok(if dry_run {
            RunRequest::JobBackupDryRun(job_id)
        } else {
            RunRequest::JobBackup(job_id)
        });
    }
    let mut violations = Violations::new();
    let spec = ad_hoc_spec(backup, &mut violations);
    violations.finish()?;
    let spec = spec.ok_or_else(|| DomainError::Internal("unreported violation".into()))?;
    Ok(if dry_run {
        RunRequest::AdHocBackupDryRun(spec)
    } else {
        RunRequest::AdHocBackup(spec)
    })
}

/// Refuses inline fields on a job run.
fn check_inline_fields_empty(backup: &pb::BackupSpec) -> DomainResult<()> {
    let mut violations = Violations::new();
    let why = "must be empty when backup.job_id is set (the job defines it)";
    if !backup.source_path.is_empty() {
        violations.add("backup.source_path", why);
    }
    if backup.target.is_some() {
        violations.add("backup.target", why);
    }
    if backup.options.is_some() {
        violations.add("backup.options", why);
    }
    if !backup.worker_selector.is_empty() {
        violations.add("backup.worker_selector", why);
    }
    if !backup.command_sources.is_empty() {
        violations.add("backup.command_sources", why);
    }
    if !backup.pre_hook_command_ids.is_empty() {
        violations.add("backup.pre_hook_command_ids", why);
    }
    if !backup.post_hook_command_ids.is_empty() {
        violations.add("backup.post_hook_command_ids", why);
    }
    violations.finish()
}

/// The parsed inline fields of an ad-hoc backup, collecting every violation.
fn ad_hoc_spec(backup: pb::BackupSpec, violations: &mut Violations) -> Option<BackupSpec> {
    let commands = violations.absorb(super::commands::backup_commands_from_proto(
        "backup.",
        &backup.command_sources,
        &backup.pre_hook_command_ids,
        &backup.post_hook_command_ids,
    ));
    // Command sources alone need no source tree.
    let source = if backup.source_path.is_empty() && !backup.command_sources.is_empty() {
        Ok(())
    } else {
        check_absolute_path("backup.source_path", &backup.source_path)
    };
    let source = violations.absorb(source);
    let target = violations.absorb(target_from_proto("backup.target", backup.target));
    let options = violations.absorb(options_from_proto("backup.options", backup.options));
    let selector = selector_from_proto("backup.worker_selector", backup.worker_selector);
    let selector = violations.absorb(selector);
    Some(BackupSpec {
        job_id: None,
        source_path: source.map(|()| backup.source_path)?,
        target: target?,
        options: options?,
        worker_selector: selector?,
        commands: commands?,
    })
}

/// A restore of one snapshot: a run, or a job's latest as of a time.
fn restore_request(restore: pb::RestoreSpec) -> DomainResult<RestoreRequest> {
    let snapshot_field = parse_optional_id("restore.snapshot_run_id", &restore.snapshot_run_id);
    let job_field = parse_optional_id("restore.job_id", &restore.job_id);
    let as_of_field = optional_time("restore.as_of_time", restore.as_of_time.as_ref());
    let mut violations = Violations::new();
    let snapshot_id = violations.absorb(snapshot_field).flatten();
    let job_id = violations.absorb(job_field).flatten();
    let as_of = violations.absorb(as_of_field).flatten();
    match (
        restore.snapshot_run_id.is_empty(),
        restore.job_id.is_empty(),
    ) {
        (false, false) => violations.add(
            "restore.snapshot_run_id",
            "set either snapshot_run_id or job_id (with as_of_time), not both",
        ),
        (true, true) => violations.add(
            "restore.snapshot_run_id",
            "a snapshot is required: set snapshot_run_id, or job_id with as_of_time",
        ),
        _ => {}
    }
    if restore.as_of_time.is_some() && restore.job_id.is_empty() {
        violations.add("restore.as_of_time", "applies to job_id only");
    }
    if restore.paths.len() > MAX_RESTORE_PATHS {
        violations.add(
            "restore.paths",
            format!("at most {MAX_RESTORE_PATHS} paths are allowed"),
        );
    }
    for (index, path) in restore.paths.iter().enumerate() {
        violations.absorb(check_relative_path(
            &format!("restore.paths[{index}]"),
            path,
        ));
    }
    if !restore.destination_path.is_empty() {
        violations.absorb(check_absolute_path(
            "restore.destination_path",
            &restore.destination_path,
        ));
    }
    let read_from = match restore.read_from {
        Some(target) => violations.absorb(target_from_proto("restore.read_from", Some(target))),
        None => None,
    };
    violations.absorb(check_bandwidth_limit(
        "restore.download_limit_bytes_per_second",
        restore.download_limit_bytes_per_second,
    ));
    violations.finish()?;
    let snapshot = match (snapshot_id, job_id) {
        (Some(id), _) => SnapshotChoice::Run(id),
        (None, Some(job_id)) => SnapshotChoice::JobAsOf { job_id, as_of },
        (None, None) => return Err(DomainError::Internal("unreported violation".into())),
    };
    Ok(RestoreRequest {
        snapshot,
        paths: restore.paths,
        destination_path: (!restore.destination_path.is_empty())
            .then_some(restore.destination_path),
        overwrite_newer: restore.overwrite_newer,
        read_from,
        download_limit_bytes_per_second: restore.download_limit_bytes_per_second,
    })
}

/// A copy of one snapshot into another repository.
fn copy_request(copy: pb::CopySpec) -> DomainResult<CopyRequest> {
    let mut violations = Violations::new();
    let snapshot_id = violations.absorb(parse_id("copy.snapshot_run_id", &copy.snapshot_run_id));
    let target = violations.absorb(target_from_proto("copy.target", copy.target));
    violations.finish()?;
    let (Some(snapshot_run_id), Some(target)) = (snapshot_id, target) else {
        return Err(DomainError::Internal("unreported violation".into()));
    };
    Ok(CopyRequest {
        snapshot_run_id,
        target,
    })
}

/// A verification of one snapshot.
fn verify_request(verify: &pb::VerifySpec) -> DomainResult<VerifyRequest> {
    let mut violations = Violations::new();
    let snapshot_id =
        violations.absorb(parse_id("verify.snapshot_run_id", &verify.snapshot_run_id));
    if !(0.0..=100.0).contains(&verify.read_data_percent) {
        violations.add("verify.read_data_percent", "must be between 0 and 100");
    }
    violations.finish()?;
    let snapshot_run_id =
        snapshot_id.ok_or_else(|| DomainError::Internal("unreported violation".into()))?;
    Ok(VerifyRequest {
        snapshot_run_id,
        read_data_percent: verify.read_data_percent,
    })
}

/// A garbage collection, with the defaults filled in.
fn gc_request(gc: pb::GarbageCollectionSpec) -> DomainResult<GcRequest> {
    let mut violations = Violations::new();
    let target = violations.absorb(target_from_proto("garbage_collection.target", gc.target));
    let grace_seconds = violations.absorb(gc_grace_seconds(gc.grace_period.as_ref()));
    let threshold = gc.repack_threshold_percent;
    if !(0.0..=100.0).contains(&threshold) {
        violations.add(
            "garbage_collection.repack_threshold_percent",
            "must be between 0 (the default, 50) and 100",
        );
    }
    violations.finish()?;
    let (Some(target), Some(grace_seconds)) = (target, grace_seconds) else {
        return Err(DomainError::Internal("unreported violation".into()));
    };
    Ok(GcRequest {
        target,
        grace_seconds,
        repack_threshold_percent: if threshold > 0.0 {
            threshold
        } else {
            DEFAULT_REPACK_THRESHOLD_PERCENT
        },
    })
}

/// The grace period of a collection request, in whole seconds.
fn gc_grace_seconds(value: Option<&prost_types::Duration>) -> DomainResult<i64> {
    const FIELD: &str = "garbage_collection.grace_period";
    match whole_seconds(FIELD, value)? {
        None => Ok(DEFAULT_GC_GRACE_SECONDS),
        Some(seconds) if seconds > MAX_GC_GRACE_SECONDS => {
            Err(DomainError::invalid(FIELD, "must be at most 30 days"))
        }
        Some(seconds) => Ok(seconds),
    }
}

/// Parses the page token of ListRunErrors and ListRunExclusions (the id of
/// the last row returned).
fn parse_error_token(token: &str) -> DomainResult<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(Some(id)),
        _ => Err(DomainError::invalid(
            "page_token",
            "not a token from a previous response",
        )),
    }
}

impl RunApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// A watch slot for the caller (admins need none), or
    /// `ResourceExhausted` when the caller's watches are at the limit.
    async fn watch_slot(&self, caller: &Caller) -> DomainResult<Option<WatchSlot>> {
        if caller.is_admin() {
            return Ok(None);
        }
        let limit = self
            .state
            .catalog
            .owner_limit(OwnerLimit::WatchStreams)
            .await?;
        self.watches.take(caller.user.id, limit).map(Some)
    }

    /// A run the caller may see; foreign runs are NOT_FOUND.
    async fn visible_run(&self, caller: &Caller, id: Uuid) -> DomainResult<Run> {
        let run = self.state.catalog.get_run(id).await?;
        if !caller.can_access(run.owner_id) {
            return Err(DomainError::not_found("run", id));
        }
        Ok(run)
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListRunsRequest,
    ) -> DomainResult<pb::ListRunsResponse> {
        let mut violations = Violations::new();
        let job_id = violations.absorb(parse_optional_id("job_id", &request.job_id));
        let state = violations.absorb(run_state_from_proto(request.state));
        let kind = violations.absorb(run_kind_from_proto(request.kind));
        let page = violations.absorb(Page::parse(request.page_size, &request.page_token));
        if request.tag_key.is_empty() && !request.tag_value.is_empty() {
            violations.add("tag_value", "needs tag_key");
        }
        violations.absorb(check_len("tag_key", &request.tag_key, 0, 256));
        violations.finish()?;
        let (Some(job_id), Some(state), Some(kind), Some(page)) = (job_id, state, kind, page)
        else {
            return Err(DomainError::Internal("unreported violation".into()));
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = RunFilter {
            job_id,
            state,
            kind,
            tag_key: non_empty(request.tag_key),
            tag_value: non_empty(request.tag_value),
        };
        let (runs, next_page_token) = self
            .state
            .catalog
            .list_runs(caller.owner_scope(), &filter, page)
            .await?;
        Ok(pb::ListRunsResponse {
            runs: runs_to_proto(&self.state.catalog, self.state.lease_settings, runs).await?,
            next_page_token,
        })
    }

    async fn list_errors(
        &self,
        caller: &Caller,
        request: pb::ListRunErrorsRequest,
    ) -> DomainResult<pb::ListRunErrorsResponse> {
        let run_id = parse_id("run_id", &request.run_id)?;
        let size = Page::parse(request.page_size, "")?.size;
        let after = parse_error_token(&request.page_token)?;
        self.visible_run(caller, run_id).await?;
        let (errors, next_page_token) = self
            .state
            .catalog
            .list_run_errors(run_id, after, size)
            .await?;
        Ok(pb::ListRunErrorsResponse {
            errors: errors.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

impl RunApi {
    async fn list_exclusions(
        &self,
        caller: &Caller,
        request: pb::ListRunExclusionsRequest,
    ) -> DomainResult<pb::ListRunExclusionsResponse> {
        let run_id = parse_id("run_id", &request.run_id)?;
        let size = Page::parse(request.page_size, "")?.size;
        let after = parse_error_token(&request.page_token)?;
        self.visible_run(caller, run_id).await?;
        let (exclusions, next_page_token) = self
            .state
            .catalog
            .list_run_exclusions(run_id, after, size)
            .await?;
        Ok(pb::ListRunExclusionsResponse {
            exclusions: exclusions.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

type WatchItem = Result<pb::WatchRunResponse, tonic::Status>;

/// Feeds a watch: the current run first, then every change, until the run is
/// final or the client goes away.
async fn watch_loop(
    catalog: Catalog,
    base: LeaseSettings,
    mut run: Run,
    mut events: broadcast::Receiver<Uuid>,
    sender: mpsc::Sender<WatchItem>,
) {
    let id = run.id;
    let mut fallback = tokio::time::interval(WATCH_FALLBACK);
    fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    fallback.tick().await;
    let mut last_sent: Option<pb::Run> = None;
    loop {
        let message = match run_to_proto(&catalog, base, run.clone()).await {
            Ok(message) => message,
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        if last_sent.as_ref() != Some(&message) {
            let update = pb::WatchRunResponse {
                run: Some(message.clone()),
            };
            if sender.send(Ok(update)).await.is_err() {
                return;
            }
            last_sent = Some(message);
        }
        if run.state.is_final() {
            return;
        }
        let reread = tokio::select! {
            () = sender.closed() => return,
            event = events.recv() => match event {
                Ok(changed) => changed == id,
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = fallback.tick() => true,
        };
        if reread {
            match catalog.get_run(id).await {
                Ok(fresh) => run = fresh,
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl RunService for RunApi {
    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> RpcResult<pb::CreateRunResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let request_id = parse_optional_id("request_id", &request.request_id)?;
        let run_request = run_request(request.spec)?;
        let run = self
            .state
            .runs
            .create(&caller, run_request, request_id)
            .await?;
        let run = run_to_proto(&self.state.catalog, self.state.lease_settings, run).await?;
        respond(Ok(pb::CreateRunResponse { run: Some(run) }))
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> RpcResult<pb::GetRunResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let run = self.visible_run(&caller, id).await?;
        let run = run_to_proto(&self.state.catalog, self.state.lease_settings, run).await?;
        respond(Ok(pb::GetRunResponse { run: Some(run) }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> RpcResult<pb::ListRunsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> RpcResult<pb::CancelRunResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let before = self.visible_run(&caller, id).await?;
        let run = self
            .state
            .catalog
            .cancel_run(id, &caller.user.username)
            .await?;
        // Counted once: cancelling a run that already ended changes nothing.
        if !before.state.is_final() {
            crate::monitoring::run_ended(&run);
        }
        respond(Ok(pb::CancelRunResponse {
            run: Some(run.into()),
        }))
    }

    type WatchRunStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> RpcResult<Self::WatchRunStream> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        // Subscribe before the first read so no change slips in between.
        let events = self.state.catalog.subscribe_runs();
        let run = self.visible_run(&caller, id).await?;
        let slot = self.watch_slot(&caller).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let catalog = self.state.catalog.clone();
        let base = self.state.lease_settings;
        tokio::spawn(async move {
            // Held for as long as the stream lives.
            let _slot = slot;
            watch_loop(catalog, base, run, events, sender).await;
        });
        let stream: Self::WatchRunStream = Box::pin(ReceiverStream::new(receiver));
        Ok(tonic::Response::new(stream))
    }

    async fn list_run_errors(
        &self,
        request: Request<pb::ListRunErrorsRequest>,
    ) -> RpcResult<pb::ListRunErrorsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list_errors(&caller, request.into_inner()).await)
    }

    async fn list_run_exclusions(
        &self,
        request: Request<pb::ListRunExclusionsRequest>,
    ) -> RpcResult<pb::ListRunExclusionsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list_exclusions(&caller, request.into_inner()).await)
    }
}
