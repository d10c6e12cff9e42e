//! RunService: queueing, inspecting, cancelling and watching runs.

use std::pin::Pin;
use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::run_service_server::RunService;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use uuid::Uuid;

use super::jobs::{
    labels_to_proto, options_from_proto, options_to_proto, run_state_to_proto, selector_from_proto,
    target_from_proto, target_to_proto,
};
use super::{from_timestamp, optional_timestamp, respond, timestamp, AppState, RpcResult};
use crate::auth::Caller;
use crate::catalog::{Catalog, Page};
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::run::{
    BackupSpec, GcSpec, Labels, NewRun, RestoreSpec, Run, RunErrorEntry, RunFilter, RunKind,
    RunProgress, RunSpec, RunState, SnapshotSource, Target, VerifySpec,
};
use crate::model::{
    check_absolute_path, check_len, check_relative_path, parse_id, parse_optional_id,
};

/// How often a watch re-reads its run when no change was announced.
const WATCH_FALLBACK: Duration = Duration::from_secs(5);
/// Updates buffered per watch before the watcher waits for the client.
const WATCH_BUFFER: usize = 16;

/// Handler of `coffer.v1.RunService`.
#[derive(Clone, Debug)]
pub struct RunApi {
    state: AppState,
}

impl RunApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        RunApi { state }
    }
}

fn kind_to_proto(kind: RunKind) -> pb::RunKind {
    match kind {
        RunKind::Backup => pb::RunKind::Backup,
        RunKind::Restore => pb::RunKind::Restore,
        RunKind::Verify => pb::RunKind::Verify,
        RunKind::Retention => pb::RunKind::Retention,
        RunKind::GarbageCollection => pb::RunKind::GarbageCollection,
        RunKind::RebuildCatalog => pb::RunKind::RebuildCatalog,
    }
}

fn kind_from_proto(value: i32) -> DomainResult<Option<RunKind>> {
    match pb::RunKind::try_from(value) {
        Ok(pb::RunKind::Unspecified) => Ok(None),
        Ok(pb::RunKind::Backup) => Ok(Some(RunKind::Backup)),
        Ok(pb::RunKind::Restore) => Ok(Some(RunKind::Restore)),
        Ok(pb::RunKind::Verify) => Ok(Some(RunKind::Verify)),
        Ok(pb::RunKind::Retention) => Ok(Some(RunKind::Retention)),
        Ok(pb::RunKind::GarbageCollection) => Ok(Some(RunKind::GarbageCollection)),
        Ok(pb::RunKind::RebuildCatalog) => Ok(Some(RunKind::RebuildCatalog)),
        Err(_) => Err(DomainError::invalid("kind", "unknown run kind")),
    }
}

fn state_from_proto(value: i32) -> DomainResult<Option<RunState>> {
    match pb::RunState::try_from(value) {
        Ok(pb::RunState::Unspecified) => Ok(None),
        Ok(pb::RunState::Queued) => Ok(Some(RunState::Queued)),
        Ok(pb::RunState::Running) => Ok(Some(RunState::Running)),
        Ok(pb::RunState::Succeeded) => Ok(Some(RunState::Succeeded)),
        Ok(pb::RunState::Failed) => Ok(Some(RunState::Failed)),
        Ok(pb::RunState::Cancelled) => Ok(Some(RunState::Cancelled)),
        Err(_) => Err(DomainError::invalid("state", "unknown run state")),
    }
}

impl From<RunProgress> for pb::RunProgress {
    fn from(p: RunProgress) -> Self {
        pb::RunProgress {
            files_seen: p.files_seen,
            files_done: p.files_done,
            bytes_seen: p.bytes_seen,
            bytes_done: p.bytes_done,
            bytes_uploaded: p.bytes_uploaded,
            error_count: p.error_count,
            bytes_per_second: p.bytes_per_second,
            current_path: p.current_path,
        }
    }
}

