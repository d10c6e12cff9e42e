//! RetentionService: retention policies, object retentions and retention
//! plans and their application. Ownership works as for buckets.

use coffer_proto::v1 as pb;
use coffer_proto::v1::retention_service_server::RetentionService;
use tonic::Request;
use uuid::Uuid;

use super::convert::{
    optional_time, optional_timestamp, required, seconds, timestamp, whole_seconds,
};
use super::{mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, FieldViolation, Violations};
use crate::model::retention::plan::{
    PolicySource, RetentionPlan, RetentionScope, SnapshotDecision,
};
use crate::model::retention::{
    HoldSpec, KeepRules, ObjectRetention, PolicySpec, RetainedKind, RetainedResource,
    RetentionPolicy,
};
use crate::model::{parse_id, parse_optional_id};
use crate::state::AppState;

/// Fields UpdateRetentionPolicy accepts in its mask.
const POLICY_UPDATABLE: &[&str] = &[
    "name",
    "description",
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
    "keep_tags",
    "time_zone",
];

/// Fields UpdateObjectRetention accepts in its mask.
const RETENTION_UPDATABLE: &[&str] = &["policy_id", "retain_until_time", "legal_hold"];

/// Handler of `coffer.v1.RetentionService`.
#[derive(Clone, Debug)]
pub struct RetentionApi {
    state: AppState,
}

impl RetentionApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        RetentionApi { state }
    }
}

impl From<RetentionPolicy> for pb::RetentionPolicy {
    fn from(policy: RetentionPolicy) -> Self {
        let spec = policy.spec;
        let rules = spec.rules;
        pb::RetentionPolicy {
            id: policy.id.to_string(),
            owner_id: spec.owner_id.to_string(),
            name: spec.name,
            description: spec.description,
            keep_last: rules.keep_last,
            keep_hourly: rules.keep_hourly,
            keep_daily: rules.keep_daily,
            keep_weekly: rules.keep_weekly,
            keep_monthly: rules.keep_monthly,
            keep_yearly: rules.keep_yearly,
            keep_within: (rules.keep_within_seconds > 0)
                .then(|| seconds(rules.keep_within_seconds)),
            keep_tags: rules.keep_tags,
            time_zone: rules.time_zone,
            create_time: Some(timestamp(policy.create_time)),
            update_time: Some(timestamp(policy.update_time)),
        }
    }
}

impl From<ObjectRetention> for pb::ObjectRetention {
    fn from(retention: ObjectRetention) -> Self {
        pb::ObjectRetention {
            id: retention.id.to_string(),
            resource: Some(pb::ResourceRef {
                kind: match retention.resource.kind {
                    RetainedKind::Object => pb::ResourceKind::Object,
                    RetainedKind::ObjectVersion => pb::ResourceKind::ObjectVersion,
                } as i32,
                id: retention.resource.id.to_string(),
            }),
            policy_id: retention
                .policy_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            retain_until_time: optional_timestamp(retention.retain_until_time),
            legal_hold: retention.legal_hold,
            owner_id: retention.owner_id.to_string(),
            create_time: Some(timestamp(retention.create_time)),
            update_time: Some(timestamp(retention.update_time)),
        }
    }
}

fn policy_source_to_proto(source: Option<PolicySource>) -> pb::RetentionPolicySource {
    match source {
        None => pb::RetentionPolicySource::None,
        Some(PolicySource::Job) => pb::RetentionPolicySource::Job,
        Some(PolicySource::Bucket) => pb::RetentionPolicySource::Bucket,
        Some(PolicySource::Default) => pb::RetentionPolicySource::Default,
    }
}

impl From<SnapshotDecision> for pb::RetentionDecision {
    fn from(decision: SnapshotDecision) -> Self {
        pb::RetentionDecision {
            run_id: decision.run_id.to_string(),
            snapshot_time: Some(timestamp(decision.time)),
            keep: decision.keep(),
            reasons: decision
                .reasons
                .iter()
                .map(|reason| reason.as_str().to_string())
                .collect(),
            job_id: decision.job_id.map(|id| id.to_string()).unwrap_or_default(),
            policy_id: decision
                .policy
                .map(|(id, _)| id.to_string())
                .unwrap_or_default(),
            policy_source: policy_source_to_proto(decision.policy.map(|(_, source)| source)) as i32,
            locked_until: decision.locked_until.map(timestamp),
        }
    }
}

