//! JobService: backup job definitions, owned per user.

use coffer_proto::v1 as pb;
use coffer_proto::v1::job_service_server::JobService;
use tonic::Request;
use uuid::Uuid;

use super::convert::{
    labels_to_proto, optional_id, optional_time, optional_timestamp, options_from_proto,
    options_to_proto, required, run_state_to_proto, selector_from_proto, target_from_proto,
    target_to_proto, timestamp,
};
use super::{commands, mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::job::{
    check_job_name, check_start_time, Job, JobDraft, JobFilter, JobRunSummary, MissedRunPolicy,
    OverlapPolicy, Schedule, MAX_DESCRIPTION_LEN,
};
use crate::model::limits::OwnerLimit;
use crate::model::run::{check_max_attempts, BackupSpec, RunSpec};
use crate::model::{check_absolute_path, check_len, parse_id, parse_optional_id};
use crate::runs::grants;
use crate::state::AppState;

/// Fields UpdateJob accepts in its mask; the owner comes last.
const UPDATABLE: &[&str] = &[
    "name",
    "description",
    "source_path",
    "target",
    "options",
    "schedule",
    "retention_policy_id",
    "worker_selector",
    "max_attempts",
    "command_sources",
    "pre_hook_command_ids",
    "post_hook_command_ids",
    "start_time",
    "owner_id",
];

/// Fields whose change re-checks the job against its owner's grants.
const GRANTED_FIELDS: &[&str] = &["source_path", "target", "worker_selector", "owner_id"];

/// Fields whose change re-checks the job's commands against their grants.
const COMMAND_FIELDS: &[&str] = &[
    "command_sources",
    "pre_hook_command_ids",
    "post_hook_command_ids",
    "owner_id",
];

/// Fields CreateJob reads: everything editable but the owner (resolved first).
const CREATABLE: &[&str] = UPDATABLE.split_at(UPDATABLE.len() - 1).0;

/// Handler of `coffer.v1.JobService`.
#[derive(Clone, Debug)]
pub struct JobApi {
    state: AppState,
}

impl JobApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        JobApi { state }
    }
}

impl From<JobRunSummary> for pb::JobRunSummary {
    fn from(summary: JobRunSummary) -> Self {
        pb::JobRunSummary {
            run_id: summary.run_id.to_string(),
            state: run_state_to_proto(summary.state).as_str_name().to_string(),
            error: summary.error,
            finish_time: optional_timestamp(summary.finish_time),
        }
    }
}

impl From<Job> for pb::Job {
    fn from(job: Job) -> Self {
        let draft = job.draft;
        pb::Job {
            id: job.id.to_string(),
            owner_id: draft.owner_id.to_string(),
            name: draft.name,
            description: draft.description,
            source_path: draft.source_path,
            target: Some(target_to_proto(&draft.target)),
            options: Some(options_to_proto(&draft.options)),
            schedule: Some(schedule_to_proto(draft.schedule)),
            retention_policy_id: optional_id(draft.retention_policy_id),
            worker_selector: labels_to_proto(&draft.worker_selector),
            max_attempts: draft.max_attempts,
            last_run: job.last_run.map(Into::into),
            next_run_time: optional_timestamp(job.next_run_time),
            create_time: Some(timestamp(job.create_time)),
            update_time: Some(timestamp(job.update_time)),
            pending_fire_time: optional_timestamp(job.pending_fire_time),
            command_sources: commands::sources_to_proto(&draft.commands),
            pre_hook_command_ids: commands::ids_to_proto(&draft.commands.pre_hooks),
            post_hook_command_ids: commands::ids_to_proto(&draft.commands.post_hooks),
            start_time: optional_timestamp(draft.start_time),
        }
    }
}