impl From<pb::RunProgress> for RunProgress {
    fn from(p: pb::RunProgress) -> Self {
        RunProgress {
            files_seen: p.files_seen,
            files_done: p.files_done,
            bytes_seen: p.bytes_seen,
            bytes_done: p.bytes_done,
            bytes_uploaded: p.bytes_uploaded,
            error_count: p.error_count,
            bytes_per_second: p.bytes_per_second,
            current_path: p.current_path,
        }
    }
}

fn spec_to_proto(spec: &RunSpec) -> pb::run::Spec {
    match spec {
        RunSpec::Backup(backup) => pb::run::Spec::Backup(pb::BackupSpec {
            job_id: backup.job_id.map(|id| id.to_string()).unwrap_or_default(),
            source_path: backup.source_path.clone(),
            target: Some(target_to_proto(&backup.target)),
            options: Some(options_to_proto(&backup.options)),
            worker_selector: labels_to_proto(&backup.worker_selector),
        }),
        RunSpec::Restore(restore) => pb::run::Spec::Restore(pb::RestoreSpec {
            snapshot_run_id: restore.snapshot.run_id.to_string(),
            job_id: restore.job_id.map(|id| id.to_string()).unwrap_or_default(),
            as_of_time: optional_timestamp(restore.as_of_time),
            paths: restore.paths.clone(),
            destination_path: restore.destination_path.clone(),
            overwrite_newer: restore.overwrite_newer,
        }),
        RunSpec::Verify(verify) => pb::run::Spec::Verify(pb::VerifySpec {
            snapshot_run_id: verify.snapshot.run_id.to_string(),
            read_data_percent: verify.read_data_percent,
        }),
        RunSpec::RebuildCatalog(rebuild) => pb::run::Spec::RebuildCatalog(pb::RebuildCatalogSpec {
            bucket_id: rebuild
                .target
                .bucket_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            prefix: rebuild.target.path().to_string(),
        }),
        RunSpec::Retention(retention) => pb::run::Spec::Retention(pb::RetentionSpec {
            job_id: retention
                .job_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            bucket_id: retention
                .bucket_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            plan_time: Some(timestamp(retention.plan_time)),
            removed_run_ids: retention
                .removed
                .iter()
                .map(|snapshot| snapshot.run_id.to_string())
                .collect(),
        }),
        RunSpec::GarbageCollection(gc) => {
            pb::run::Spec::GarbageCollection(pb::GarbageCollectionSpec {
                target: Some(target_to_proto(&gc.target)),
                grace_period: Some(prost_types::Duration {
                    seconds: gc.grace_seconds,
                    nanos: 0,
                }),
                repack_threshold_percent: gc.repack_threshold_percent,
            })
        }
    }
}

/// Grace period of a collection that names none.
const DEFAULT_GC_GRACE_SECONDS: i64 = 3600;
/// Longest grace period a collection may ask for.
const MAX_GC_GRACE_SECONDS: i64 = 30 * 24 * 3600;
/// Repack threshold of a collection that names none.
const DEFAULT_REPACK_THRESHOLD_PERCENT: f64 = 50.0;

/// The grace period of a collection request, in whole seconds.
fn gc_grace_seconds(value: Option<&prost_types::Duration>) -> DomainResult<i64> {
    const FIELD: &str = "garbage_collection.grace_period";
    match value {
        None => Ok(DEFAULT_GC_GRACE_SECONDS),
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            Err(DomainError::invalid(FIELD, "must not be negative"))
        }
        Some(d) if d.nanos != 0 => Err(DomainError::invalid(
            FIELD,
            "must be a whole number of seconds",
        )),
        Some(d) if d.seconds > MAX_GC_GRACE_SECONDS => {
            Err(DomainError::invalid(FIELD, "must be at most 30 days"))
        }
        Some(d) => Ok(d.seconds),
    }
}

/// Most paths one restore may name.
const MAX_RESTORE_PATHS: usize = 1000;

