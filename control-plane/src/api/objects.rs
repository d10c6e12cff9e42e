//! ObjectService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::object_service_server::ObjectService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.ObjectService`.
#[derive(Clone, Debug)]
pub struct ObjectApi {
    #[allow(dead_code)]
    state: AppState,
}

impl ObjectApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        ObjectApi { state }
    }
}

#[tonic::async_trait]
impl ObjectService for ObjectApi {
    async fn list_objects(
        &self,
        _request: Request<pb::ListObjectsRequest>,
    ) -> RpcResult<pb::ListObjectsResponse> {
        unimplemented("ObjectService.ListObjects")
    }

    async fn get_object(
        &self,
        _request: Request<pb::GetObjectRequest>,
    ) -> RpcResult<pb::GetObjectResponse> {
        unimplemented("ObjectService.GetObject")
    }

    async fn list_object_versions(
        &self,
        _request: Request<pb::ListObjectVersionsRequest>,
    ) -> RpcResult<pb::ListObjectVersionsResponse> {
        unimplemented("ObjectService.ListObjectVersions")
    }

    async fn list_latest_versions(
        &self,
        _request: Request<pb::ListLatestVersionsRequest>,
    ) -> RpcResult<pb::ListLatestVersionsResponse> {
        unimplemented("ObjectService.ListLatestVersions")
    }

    async fn list_snapshot_files(
        &self,
        _request: Request<pb::ListSnapshotFilesRequest>,
    ) -> RpcResult<pb::ListSnapshotFilesResponse> {
        unimplemented("ObjectService.ListSnapshotFiles")
    }

    async fn list_duplicates(
        &self,
        _request: Request<pb::ListDuplicatesRequest>,
    ) -> RpcResult<pb::ListDuplicatesResponse> {
        unimplemented("ObjectService.ListDuplicates")
    }

    async fn rebuild_catalog(
        &self,
        _request: Request<pb::RebuildCatalogRequest>,
    ) -> RpcResult<pb::RebuildCatalogResponse> {
        unimplemented("ObjectService.RebuildCatalog")
    }
}