/// Converts a schedule to its proto, with the policies in effect spelled out
/// (never UNSPECIFIED).
fn schedule_to_proto(schedule: Schedule) -> pb::Schedule {
    let missed_run_policy = match schedule.missed_runs {
        MissedRunPolicy::RunOnce => pb::MissedRunPolicy::RunOnce,
        MissedRunPolicy::Skip => pb::MissedRunPolicy::Skip,
    };
    let overlap_policy = match schedule.overlap {
        OverlapPolicy::Skip => pb::OverlapPolicy::Skip,
        OverlapPolicy::Queue => pb::OverlapPolicy::Queue,
    };
    pb::Schedule {
        cron: schedule.cron,
        time_zone: schedule.time_zone,
        paused: schedule.paused,
        missed_run_policy: missed_run_policy as i32,
        overlap_policy: overlap_policy as i32,
    }
}

/// Stores a converted value in `slot`, or records why it is invalid.
fn set_parsed<T>(slot: &mut T, parsed: DomainResult<T>, violations: &mut Violations) {
    if let Some(value) = violations.absorb(parsed) {
        *slot = value;
    }
}

/// Stores `value` in `slot` when `check` passed, else records the violation.
pub(super) fn set_checked<T>(
    slot: &mut T,
    value: T,
    check: DomainResult<()>,
    violations: &mut Violations,
) {
    set_parsed(slot, check.map(|()| value), violations);
}

/// Copies one field of `job` into `draft`, recording any violation under
/// the field's name (`job.<path>`).
fn apply_field(draft: &mut JobDraft, job: &pb::Job, path: &str, v: &mut Violations) {
    let field = format!("job.{path}");
    let applied = match path {
        "name" => check_job_name(&field, &job.name).map(|()| draft.name = job.name.clone()),
        "description" => check_len(&field, &job.description, 0, MAX_DESCRIPTION_LEN)
            .map(|()| draft.description = job.description.clone()),
        // Empty when the job backs up only command sources (checked with them).
        "source_path" if job.source_path.is_empty() => {
            draft.source_path.clear();
            Ok(())
        }
        "source_path" => check_absolute_path(&field, &job.source_path)
            .map(|()| draft.source_path = job.source_path.clone()),
        "target" => target_from_proto(&field, job.target.clone()).map(|t| draft.target = t),
        "options" => options_from_proto(&field, job.options.clone()).map(|o| draft.options = o),
        "schedule" => schedule_from_proto(job.schedule.as_ref()).map(|s| draft.schedule = s),
        "retention_policy_id" => parse_optional_id(&field, &job.retention_policy_id)
            .map(|id| draft.retention_policy_id = id),
        "worker_selector" => selector_from_proto(&field, job.worker_selector.clone())
            .map(|selector| draft.worker_selector = selector),
        "max_attempts" => check_max_attempts(&field, job.max_attempts)
            .map(|()| draft.max_attempts = job.max_attempts),
        "command_sources" => {
            commands::backup_commands_from_proto("job.", &job.command_sources, &[], &[])
                .map(|c| draft.commands.sources = c.sources)
        }
        "pre_hook_command_ids" => {
            commands::backup_commands_from_proto("job.", &[], &job.pre_hook_command_ids, &[])
                .map(|c| draft.commands.pre_hooks = c.pre_hooks)
        }
        "post_hook_command_ids" => {
            commands::backup_commands_from_proto("job.", &[], &[], &job.post_hook_command_ids)
                .map(|c| draft.commands.post_hooks = c.post_hooks)
        }
        "start_time" => {
            optional_time(&field, job.start_time.as_ref()).map(|t| draft.start_time = t)
        }
        // The owner is resolved separately (it needs the caller).
        _ => Ok(()),
    };
    v.absorb(applied);
}

/// Converts and validates a schedule (unset means on demand only), reporting
/// every bad field at once.
fn schedule_from_proto(schedule: Option<&pb::Schedule>) -> DomainResult<Schedule> {
    let Some(proto) = schedule else {
        return Ok(Schedule::default());
    };
    let mut violations = Violations::new();
    let missed_runs = violations.absorb(missed_run_policy_from_proto(proto.missed_run_policy));
    let overlap = violations.absorb(overlap_policy_from_proto(proto.overlap_policy));
    let schedule = Schedule {
        cron: proto.cron.trim().to_string(),
        time_zone: proto.time_zone.clone(),
        paused: proto.paused,
        missed_runs: missed_runs.unwrap_or_default(),
        overlap: overlap.unwrap_or_default(),
    };
    violations.absorb(schedule.validate("job.schedule"));
    violations.finish()?;
    Ok(schedule)
}

