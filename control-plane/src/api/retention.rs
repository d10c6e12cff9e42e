//! RetentionService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::retention_service_server::RetentionService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.RetentionService`.
#[derive(Clone, Debug)]
pub struct RetentionApi {
    #[allow(dead_code)]
    state: AppState,
}

impl RetentionApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        RetentionApi { state }
    }
}

#[tonic::async_trait]
impl RetentionService for RetentionApi {
    async fn create_retention_policy(
        &self,
        _request: Request<pb::CreateRetentionPolicyRequest>,
    ) -> RpcResult<pb::CreateRetentionPolicyResponse> {
        unimplemented("RetentionService.CreateRetentionPolicy")
    }

    async fn get_retention_policy(
        &self,
        _request: Request<pb::GetRetentionPolicyRequest>,
    ) -> RpcResult<pb::GetRetentionPolicyResponse> {
        unimplemented("RetentionService.GetRetentionPolicy")
    }

    async fn list_retention_policies(
        &self,
        _request: Request<pb::ListRetentionPoliciesRequest>,
    ) -> RpcResult<pb::ListRetentionPoliciesResponse> {
        unimplemented("RetentionService.ListRetentionPolicies")
    }

    async fn update_retention_policy(
        &self,
        _request: Request<pb::UpdateRetentionPolicyRequest>,
    ) -> RpcResult<pb::UpdateRetentionPolicyResponse> {
        unimplemented("RetentionService.UpdateRetentionPolicy")
    }

    async fn delete_retention_policy(
        &self,
        _request: Request<pb::DeleteRetentionPolicyRequest>,
    ) -> RpcResult<pb::DeleteRetentionPolicyResponse> {
        unimplemented("RetentionService.DeleteRetentionPolicy")
    }

    async fn create_object_retention(
        &self,
        _request: Request<pb::CreateObjectRetentionRequest>,
    ) -> RpcResult<pb::CreateObjectRetentionResponse> {
        unimplemented("RetentionService.CreateObjectRetention")
    }

    async fn get_object_retention(
        &self,
        _request: Request<pb::GetObjectRetentionRequest>,
    ) -> RpcResult<pb::GetObjectRetentionResponse> {
        unimplemented("RetentionService.GetObjectRetention")
    }

    async fn list_object_retentions(
        &self,
        _request: Request<pb::ListObjectRetentionsRequest>,
    ) -> RpcResult<pb::ListObjectRetentionsResponse> {
        unimplemented("RetentionService.ListObjectRetentions")
    }

    async fn update_object_retention(
        &self,
        _request: Request<pb::UpdateObjectRetentionRequest>,
    ) -> RpcResult<pb::UpdateObjectRetentionResponse> {
        unimplemented("RetentionService.UpdateObjectRetention")
    }

    async fn delete_object_retention(
        &self,
        _request: Request<pb::DeleteObjectRetentionRequest>,
    ) -> RpcResult<pb::DeleteObjectRetentionResponse> {
        unimplemented("RetentionService.DeleteObjectRetention")
    }

    async fn plan_retention(
        &self,
        _request: Request<pb::PlanRetentionRequest>,
    ) -> RpcResult<pb::PlanRetentionResponse> {
        unimplemented("RetentionService.PlanRetention")
    }

    async fn apply_retention(
        &self,
        _request: Request<pb::ApplyRetentionRequest>,
    ) -> RpcResult<pb::ApplyRetentionResponse> {
        unimplemented("RetentionService.ApplyRetention")
    }
}
