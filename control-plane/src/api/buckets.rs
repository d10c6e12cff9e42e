//! BucketService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::bucket_service_server::BucketService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.BucketService`.
#[derive(Clone, Debug)]
pub struct BucketApi {
    #[allow(dead_code)]
    state: AppState,
}

impl BucketApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        BucketApi { state }
    }
}

#[tonic::async_trait]
impl BucketService for BucketApi {
    async fn create_bucket(
        &self,
        _request: Request<pb::CreateBucketRequest>,
    ) -> RpcResult<pb::CreateBucketResponse> {
        unimplemented("BucketService.CreateBucket")
    }

    async fn get_bucket(
        &self,
        _request: Request<pb::GetBucketRequest>,
    ) -> RpcResult<pb::GetBucketResponse> {
        unimplemented("BucketService.GetBucket")
    }

    async fn list_buckets(
        &self,
        _request: Request<pb::ListBucketsRequest>,
    ) -> RpcResult<pb::ListBucketsResponse> {
        unimplemented("BucketService.ListBuckets")
    }

    async fn update_bucket(
        &self,
        _request: Request<pb::UpdateBucketRequest>,
    ) -> RpcResult<pb::UpdateBucketResponse> {
        unimplemented("BucketService.UpdateBucket")
    }

    async fn delete_bucket(
        &self,
        _request: Request<pb::DeleteBucketRequest>,
    ) -> RpcResult<pb::DeleteBucketResponse> {
        unimplemented("BucketService.DeleteBucket")
    }
}
