//! TagService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::tag_service_server::TagService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.TagService`.
#[derive(Clone, Debug)]
pub struct TagApi {
    #[allow(dead_code)]
    state: AppState,
}

impl TagApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        TagApi { state }
    }
}

#[tonic::async_trait]
impl TagService for TagApi {
    async fn create_tag(
        &self,
        _request: Request<pb::CreateTagRequest>,
    ) -> RpcResult<pb::CreateTagResponse> {
        unimplemented("TagService.CreateTag")
    }

    async fn get_tag(&self, _request: Request<pb::GetTagRequest>) -> RpcResult<pb::GetTagResponse> {
        unimplemented("TagService.GetTag")
    }

    async fn list_tags(
        &self,
        _request: Request<pb::ListTagsRequest>,
    ) -> RpcResult<pb::ListTagsResponse> {
        unimplemented("TagService.ListTags")
    }

    async fn update_tag(
        &self,
        _request: Request<pb::UpdateTagRequest>,
    ) -> RpcResult<pb::UpdateTagResponse> {
        unimplemented("TagService.UpdateTag")
    }

    async fn delete_tag(
        &self,
        _request: Request<pb::DeleteTagRequest>,
    ) -> RpcResult<pb::DeleteTagResponse> {
        unimplemented("TagService.DeleteTag")
    }
}