impl From<RetentionPlan> for pb::PlanRetentionResponse {
    fn from(plan: RetentionPlan) -> Self {
        let kept = plan.kept();
        let removed = plan.decisions.len() - kept;
        pb::PlanRetentionResponse {
            plan_time: Some(timestamp(plan.now)),
            keep_count: i32::try_from(kept).unwrap_or(i32::MAX),
            remove_count: i32::try_from(removed).unwrap_or(i32::MAX),
            decisions: plan.decisions.into_iter().map(Into::into).collect(),
        }
    }
}

/// Parses what a PlanRetention (or ApplyRetention) request covers: exactly
/// one of `job_id` and `bucket_id`.
pub fn retention_scope(job_id: &str, bucket_id: &str) -> DomainResult<RetentionScope> {
    let both_fields = |description: &str| {
        DomainError::InvalidArgument(
            ["job_id", "bucket_id"]
                .into_iter()
                .map(|field| FieldViolation {
                    field: field.to_string(),
                    description: description.to_string(),
                })
                .collect(),
        )
    };
    match (job_id.is_empty(), bucket_id.is_empty()) {
        (false, true) => Ok(RetentionScope::Job(parse_id("job_id", job_id)?)),
        (true, false) => Ok(RetentionScope::Bucket(parse_id("bucket_id", bucket_id)?)),
        (true, true) => Err(both_fields("set job_id or bucket_id")),
        (false, false) => Err(both_fields("set only one of job_id and bucket_id")),
    }
}

/// Converts `keep_within` to whole seconds (unset is zero).
fn keep_within_seconds(field: &str, value: Option<&prost_types::Duration>) -> DomainResult<i64> {
    Ok(whole_seconds(field, value)?.unwrap_or(0))
}

/// The keep rules of a proto policy, with `keep_within` already converted.
fn rules_from(policy: &pb::RetentionPolicy, keep_within_seconds: i64) -> KeepRules {
    KeepRules {
        keep_last: policy.keep_last,
        keep_hourly: policy.keep_hourly,
        keep_daily: policy.keep_daily,
        keep_weekly: policy.keep_weekly,
        keep_monthly: policy.keep_monthly,
        keep_yearly: policy.keep_yearly,
        keep_within_seconds,
        keep_tags: policy.keep_tags.clone(),
        time_zone: policy.time_zone.clone(),
    }
}

/// Applies the masked fields of `policy` to `spec`.
fn apply_policy_mask(
    spec: &mut PolicySpec,
    policy: &pb::RetentionPolicy,
    paths: &[String],
) -> DomainResult<()> {
    let rules = &mut spec.rules;
    for path in paths {
        match path.as_str() {
            "name" => spec.name.clone_from(&policy.name),
            "description" => spec.description.clone_from(&policy.description),
            "keep_last" => rules.keep_last = policy.keep_last,
            "keep_hourly" => rules.keep_hourly = policy.keep_hourly,
            "keep_daily" => rules.keep_daily = policy.keep_daily,
            "keep_weekly" => rules.keep_weekly = policy.keep_weekly,
            "keep_monthly" => rules.keep_monthly = policy.keep_monthly,
            "keep_yearly" => rules.keep_yearly = policy.keep_yearly,
            "keep_within" => {
                rules.keep_within_seconds = keep_within_seconds(
                    "retention_policy.keep_within",
                    policy.keep_within.as_ref(),
                )?;
            }
            "keep_tags" => rules.keep_tags.clone_from(&policy.keep_tags),
            "time_zone" => rules.time_zone.clone_from(&policy.time_zone),
            _ => unreachable!("mask_paths admits only the paths above"),
        }
    }
    Ok(())
}

/// Parses a reference to an object or object version.
fn retained_resource(field: &str, resource: &pb::ResourceRef) -> DomainResult<RetainedResource> {
    let kind = match pb::ResourceKind::try_from(resource.kind) {
        Ok(pb::ResourceKind::Object) => RetainedKind::Object,
        Ok(pb::ResourceKind::ObjectVersion) => RetainedKind::ObjectVersion,
        _ => {
            return Err(DomainError::invalid(
                format!("{field}.kind"),
                "must be RESOURCE_KIND_OBJECT or RESOURCE_KIND_OBJECT_VERSION",
            ))
        }
    };
    let id = parse_id(&format!("{field}.id"), &resource.id)?;
    Ok(RetainedResource { kind, id })
}