impl From<Run> for pb::Run {
    fn from(run: Run) -> Self {
        pb::Run {
            id: run.id.to_string(),
            owner_id: run.owner_id.to_string(),
            kind: kind_to_proto(run.kind) as i32,
            job_id: run.job_id.map(|id| id.to_string()).unwrap_or_default(),
            state: run_state_to_proto(run.state) as i32,
            spec: Some(spec_to_proto(&run.spec)),
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            cancel_requested: run.cancel_requested,
            progress: Some(run.progress.into()),
            error: run.error,
            worker_id: run.worker_id.map(|id| id.to_string()).unwrap_or_default(),
            not_before_time: Some(timestamp(run.not_before_time)),
            create_time: Some(timestamp(run.create_time)),
            start_time: optional_timestamp(run.start_time),
            finish_time: optional_timestamp(run.finish_time),
            worker_selector: labels_to_proto(&run.worker_selector),
        }
    }
}

impl From<RunErrorEntry> for pb::RunError {
    fn from(entry: RunErrorEntry) -> Self {
        pb::RunError {
            path: entry.path,
            message: entry.message,
            attempt: entry.attempt,
            create_time: Some(timestamp(entry.create_time)),
        }
    }
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
    violations.finish()
}

/// The parsed inline fields of an ad-hoc backup, collecting every violation.
fn ad_hoc_spec(backup: pb::BackupSpec, violations: &mut Violations) -> Option<BackupSpec> {
    let source = check_absolute_path("backup.source_path", &backup.source_path);
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
    })
}

