//! TagService: key/value tags on runs, objects, object versions, jobs and buckets.

use coffer_proto::v1 as pb;
use coffer_proto::v1::tag_service_server::TagService;
use tonic::Request;

use super::convert::{required, timestamp};
use super::{mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::tag::{
    check_tag_key, check_tag_value, NewTag, ResourceKind, ResourceRef, Tag, TagFilter,
};
use crate::model::{parse_id, parse_optional_id};
use crate::state::AppState;

/// Handler of `coffer.v1.TagService`.
#[derive(Clone, Debug)]
pub struct TagApi {
    state: AppState,
}

impl TagApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        TagApi { state }
    }
}

/// Converts a domain resource kind to its proto enum.
pub fn kind_to_proto(kind: ResourceKind) -> pb::ResourceKind {
    match kind {
        ResourceKind::Run => pb::ResourceKind::Run,
        ResourceKind::Object => pb::ResourceKind::Object,
        ResourceKind::ObjectVersion => pb::ResourceKind::ObjectVersion,
        ResourceKind::Job => pb::ResourceKind::Job,
        ResourceKind::Bucket => pb::ResourceKind::Bucket,
    }
}

/// Parses a proto resource kind; `None` when unspecified.
pub fn kind_from_proto(field: &str, value: i32) -> DomainResult<Option<ResourceKind>> {
    match pb::ResourceKind::try_from(value) {
        Ok(pb::ResourceKind::Unspecified) => Ok(None),
        Ok(pb::ResourceKind::Run) => Ok(Some(ResourceKind::Run)),
        Ok(pb::ResourceKind::Object) => Ok(Some(ResourceKind::Object)),
        Ok(pb::ResourceKind::ObjectVersion) => Ok(Some(ResourceKind::ObjectVersion)),
        Ok(pb::ResourceKind::Job) => Ok(Some(ResourceKind::Job)),
        Ok(pb::ResourceKind::Bucket) => Ok(Some(ResourceKind::Bucket)),
        Err(_) => Err(DomainError::invalid(field, "unknown resource kind")),
    }
}

impl From<Tag> for pb::Tag {
    fn from(tag: Tag) -> Self {
        pb::Tag {
            id: tag.id.to_string(),
            resource: Some(pb::ResourceRef {
                kind: kind_to_proto(tag.resource.kind) as i32,
                id: tag.resource.id.to_string(),
            }),
            key: tag.key,
            value: tag.value,
            owner_id: tag.owner_id.to_string(),
            create_time: Some(timestamp(tag.create_time)),
            update_time: Some(timestamp(tag.update_time)),
        }
    }
}

/// Parses a required resource reference, reporting kind and id together.
fn resource_ref(field: &str, resource: Option<pb::ResourceRef>) -> DomainResult<ResourceRef> {
    let resource = required(field, resource)?;
    let mut violations = Violations::new();
    let kind_field = format!("{field}.kind");
    let kind = violations
        .absorb(kind_from_proto(&kind_field, resource.kind))
        .and_then(|kind| {
            if kind.is_none() {
                violations.add(&kind_field, "is required");
            }
            kind
        });
    let id = violations.absorb(parse_id(&format!("{field}.id"), &resource.id));
    violations.finish()?;
    match (kind, id) {
        (Some(kind), Some(id)) => Ok(ResourceRef { kind, id }),
        _ => Err(DomainError::invalid(field, "is incomplete")),
    }
}

impl TryFrom<pb::Tag> for NewTag {
    type Error = DomainError;

    fn try_from(tag: pb::Tag) -> DomainResult<Self> {
        let mut violations = Violations::new();
        let resource = violations.absorb(resource_ref("tag.resource", tag.resource));
        violations.absorb(check_tag_key("tag.key", &tag.key));
        violations.absorb(check_tag_value("tag.value", &tag.value));
        violations.finish()?;
        let resource =
            resource.ok_or_else(|| DomainError::invalid("tag.resource", "is required"))?;
        Ok(NewTag {
            resource,
            key: tag.key,
            value: tag.value,
        })
    }
}

/// Builds the filter of a ListTags call.
fn tag_filter(caller: &Caller, request: &pb::ListTagsRequest) -> DomainResult<TagFilter> {
    let (kind, resource_id) = match &request.resource {
        None => (None, None),
        Some(resource) => (
            kind_from_proto("resource.kind", resource.kind)?,
            parse_optional_id("resource.id", &resource.id)?,
        ),
    };
    if resource_id.is_some() && kind.is_none() {
        return Err(DomainError::invalid(
            "resource.kind",
            "is required when resource.id is set",
        ));
    }
    if !request.value.is_empty() && request.key.is_empty() {
        return Err(DomainError::invalid("value", "needs key"));
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(TagFilter {
        owner_id: caller.owner_scope(),
        kind,
        resource_id,
        key: non_empty(&request.key),
        value: non_empty(&request.value),
    })
}

impl TagApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    async fn create(&self, caller: &Caller, tag: Option<pb::Tag>) -> DomainResult<Tag> {
        let new = NewTag::try_from(required("tag", tag)?)?;
        let owner = self.state.catalog.resource_owner(new.resource).await?;
        let not_found = || {
            DomainError::not_found(
                &new.resource.kind.as_str().replace('_', " "),
                new.resource.id,
            )
        };
        let owner = owner.ok_or_else(not_found)?;
        if !caller.can_access(owner) {
            return Err(not_found());
        }
        self.state.catalog.create_tag(&new, owner).await
    }

    async fn update(&self, caller: &Caller, request: pb::UpdateTagRequest) -> DomainResult<Tag> {
        let tag = required("tag", request.tag)?;
        let id = parse_id("tag.id", &tag.id)?;
        mask_paths(request.update_mask, &["value"])?;
        check_tag_value("tag.value", &tag.value)?;
        self.state
            .catalog
            .update_tag_value(id, caller.owner_scope(), &tag.value)
            .await
    }
}

#[tonic::async_trait]
impl TagService for TagApi {
    async fn create_tag(
        &self,
        request: Request<pb::CreateTagRequest>,
    ) -> RpcResult<pb::CreateTagResponse> {
        let caller = self.caller(&request).await?;
        let tag = self.create(&caller, request.into_inner().tag).await?;
        respond(Ok(pb::CreateTagResponse {
            tag: Some(tag.into()),
        }))
    }

    async fn get_tag(&self, request: Request<pb::GetTagRequest>) -> RpcResult<pb::GetTagResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let tag = self.state.catalog.get_tag(id, caller.owner_scope()).await?;
        respond(Ok(pb::GetTagResponse {
            tag: Some(tag.into()),
        }))
    }

    async fn list_tags(
        &self,
        request: Request<pb::ListTagsRequest>,
    ) -> RpcResult<pb::ListTagsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let filter = tag_filter(&caller, &request)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (tags, next_page_token) = self.state.catalog.list_tags(&filter, page).await?;
        respond(Ok(pb::ListTagsResponse {
            tags: tags.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_tag(
        &self,
        request: Request<pb::UpdateTagRequest>,
    ) -> RpcResult<pb::UpdateTagResponse> {
        let caller = self.caller(&request).await?;
        let tag = self.update(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateTagResponse {
            tag: Some(tag.into()),
        }))
    }

    async fn delete_tag(
        &self,
        request: Request<pb::DeleteTagRequest>,
    ) -> RpcResult<pb::DeleteTagResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_tag(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::DeleteTagResponse {}))
    }
}
