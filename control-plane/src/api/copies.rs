//! CopyService: where a snapshot exists besides its own repository. Copies
//! are made by copy runs (RunService.CreateRun with `copy`).

use coffer_proto::v1 as pb;
use coffer_proto::v1::copy_service_server::CopyService;
use tonic::{Request, Response};

use super::convert::{target_to_proto, timestamp};
use super::RpcResult;
use crate::catalog::copies::SnapshotCopy;
use crate::error::DomainError;
use crate::model::parse_id;
use crate::state::AppState;

/// Handler of `coffer.v1.CopyService`.
#[derive(Clone, Debug)]
pub struct CopyApi {
    state: AppState,
}

impl CopyApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        CopyApi { state }
    }
}

fn copy_to_proto(copy: SnapshotCopy) -> pb::SnapshotCopy {
    pb::SnapshotCopy {
        id: copy.id.to_string(),
        snapshot_run_id: copy.snapshot_run_id.to_string(),
        target: Some(target_to_proto(&copy.target)),
        repository_id: copy.repository_id.to_string(),
        copy_run_id: copy.copy_run_id.to_string(),
        manifest_key: copy.manifest_key,
        create_time: Some(timestamp(copy.create_time)),
    }
}

#[tonic::async_trait]
impl CopyService for CopyApi {
    async fn list_snapshot_copies(
        &self,
        request: Request<pb::ListSnapshotCopiesRequest>,
    ) -> RpcResult<pb::ListSnapshotCopiesResponse> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        let id = parse_id("snapshot_run_id", &request.get_ref().snapshot_run_id)?;
        let not_found = || DomainError::not_found("run", id);
        let run = self
            .state
            .catalog
            .get_run(id)
            .await
            .map_err(|_| not_found())?;
        if !caller.can_access(run.owner_id) {
            return Err(not_found().into());
        }
        let copies = self.state.catalog.list_snapshot_copies(id).await?;
        Ok(Response::new(pb::ListSnapshotCopiesResponse {
            copies: copies.into_iter().map(copy_to_proto).collect(),
        }))
    }
}