/// Applies the masked fields of `retention` to `hold`.
fn apply_retention_mask(
    hold: &mut HoldSpec,
    retention: &pb::ObjectRetention,
    paths: &[String],
) -> DomainResult<()> {
    for path in paths {
        match path.as_str() {
            "policy_id" => {
                hold.policy_id =
                    parse_optional_id("object_retention.policy_id", &retention.policy_id)?;
            }
            "retain_until_time" => {
                hold.retain_until_time = optional_time(
                    "object_retention.retain_until_time",
                    retention.retain_until_time.as_ref(),
                )?;
            }
            "legal_hold" => hold.legal_hold = retention.legal_hold,
            _ => unreachable!("mask_paths admits only the paths above"),
        }
    }
    Ok(())
}

impl RetentionApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// Records a violation unless `policy` is unset or belongs to `owner_id`.
    async fn check_policy_owner(
        &self,
        violations: &mut Violations,
        field: &str,
        policy: Option<Uuid>,
        owner_id: Uuid,
    ) -> DomainResult<()> {
        if let Some(policy) = policy {
            if !self
                .state
                .catalog
                .retention_policy_owned_by(policy, owner_id)
                .await?
            {
                violations.add(
                    field,
                    format!("no retention policy {policy} belongs to the owner"),
                );
            }
        }
        Ok(())
    }

    async fn create_policy(
        &self,
        caller: &Caller,
        policy: pb::RetentionPolicy,
    ) -> DomainResult<RetentionPolicy> {
        let mut violations = Violations::new();
        let owner = violations
            .absorb(parse_optional_id(
                "retention_policy.owner_id",
                &policy.owner_id,
            ))
            .flatten();
        let keep_within = violations
            .absorb(keep_within_seconds(
                "retention_policy.keep_within",
                policy.keep_within.as_ref(),
            ))
            .unwrap_or(0);
        let spec = PolicySpec {
            owner_id: caller.user.id,
            rules: rules_from(&policy, keep_within),
            name: policy.name,
            description: policy.description,
        };
        violations.absorb(spec.validate("retention_policy."));
        violations.finish()?;
        let owner_id = caller.resolve_owner("retention_policy.owner_id", owner)?;
        if owner_id != caller.user.id {
            self.state
                .catalog
                .get_user(owner_id)
                .await
                .map_err(|_| DomainError::invalid("retention_policy.owner_id", "no such user"))?;
        }
        self.state
            .catalog
            .create_retention_policy(&PolicySpec { owner_id, ..spec })
            .await
    }

    async fn update_policy(
        &self,
        caller: &Caller,
        request: pb::UpdateRetentionPolicyRequest,
    ) -> DomainResult<RetentionPolicy> {
        let policy = required("retention_policy", request.retention_policy)?;
        let id = parse_id("retention_policy.id", &policy.id)?;
        let paths = mask_paths(request.update_mask, POLICY_UPDATABLE)?;
        let current = self
            .state
            .catalog
            .get_retention_policy(id, caller.owner_scope())
            .await?;
        let mut spec = current.spec.clone();
        apply_policy_mask(&mut spec, &policy, &paths)?;
        spec.validate("retention_policy.")?;
        self.state
            .catalog
            .update_retention_policy(id, current.update_time, &spec)
            .await
    }

    async fn list_policies(
        &self,
        caller: &Caller,
        request: pb::ListRetentionPoliciesRequest,
    ) -> DomainResult<pb::ListRetentionPoliciesResponse> {
        let requested = parse_optional_id("owner_id", &request.owner_id)?;
        let owner = caller.list_owner_filter(requested);
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (policies, next_page_token) = self
            .state
            .catalog
            .list_retention_policies(page, owner)
            .await?;
        Ok(pb::ListRetentionPoliciesResponse {
            retention_policies: policies.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    /// The owner of a retained resource the caller may access, else NOT_FOUND.
    async fn accessible_owner(
        &self,
        caller: &Caller,
        resource: RetainedResource,
    ) -> DomainResult<Uuid> {
        match self.state.catalog.retained_resource_owner(resource).await? {
            Some(owner) if caller.can_access(owner) => Ok(owner),
            _ => Err(DomainError::not_found(resource.kind.as_str(), resource.id)),
        }
    }

    async fn create_retention(
        &self,
        caller: &Caller,
        retention: pb::ObjectRetention,
    ) -> DomainResult<ObjectRetention> {
        let mut violations = Violations::new();
        let resource = violations.absorb(retained_resource(
            "object_retention.resource",
            &required("object_retention.resource", retention.resource.clone())?,
        ));
        let mut hold = HoldSpec {
            policy_id: None,
            retain_until_time: None,
            legal_hold: false,
        };
        violations.absorb(apply_retention_mask(
            &mut hold,
            &retention,
            &RETENTION_UPDATABLE
                .iter()
                .map(|path| (*path).to_string())
                .collect::<Vec<_>>(),
        ));
        if !hold.holds_something() {
            violations.add(
                "object_retention",
                "holds nothing; set policy_id, retain_until_time or legal_hold",
            );
        }
        violations.finish()?;
        let resource = resource
            .ok_or_else(|| DomainError::Internal("resource rejected without a violation".into()))?;
        let owner = self.accessible_owner(caller, resource).await?;
        let mut violations = Violations::new();
        self.check_policy_owner(
            &mut violations,
            "object_retention.policy_id",
            hold.policy_id,
            owner,
        )
        .await?;
        violations.finish()?;
        self.state
            .catalog
            .create_object_retention(owner, resource, &hold)
            .await
    }

    async fn update_retention(
        &self,
        caller: &Caller,
        request: pb::UpdateObjectRetentionRequest,
    ) -> DomainResult<ObjectRetention> {
        let retention = required("object_retention", request.object_retention)?;
        let id = parse_id("object_retention.id", &retention.id)?;
        let paths = mask_paths(request.update_mask, RETENTION_UPDATABLE)?;
        let current = self
            .state
            .catalog
            .get_object_retention(id, caller.owner_scope())
            .await?;
        let mut hold = current.hold();
        apply_retention_mask(&mut hold, &retention, &paths)?;
        let mut violations = Violations::new();
        self.check_policy_owner(
            &mut violations,
            "object_retention.policy_id",
            hold.policy_id,
            current.owner_id,
        )
        .await?;
        violations.finish()?;
        let now = self.state.catalog.now().await?;
        current.check_retain_until_change(hold.retain_until_time, now)?;
        self.state
            .catalog
            .update_object_retention(id, current.update_time, &hold)
            .await
    }

    async fn delete_retention(&self, caller: &Caller, id: Uuid) -> DomainResult<()> {
        let current = self
            .state
            .catalog
            .get_object_retention(id, caller.owner_scope())
            .await?;
        let now = self.state.catalog.now().await?;
        if current.is_active(now) {
            return Err(DomainError::FailedPrecondition(format!(
                "object retention {id} still holds its resource (legal hold or retain-until \
                 date in the future)"
            )));
        }
        self.state
            .catalog
            .delete_object_retention(id, current.update_time)
            .await
    }

    async fn plan(
        &self,
        caller: &Caller,
        request: pb::PlanRetentionRequest,
    ) -> DomainResult<pb::PlanRetentionResponse> {
        let scope = retention_scope(&request.job_id, &request.bucket_id)?;
        self.state.runs.check_retention_scope(caller, scope).await?;
        let now = self.state.catalog.now().await?;
        let plan = self.state.catalog.plan_retention(scope, now).await?;
        Ok(plan.into())
    }

    /// Queues a retention run removing exactly what a plan made now lists.
    async fn apply(
        &self,
        caller: &Caller,
        request: pb::ApplyRetentionRequest,
    ) -> DomainResult<pb::ApplyRetentionResponse> {
        let scope = retention_scope(&request.job_id, &request.bucket_id)?;
        let run = self.state.runs.apply_retention(caller, scope).await?;
        Ok(pb::ApplyRetentionResponse {
            run_id: run.id.to_string(),
        })
    }

    async fn list_retentions(
        &self,
        caller: &Caller,
        request: pb::ListObjectRetentionsRequest,
    ) -> DomainResult<pb::ListObjectRetentionsResponse> {
        let resource = match &request.resource {
            Some(r) if r.kind != 0 || !r.id.is_empty() => Some(retained_resource("resource", r)?),
            _ => None,
        };
        let policy = parse_optional_id("policy_id", &request.policy_id)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (retentions, next_page_token) = self
            .state
            .catalog
            .list_object_retentions(page, caller.owner_scope(), resource, policy)
            .await?;
        Ok(pb::ListObjectRetentionsResponse {
            object_retentions: retentions.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn create_retention_policy(
        &self,
        request: Request<pb::CreateRetentionPolicyRequest>,
    ) -> RpcResult<pb::CreateRetentionPolicyResponse> {
        let caller = self.caller(&request).await?;
        let policy = required("retention_policy", request.into_inner().retention_policy)?;
        let created = self.create_policy(&caller, policy).await?;
        respond(Ok(pb::CreateRetentionPolicyResponse {
            retention_policy: Some(created.into()),
        }))
    }

    async fn get_retention_policy(
        &self,
        request: Request<pb::GetRetentionPolicyRequest>,
    ) -> RpcResult<pb::GetRetentionPolicyResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let policy = self
            .state
            .catalog
            .get_retention_policy(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetRetentionPolicyResponse {
            retention_policy: Some(policy.into()),
        }))
    }

    async fn list_retention_policies(
        &self,
        request: Request<pb::ListRetentionPoliciesRequest>,
    ) -> RpcResult<pb::ListRetentionPoliciesResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list_policies(&caller, request.into_inner()).await)
    }

    async fn update_retention_policy(
        &self,
        request: Request<pb::UpdateRetentionPolicyRequest>,
    ) -> RpcResult<pb::UpdateRetentionPolicyResponse> {
        let caller = self.caller(&request).await?;
        let updated = self.update_policy(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateRetentionPolicyResponse {
            retention_policy: Some(updated.into()),
        }))
    }

    async fn delete_retention_policy(
        &self,
        request: Request<pb::DeleteRetentionPolicyRequest>,
    ) -> RpcResult<pb::DeleteRetentionPolicyResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_retention_policy(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::DeleteRetentionPolicyResponse {}))
    }

    async fn create_object_retention(
        &self,
        request: Request<pb::CreateObjectRetentionRequest>,
    ) -> RpcResult<pb::CreateObjectRetentionResponse> {
        let caller = self.caller(&request).await?;
        let retention = required("object_retention", request.into_inner().object_retention)?;
        let created = self.create_retention(&caller, retention).await?;
        respond(Ok(pb::CreateObjectRetentionResponse {
            object_retention: Some(created.into()),
        }))
    }

    async fn get_object_retention(
        &self,
        request: Request<pb::GetObjectRetentionRequest>,
    ) -> RpcResult<pb::GetObjectRetentionResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let retention = self
            .state
            .catalog
            .get_object_retention(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetObjectRetentionResponse {
            object_retention: Some(retention.into()),
        }))
    }

    async fn list_object_retentions(
        &self,
        request: Request<pb::ListObjectRetentionsRequest>,
    ) -> RpcResult<pb::ListObjectRetentionsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list_retentions(&caller, request.into_inner()).await)
    }

    async fn update_object_retention(
        &self,
        request: Request<pb::UpdateObjectRetentionRequest>,
    ) -> RpcResult<pb::UpdateObjectRetentionResponse> {
        let caller = self.caller(&request).await?;
        let updated = self.update_retention(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateObjectRetentionResponse {
            object_retention: Some(updated.into()),
        }))
    }

    async fn delete_object_retention(
        &self,
        request: Request<pb::DeleteObjectRetentionRequest>,
    ) -> RpcResult<pb::DeleteObjectRetentionResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.delete_retention(&caller, id).await?;
        respond(Ok(pb::DeleteObjectRetentionResponse {}))
    }

    async fn plan_retention(
        &self,
        request: Request<pb::PlanRetentionRequest>,
    ) -> RpcResult<pb::PlanRetentionResponse> {
        let caller = self.caller(&request).await?;
        respond(self.plan(&caller, request.into_inner()).await)
    }

    async fn apply_retention(
        &self,
        request: Request<pb::ApplyRetentionRequest>,
    ) -> RpcResult<pb::ApplyRetentionResponse> {
        let caller = self.caller(&request).await?;
        respond(self.apply(&caller, request.into_inner()).await)
    }
}
