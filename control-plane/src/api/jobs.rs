//! JobService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::job_service_server::JobService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.JobService`.
#[derive(Clone, Debug)]
pub struct JobApi {
    #[allow(dead_code)]
    state: AppState,
}

impl JobApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        JobApi { state }
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(
        &self,
        _request: Request<pb::CreateJobRequest>,
    ) -> RpcResult<pb::CreateJobResponse> {
        unimplemented("JobService.CreateJob")
    }

    async fn get_job(&self, _request: Request<pb::GetJobRequest>) -> RpcResult<pb::GetJobResponse> {
        unimplemented("JobService.GetJob")
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> RpcResult<pb::ListJobsResponse> {
        unimplemented("JobService.ListJobs")
    }

    async fn update_job(
        &self,
        _request: Request<pb::UpdateJobRequest>,
    ) -> RpcResult<pb::UpdateJobResponse> {
        unimplemented("JobService.UpdateJob")
    }

    async fn delete_job(
        &self,
        _request: Request<pb::DeleteJobRequest>,
    ) -> RpcResult<pb::DeleteJobResponse> {
        unimplemented("JobService.DeleteJob")
    }
}
