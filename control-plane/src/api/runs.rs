//! RunService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::run_service_server::RunService;
use futures::Stream;
use std::pin::Pin;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.RunService`.
#[derive(Clone, Debug)]
pub struct RunApi {
    #[allow(dead_code)]
    state: AppState,
}

impl RunApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        RunApi { state }
    }
}

#[tonic::async_trait]
impl RunService for RunApi {
    async fn create_run(
        &self,
        _request: Request<pb::CreateRunRequest>,
    ) -> RpcResult<pb::CreateRunResponse> {
        unimplemented("RunService.CreateRun")
    }

    async fn get_run(&self, _request: Request<pb::GetRunRequest>) -> RpcResult<pb::GetRunResponse> {
        unimplemented("RunService.GetRun")
    }

    async fn list_runs(
        &self,
        _request: Request<pb::ListRunsRequest>,
    ) -> RpcResult<pb::ListRunsResponse> {
        unimplemented("RunService.ListRuns")
    }

    async fn cancel_run(
        &self,
        _request: Request<pb::CancelRunRequest>,
    ) -> RpcResult<pb::CancelRunResponse> {
        unimplemented("RunService.CancelRun")
    }

    type WatchRunStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchRunResponse, tonic::Status>> + Send>>;

    async fn watch_run(
        &self,
        _request: Request<pb::WatchRunRequest>,
    ) -> RpcResult<Self::WatchRunStream> {
        unimplemented("RunService.WatchRun")
    }

    async fn list_run_errors(
        &self,
        _request: Request<pb::ListRunErrorsRequest>,
    ) -> RpcResult<pb::ListRunErrorsResponse> {
        unimplemented("RunService.ListRunErrors")
    }
}