/// Parses the page token of ListRunErrors (the id of the last error returned).
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

    /// A run the caller may see; foreign runs are NOT_FOUND.
    async fn visible_run(&self, caller: &Caller, id: Uuid) -> DomainResult<Run> {
        let run = self.state.catalog.get_run(id).await?;
        if !caller.can_access(run.owner_id) {
            return Err(DomainError::not_found("run", id));
        }
        Ok(run)
    }

    /// A run of a job: the job's definition, copied.
    async fn job_run(
        &self,
        caller: &Caller,
        job_id: Uuid,
        backup: &pb::BackupSpec,
    ) -> DomainResult<NewRun> {
        check_inline_fields_empty(backup)?;
        let job = self.state.catalog.get_job(job_id).await?;
        if !caller.can_access(job.draft.owner_id) {
            return Err(DomainError::not_found("job", job_id));
        }
        let max_attempts = match job.draft.max_attempts {
            n if n > 0 => n,
            _ => self.state.catalog.run_default_max_attempts().await?,
        };
        Ok(NewRun {
            owner_id: job.draft.owner_id,
            job_id: Some(job.id),
            spec: RunSpec::Backup(BackupSpec {
                job_id: Some(job.id),
                source_path: job.draft.source_path,
                target: job.draft.target,
                options: job.draft.options,
                worker_selector: job.draft.worker_selector,
            }),
            max_attempts,
            request_id: None,
        })
    }

    /// An ad-hoc run owned by the caller, validated like a job.
    async fn ad_hoc_run(&self, caller: &Caller, backup: pb::BackupSpec) -> DomainResult<NewRun> {
        let mut violations = Violations::new();
        let spec = ad_hoc_spec(backup, &mut violations);
        if let Some(spec) = &spec {
            self.state
                .catalog
                .check_job_references(
                    "backup.",
                    caller.user.id,
                    Some(&spec.target),
                    None,
                    &mut violations,
                )
                .await?;
        }
        violations.finish()?;
        let spec = spec.ok_or_else(|| DomainError::Internal("unreported violation".into()))?;
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Backup(spec),
            max_attempts: self.state.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    async fn create(&self, caller: &Caller, request: pb::CreateRunRequest) -> DomainResult<Run> {
        use pb::create_run_request::Spec;
        let request_id = parse_optional_id("request_id", &request.request_id)?;
        let mut new = match request.spec {
            Some(Spec::Backup(backup)) => match parse_optional_id("backup.job_id", &backup.job_id)?
            {
                Some(job_id) => self.job_run(caller, job_id, &backup).await?,
                None => self.ad_hoc_run(caller, backup).await?,
            },
            Some(Spec::Restore(restore)) => self.restore_run(caller, restore).await?,
            Some(Spec::Verify(verify)) => self.verify_run(caller, verify).await?,
            Some(Spec::GarbageCollection(gc)) => self.gc_run(caller, gc).await?,
            None => {
                return Err(DomainError::invalid(
                    "spec",
                    "one of backup, restore, verify or garbage_collection is required",
                ))
            }
        };
        new.request_id = request_id;
        self.check_nfs(&new.spec).await?;
        let created = self.state.catalog.create_run(&new).await?;
        if created.created {
            self.state.notify_run(created.run.id);
        }
        Ok(created.run)
    }

    /// The snapshot `id` names, if the caller may read it and it is complete.
    async fn snapshot_source(
        &self,
        caller: &Caller,
        field: &str,
        id: Uuid,
    ) -> DomainResult<(SnapshotSource, Labels)> {
        let run = self
            .state
            .catalog
            .get_run(id)
            .await
            .map_err(|_| DomainError::not_found("run", id))?;
        if !caller.can_access(run.owner_id) {
            return Err(DomainError::not_found("run", id));
        }
        let RunSpec::Backup(backup) = run.spec else {
            return Err(DomainError::invalid(
                field,
                format!("run {id} is a {} run, not a backup", run.kind.as_str()),
            ));
        };
        if run.state != RunState::Succeeded || run.manifest_key.is_empty() {
            return Err(DomainError::FailedPrecondition(format!(
                "run {id} is {}; only a succeeded backup is a snapshot that can be read",
                run.state.as_str()
            )));
        }
        let source = SnapshotSource {
            run_id: run.id,
            job_id: run.job_id,
            source_path: backup.source_path,
            target: backup.target,
            manifest_key: run.manifest_key,
        };
        Ok((source, backup.worker_selector))
    }

    /// A restore, owned by the caller, of a snapshot the caller may read.
    async fn restore_run(&self, caller: &Caller, restore: pb::RestoreSpec) -> DomainResult<NewRun> {
        let mut violations = Violations::new();
        let snapshot_id = violations
            .absorb(parse_optional_id(
                "restore.snapshot_run_id",
                &restore.snapshot_run_id,
            ))
            .flatten();
        let job_id = violations
            .absorb(parse_optional_id("restore.job_id", &restore.job_id))
            .flatten();
        let as_of_time = match &restore.as_of_time {
            Some(time) => violations.absorb(from_timestamp("restore.as_of_time", time)),
            None => None,
        };
        match (
            &restore.snapshot_run_id.is_empty(),
            &restore.job_id.is_empty(),
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
        violations.finish()?;

        let snapshot_id = match (snapshot_id, job_id) {
            (Some(id), _) => id,
            (None, Some(job_id)) => {
                let job = self.state.catalog.get_job(job_id).await?;
                if !caller.can_access(job.draft.owner_id) {
                    return Err(DomainError::not_found("job", job_id));
                }
                let as_of = match as_of_time {
                    Some(time) => time,
                    None => self.state.catalog.now().await?,
                };
                self.state
                    .catalog
                    .job_snapshot_as_of(job_id, as_of)
                    .await?
                    .ok_or_else(|| {
                        DomainError::FailedPrecondition(format!(
                            "job {job_id} has no succeeded backup at or before {}",
                            as_of.to_rfc3339()
                        ))
                    })?
            }
            (None, None) => {
                return Err(DomainError::Internal("unreported violation".into()));
            }
        };
        let (snapshot, worker_selector) = self
            .snapshot_source(caller, "restore.snapshot_run_id", snapshot_id)
            .await?;
        let destination_path = if restore.destination_path.is_empty() {
            snapshot.source_path.clone()
        } else {
            restore.destination_path
        };
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Restore(RestoreSpec {
                snapshot,
                job_id,
                as_of_time,
                paths: restore.paths,
                destination_path,
                overwrite_newer: restore.overwrite_newer,
                worker_selector,
            }),
            max_attempts: self.state.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// A verification, owned by the caller, of a snapshot the caller may read.
    async fn verify_run(&self, caller: &Caller, verify: pb::VerifySpec) -> DomainResult<NewRun> {
        let mut violations = Violations::new();
        let snapshot_id =
            violations.absorb(parse_id("verify.snapshot_run_id", &verify.snapshot_run_id));
        if !(0.0..=100.0).contains(&verify.read_data_percent) {
            violations.add("verify.read_data_percent", "must be between 0 and 100");
        }
        violations.finish()?;
        let snapshot_id =
            snapshot_id.ok_or_else(|| DomainError::Internal("unreported violation".into()))?;
        let (snapshot, _) = self
            .snapshot_source(caller, "verify.snapshot_run_id", snapshot_id)
            .await?;
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::Verify(VerifySpec {
                snapshot,
                read_data_percent: verify.read_data_percent,
            }),
            max_attempts: self.state.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// A garbage collection of a repository the caller owns. Only one
    /// collection of a repository may be queued or running at a time.
    async fn gc_run(&self, caller: &Caller, gc: pb::GarbageCollectionSpec) -> DomainResult<NewRun> {
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
        if let Some(target) = &target {
            self.state
                .catalog
                .check_job_references(
                    "garbage_collection.",
                    caller.user.id,
                    Some(target),
                    None,
                    &mut violations,
                )
                .await?;
        }
        violations.finish()?;
        let (Some(target), Some(grace_seconds)) = (target, grace_seconds) else {
            return Err(DomainError::Internal("unreported violation".into()));
        };
        if let Some(running) = self.state.catalog.active_gc_run(&target).await? {
            return Err(DomainError::FailedPrecondition(format!(
                "garbage collection {running} of this repository is still queued or running"
            )));
        }
        Ok(NewRun {
            owner_id: caller.user.id,
            job_id: None,
            spec: RunSpec::GarbageCollection(GcSpec {
                target,
                grace_seconds,
                repack_threshold_percent: if threshold > 0.0 {
                    threshold
                } else {
                    DEFAULT_REPACK_THRESHOLD_PERCENT
                },
            }),
            max_attempts: self.state.catalog.run_default_max_attempts().await?,
            request_id: None,
        })
    }

    /// NFS targets need the `nfs_mount_path` configuration.
    async fn check_nfs(&self, spec: &RunSpec) -> DomainResult<()> {
        if matches!(spec.target(), Target::Nfs { .. })
            && !self.state.catalog.nfs_mount_configured().await?
        {
            return Err(DomainError::FailedPrecondition(
                "NFS targets need the configuration `nfs_mount_path`; create it with \
                 ConfigurationService.CreateConfiguration first"
                    .to_string(),
            ));
        }
        Ok(())
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListRunsRequest,
    ) -> DomainResult<pb::ListRunsResponse> {
        let mut violations = Violations::new();
        let job_id = violations.absorb(parse_optional_id("job_id", &request.job_id));
        let state = violations.absorb(state_from_proto(request.state));
        let kind = violations.absorb(kind_from_proto(request.kind));
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
            runs: runs.into_iter().map(Into::into).collect(),
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

type WatchItem = Result<pb::WatchRunResponse, tonic::Status>;

/// Feeds a watch: the current run first, then every change, until the run is
/// final or the client goes away.
async fn watch_loop(
    catalog: Catalog,
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
        let message = pb::Run::from(run.clone());
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
        let run = self.create(&caller, request.into_inner()).await?;
        respond(Ok(pb::CreateRunResponse {
            run: Some(run.into()),
        }))
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> RpcResult<pb::GetRunResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let run = self.visible_run(&caller, id).await?;
        respond(Ok(pb::GetRunResponse {
            run: Some(run.into()),
        }))
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
        self.visible_run(&caller, id).await?;
        let run = self
            .state
            .catalog
            .cancel_run(id, &caller.user.username)
            .await?;
        self.state.notify_run(id);
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
        let events = self.state.run_events.subscribe();
        let run = self.visible_run(&caller, id).await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_loop(self.state.catalog.clone(), run, events, sender));
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
}