fn missed_run_policy_from_proto(value: i32) -> DomainResult<MissedRunPolicy> {
    match pb::MissedRunPolicy::try_from(value) {
        Ok(pb::MissedRunPolicy::Unspecified | pb::MissedRunPolicy::RunOnce) => {
            Ok(MissedRunPolicy::RunOnce)
        }
        Ok(pb::MissedRunPolicy::Skip) => Ok(MissedRunPolicy::Skip),
        Err(_) => Err(DomainError::invalid(
            "job.schedule.missed_run_policy",
            format!(
                "unknown policy {value}; use MISSED_RUN_POLICY_RUN_ONCE or MISSED_RUN_POLICY_SKIP"
            ),
        )),
    }
}

fn overlap_policy_from_proto(value: i32) -> DomainResult<OverlapPolicy> {
    match pb::OverlapPolicy::try_from(value) {
        Ok(pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip) => Ok(OverlapPolicy::Skip),
        Ok(pb::OverlapPolicy::Queue) => Ok(OverlapPolicy::Queue),
        Err(_) => Err(DomainError::invalid(
            "job.schedule.overlap_policy",
            format!("unknown policy {value}; use OVERLAP_POLICY_SKIP or OVERLAP_POLICY_QUEUE"),
        )),
    }
}

impl JobApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// A job the caller may see; foreign jobs are NOT_FOUND.
    async fn visible_job(&self, caller: &Caller, id: Uuid) -> DomainResult<Job> {
        let job = self.state.catalog.get_job(id).await?;
        if !caller.can_access(job.draft.owner_id) {
            return Err(DomainError::not_found("job", id));
        }
        Ok(job)
    }

    /// The owner a caller asks for, which must be an existing user.
    async fn resolve_owner(&self, caller: &Caller, requested: &str) -> DomainResult<Uuid> {
        let requested = parse_optional_id("job.owner_id", requested)?;
        let owner = caller.resolve_owner("job.owner_id", requested)?;
        if owner != caller.user.id {
            match self.state.catalog.get_user(owner).await {
                Err(DomainError::NotFound(_)) => {
                    return Err(DomainError::invalid("job.owner_id", "no such user"))
                }
                other => {
                    other?;
                }
            }
        }
        Ok(owner)
    }

    /// Fills `draft` from the given paths of `job` and checks everything, the
    /// references included, reporting all violations at once.
    async fn build_draft(
        &self,
        mut draft: JobDraft,
        job: &pb::Job,
        paths: &[&str],
    ) -> DomainResult<JobDraft> {
        let mut violations = Violations::new();
        for path in paths {
            apply_field(&mut draft, job, path, &mut violations);
        }
        self.state
            .catalog
            .check_job_references(
                "job.",
                draft.owner_id,
                Some(&draft.target),
                draft.retention_policy_id,
                &mut violations,
            )
            .await?;
        violations.absorb(draft.check_start_time_combination());
        if draft.source_path.is_empty() && draft.commands.sources.is_empty() {
            violations.add(
                "job.source_path",
                "is required unless the job has command_sources",
            );
        }
        violations.finish()?;
        // Before the grants: a refused job claims no repository.
        if paths.iter().any(|p| COMMAND_FIELDS.contains(p)) {
            crate::runs::commands::check(
                &self.state.catalog,
                "job.",
                draft.owner_id,
                &draft.commands,
            )
            .await?;
        }
        if paths.iter().any(|p| GRANTED_FIELDS.contains(p)) {
            self.check_grants(&mut draft).await?;
        }
        Ok(draft)
    }

    /// The job's source and repository must be beneath grants of its owner,
    /// and its repository must be the owner's (the first job or backup to
    /// use a location claims it). The job's worker selector gains the labels
    /// of the grants used, so scheduled runs, which the scheduler builds from
    /// the job, go only to workers the grants cover. Checked when these
    /// fields change; a job whose grant is deleted later stays, but its runs
    /// are refused.
    async fn check_grants(&self, draft: &mut JobDraft) -> DomainResult<()> {
        let mut spec = RunSpec::Backup(BackupSpec {
            job_id: None,
            source_path: draft.source_path.clone(),
            target: draft.target.clone(),
            options: draft.options.clone(),
            worker_selector: draft.worker_selector.clone(),
            commands: Default::default(),
        });
        grants::admit(&self.state.catalog, "job.", draft.owner_id, &mut spec).await?;
        if let Some(selector) = spec.worker_selector_mut() {
            draft.worker_selector = std::mem::take(selector);
        }
        let repository = crate::runs::repositories::ensure_repository(
            &self.state.catalog,
            &self.state.secrets,
            &draft.target,
            draft.owner_id,
        )
        .await?;
        if repository.owner_id != Some(draft.owner_id) {
            return Err(DomainError::PermissionDenied(
                "job.target: the repository there belongs to another user".to_string(),
            ));
        }
        Ok(())
    }

    /// A start time being set (new, or changed from `existing`) must not lie
    /// in the past by the catalog's clock; an unchanged one is not checked
    /// again, so editing a job whose one-shot fired keeps working.
    async fn check_new_start_time(
        &self,
        draft: &JobDraft,
        existing: Option<chrono::DateTime<chrono::Utc>>,
    ) -> DomainResult<()> {
        let Some(start) = draft.start_time.filter(|start| Some(*start) != existing) else {
            return Ok(());
        };
        let now = self.state.catalog.now().await?;
        check_start_time("job.start_time", start, now)
    }

    async fn create(&self, caller: &Caller, job: pb::Job) -> DomainResult<Job> {
        let owner = self.resolve_owner(caller, &job.owner_id).await?;
        let draft = self
            .build_draft(JobDraft::empty(owner), &job, CREATABLE)
            .await?;
        self.check_new_start_time(&draft, None).await?;
        self.state
            .catalog
            .check_owner_limit(OwnerLimit::Jobs, owner)
            .await?;
        self.state.catalog.create_job(&draft).await
    }

    async fn update(&self, caller: &Caller, request: pb::UpdateJobRequest) -> DomainResult<Job> {
        let job = required("job", request.job)?;
        let id = parse_id("job.id", &job.id)?;
        let paths = mask_paths(request.update_mask, UPDATABLE)?;
        let existing = self.visible_job(caller, id).await?;
        let existing_start = existing.draft.start_time;
        let mut draft = existing.draft;
        if paths.iter().any(|p| p == "owner_id") {
            caller.require_admin("changing the owner of a job")?;
            draft.owner_id = self.resolve_owner(caller, &job.owner_id).await?;
        }
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let draft = self.build_draft(draft, &job, &paths).await?;
        self.check_new_start_time(&draft, existing_start).await?;
        self.state.catalog.update_job(id, &draft).await
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListJobsRequest,
    ) -> DomainResult<pb::ListJobsResponse> {
        let requested = parse_optional_id("owner_id", &request.owner_id)?;
        let owner_id = caller.list_owner_filter(requested);
        let filter = JobFilter {
            owner_id,
            bucket_id: parse_optional_id("bucket_id", &request.bucket_id)?,
            name_prefix: request.name_prefix,
        };
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (jobs, next_page_token) = self.state.catalog.list_jobs(&filter, page).await?;
        Ok(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> RpcResult<pb::CreateJobResponse> {
        let caller = self.caller(&request).await?;
        let job = required("job", request.into_inner().job)?;
        let job = self.create(&caller, job).await?;
        respond(Ok(pb::CreateJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> RpcResult<pb::GetJobResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let job = self.visible_job(&caller, id).await?;
        respond(Ok(pb::GetJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> RpcResult<pb::ListJobsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn update_job(
        &self,
        request: Request<pb::UpdateJobRequest>,
    ) -> RpcResult<pb::UpdateJobResponse> {
        let caller = self.caller(&request).await?;
        let job = self.update(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> RpcResult<pb::DeleteJobResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.visible_job(&caller, id).await?;
        self.state.catalog.delete_job(id).await?;
        respond(Ok(pb::DeleteJobResponse {}))
    }
}
