//! WorkerService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::worker_service_server::WorkerService;
use futures::Stream;
use std::pin::Pin;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.WorkerService`.
#[derive(Clone, Debug)]
pub struct WorkerApi {
    #[allow(dead_code)]
    state: AppState,
}

impl WorkerApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        WorkerApi { state }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type LeaseSessionStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseSessionResponse, tonic::Status>> + Send>>;

    async fn lease_session(
        &self,
        _request: Request<tonic::Streaming<pb::LeaseSessionRequest>>,
    ) -> RpcResult<Self::LeaseSessionStream> {
        unimplemented("WorkerService.LeaseSession")
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> RpcResult<pb::ListWorkersResponse> {
        unimplemented("WorkerService.ListWorkers")
    }
}
