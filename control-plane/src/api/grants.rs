//! GrantService: data-plane grants. Only admins create and delete them; a
//! user gets and lists their own, and another user's grant is NOT_FOUND.

use coffer_proto::v1 as pb;
use coffer_proto::v1::grant_service_server::GrantService;
use tonic::Request;

use super::convert::{labels_to_proto, required, selector_from_proto, timestamp};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::grant::{Grant, GrantSpec, GrantUse, GrantedPath};
use crate::model::parse_id;
use crate::state::AppState;

/// Handler of `coffer.v1.GrantService`.
#[derive(Clone, Debug)]
pub struct GrantApi {
    state: AppState,
}

impl GrantApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        GrantApi { state }
    }
}

/// The proto value of a use.
pub fn use_to_proto(usage: GrantUse) -> pb::GrantUse {
    match usage {
        GrantUse::BackupSource => pb::GrantUse::BackupSource,
        GrantUse::RestoreDestination => pb::GrantUse::RestoreDestination,
        GrantUse::Repository => pb::GrantUse::Repository,
        GrantUse::InPlaceRestore => pb::GrantUse::InPlaceRestore,
    }
}

/// The proto of a granted path, as the worker checks it.
pub fn path_grant_to_proto(granted: GrantedPath) -> pb::PathGrant {
    pb::PathGrant {
        path: granted.path,
        r#use: use_to_proto(granted.usage) as i32,
        root: granted.grant.spec.root,
        grant_id: granted.grant.id.to_string(),
        restore_ownership: granted.grant.spec.restore_ownership,
        restore_special_bits: granted.grant.spec.restore_special_bits,
    }
}

fn use_from_proto(field: &str, value: i32) -> DomainResult<GrantUse> {
    match pb::GrantUse::try_from(value) {
        Ok(pb::GrantUse::BackupSource) => Ok(GrantUse::BackupSource),
        Ok(pb::GrantUse::RestoreDestination) => Ok(GrantUse::RestoreDestination),
        Ok(pb::GrantUse::Repository) => Ok(GrantUse::Repository),
        Ok(pb::GrantUse::InPlaceRestore) => Ok(GrantUse::InPlaceRestore),
        Ok(pb::GrantUse::Unspecified) | Err(_) => Err(DomainError::invalid(
            field,
            format!("unknown use {value}; use a GRANT_USE_* value other than UNSPECIFIED"),
        )),
    }
}

impl TryFrom<pb::Grant> for GrantSpec {
    type Error = DomainError;

    /// Converts the writable fields, reporting every bad one at once.
    fn try_from(grant: pb::Grant) -> DomainResult<Self> {
        let mut violations = Violations::new();
        let grantee = violations.absorb(parse_id("grant.grantee_id", &grant.grantee_id));
        let selector = violations.absorb(selector_from_proto(
            "grant.worker_selector",
            grant.worker_selector,
        ));
        let mut uses = Vec::with_capacity(grant.uses.len());
        for (index, value) in grant.uses.iter().enumerate() {
            if let Some(usage) =
                violations.absorb(use_from_proto(&format!("grant.uses[{index}]"), *value))
            {
                uses.push(usage);
            }
        }
        uses.sort_unstable();
        uses.dedup();
        let spec = GrantSpec {
            grantee_id: grantee.unwrap_or_default(),
            worker_selector: selector.unwrap_or_default(),
            root: grant.root,
            uses,
            restore_ownership: grant.restore_ownership,
            restore_special_bits: grant.restore_special_bits,
        };
        violations.absorb(spec.validate("grant."));
        violations.finish()?;
        Ok(spec)
    }
}

impl From<Grant> for pb::Grant {
    fn from(grant: Grant) -> Self {
        let spec = grant.spec;
        pb::Grant {
            id: grant.id.to_string(),
            grantee_id: spec.grantee_id.to_string(),
            worker_selector: labels_to_proto(&spec.worker_selector),
            root: spec.root,
            uses: spec
                .uses
                .into_iter()
                .map(|u| use_to_proto(u) as i32)
                .collect(),
            restore_ownership: spec.restore_ownership,
            restore_special_bits: spec.restore_special_bits,
            create_time: Some(timestamp(grant.create_time)),
            creator_id: grant.creator_id.to_string(),
        }
    }
}

impl GrantApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    async fn create(&self, caller: &Caller, grant: pb::Grant) -> DomainResult<Grant> {
        caller.require_admin("creating grants")?;
        let spec = GrantSpec::try_from(grant)?;
        match self.state.catalog.get_user(spec.grantee_id).await {
            Err(DomainError::NotFound(_)) => {
                return Err(DomainError::invalid("grant.grantee_id", "no such user"))
            }
            other => {
                other?;
            }
        }
        self.state.catalog.create_grant(&spec, caller.user.id).await
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListGrantsRequest,
    ) -> DomainResult<pb::ListGrantsResponse> {
        let requested = crate::model::parse_optional_id("grantee_id", &request.grantee_id)?;
        let grantee = caller.list_owner_filter(requested);
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (grants, next_page_token) = self.state.catalog.list_grants(page, grantee).await?;
        Ok(pb::ListGrantsResponse {
            grants: grants.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl GrantService for GrantApi {
    async fn create_grant(
        &self,
        request: Request<pb::CreateGrantRequest>,
    ) -> RpcResult<pb::CreateGrantResponse> {
        let caller = self.caller(&request).await?;
        let grant = required("grant", request.into_inner().grant)?;
        let created = self.create(&caller, grant).await?;
        respond(Ok(pb::CreateGrantResponse {
            grant: Some(created.into()),
        }))
    }

    async fn get_grant(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> RpcResult<pb::GetGrantResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let grant = self
            .state
            .catalog
            .get_grant(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetGrantResponse {
            grant: Some(grant.into()),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> RpcResult<pb::ListGrantsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn delete_grant(
        &self,
        request: Request<pb::DeleteGrantRequest>,
    ) -> RpcResult<pb::DeleteGrantResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("deleting grants")?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.catalog.delete_grant(id).await?;
        respond(Ok(pb::DeleteGrantResponse {}))
    }
}
