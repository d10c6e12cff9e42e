//! UserService: users and API tokens.

use coffer_proto::v1 as pb;
use coffer_proto::v1::user_service_server::UserService;
use tonic::Request;

use super::convert::{optional_timestamp, required, timestamp};
use super::{mask_paths, respond, RpcResult};
use crate::auth::{mint_secret, Caller};
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult};
use crate::model::limits::OwnerLimit;
use crate::model::user::{
    check_email, ApiToken, NewApiToken, NewUser, TokenScope, User, UserPatch,
};
use crate::model::{check_len, check_name, parse_id, parse_optional_id};
use crate::state::AppState;

/// Handler of `coffer.v1.UserService`.
#[derive(Clone, Debug)]
pub struct UserApi {
    state: AppState,
}

impl UserApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        UserApi { state }
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        pb::User {
            id: user.id.to_string(),
            username: user.username,
            email: user.email,
            admin: user.admin,
            create_time: Some(timestamp(user.create_time)),
            update_time: Some(timestamp(user.update_time)),
        }
    }
}

impl From<ApiToken> for pb::ApiToken {
    fn from(token: ApiToken) -> Self {
        pb::ApiToken {
            id: token.id.to_string(),
            user_id: token.user_id.to_string(),
            display_name: token.display_name,
            scope: match token.scope {
                TokenScope::User => pb::TokenScope::User,
                TokenScope::Worker => pb::TokenScope::Worker,
            } as i32,
            prefix: token.prefix,
            create_time: Some(timestamp(token.create_time)),
            expire_time: optional_timestamp(token.expire_time),
            last_used_time: optional_timestamp(token.last_used_time),
        }
    }
}

impl TryFrom<pb::User> for NewUser {
    type Error = DomainError;

    fn try_from(user: pb::User) -> DomainResult<Self> {
        let new = NewUser {
            username: user.username,
            email: user.email,
            admin: user.admin,
        };
        new.validate("user.")?;
        Ok(new)
    }
}

fn user_patch(user: &pb::User, paths: &[String]) -> DomainResult<UserPatch> {
    let mut patch = UserPatch::default();
    for path in paths {
        match path.as_str() {
            "username" => {
                check_name("user.username", &user.username, 64)?;
                patch.username = Some(user.username.clone());
            }
            "email" => {
                check_email("user.email", &user.email)?;
                patch.email = Some(user.email.clone());
            }
            "admin" => patch.admin = Some(user.admin),
            _ => unreachable!("mask_paths admits only the paths above"),
        }
    }
    Ok(patch)
}

impl UserApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    async fn create_token(
        &self,
        caller: &Caller,
        request: pb::CreateApiTokenRequest,
    ) -> DomainResult<pb::CreateApiTokenResponse> {
        let user_id = parse_optional_id("user_id", &request.user_id)?.unwrap_or(caller.user.id);
        if user_id != caller.user.id {
            caller.require_admin("creating tokens for another user")?;
        }
        check_len("display_name", &request.display_name, 1, 100)?;
        let scope = match pb::TokenScope::try_from(request.scope) {
            Ok(pb::TokenScope::Unspecified | pb::TokenScope::User) => TokenScope::User,
            Ok(pb::TokenScope::Worker) => {
                caller.require_admin("creating worker tokens")?;
                TokenScope::Worker
            }
            Err(_) => return Err(DomainError::invalid("scope", "unknown token scope")),
        };
        let now = self.state.catalog.now().await?;
        let expire_time = match request.ttl {
            None => None,
            Some(ttl) if ttl.seconds == 0 && ttl.nanos == 0 => None,
            Some(ttl) if ttl.seconds < 0 || ttl.nanos < 0 => {
                return Err(DomainError::invalid("ttl", "must be positive"))
            }
            Some(ttl) => Some(now + chrono::Duration::seconds(ttl.seconds.min(100 * 365 * 86_400))),
        };
        // The owner must exist and be visible.
        self.state.catalog.get_user(user_id).await?;
        self.state
            .catalog
            .check_owner_limit(OwnerLimit::ApiTokens, user_id)
            .await?;
        let minted = mint_secret();
        let token = self
            .state
            .catalog
            .create_api_token(&NewApiToken {
                user_id,
                display_name: request.display_name,
                scope,
                prefix: minted.prefix,
                secret_hash: minted.hash,
                expire_time,
            })
            .await?;
        Ok(pb::CreateApiTokenResponse {
            token: Some(token.into()),
            secret: minted.secret,
        })
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> RpcResult<pb::CreateUserResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("creating users")?;
        let new = NewUser::try_from(required("user", request.into_inner().user)?)?;
        let user = self.state.catalog.create_user(&new).await?;
        respond(Ok(pb::CreateUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> RpcResult<pb::GetUserResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        if !caller.can_access(id) {
            return Err(DomainError::not_found("user", id).into());
        }
        let user = self.state.catalog.get_user(id).await?;
        respond(Ok(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> RpcResult<pb::GetCurrentUserResponse> {
        let caller = self.caller(&request).await?;
        respond(Ok(pb::GetCurrentUserResponse {
            user: Some(caller.user.into()),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> RpcResult<pb::ListUsersResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("listing users")?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (users, next_page_token) = self
            .state
            .catalog
            .list_users(page, &request.username_prefix)
            .await?;
        respond(Ok(pb::ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> RpcResult<pb::UpdateUserResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("updating users")?;
        let request = request.into_inner();
        let user = required("user", request.user)?;
        let id = parse_id("user.id", &user.id)?;
        let paths = mask_paths(request.update_mask, &["username", "email", "admin"])?;
        let patch = user_patch(&user, &paths)?;
        if patch.admin == Some(false) && id == caller.user.id {
            return Err(DomainError::FailedPrecondition(
                "an admin cannot remove its own admin flag".to_string(),
            )
            .into());
        }
        let user = self.state.catalog.update_user(id, &patch).await?;
        respond(Ok(pb::UpdateUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> RpcResult<pb::DeleteUserResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("deleting users")?;
        let request = request.into_inner();
        let id = parse_id("id", &request.id)?;
        if id == caller.user.id {
            return Err(
                DomainError::FailedPrecondition("a user cannot delete itself".to_string()).into(),
            );
        }
        self.state.catalog.delete_user(id, request.force).await?;
        respond(Ok(pb::DeleteUserResponse {}))
    }

    async fn create_api_token(
        &self,
        request: Request<pb::CreateApiTokenRequest>,
    ) -> RpcResult<pb::CreateApiTokenResponse> {
        let caller = self.caller(&request).await?;
        respond(self.create_token(&caller, request.into_inner()).await)
    }

    async fn list_api_tokens(
        &self,
        request: Request<pb::ListApiTokensRequest>,
    ) -> RpcResult<pb::ListApiTokensResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let requested = parse_optional_id("user_id", &request.user_id)?;
        let user_filter = match (requested, caller.is_admin()) {
            (Some(id), true) => Some(id),
            (None, true) => None,
            (Some(id), false) if id != caller.user.id => {
                return Err(DomainError::not_found("user", id).into())
            }
            (_, false) => Some(caller.user.id),
        };
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (tokens, next_page_token) = self
            .state
            .catalog
            .list_api_tokens(user_filter, page)
            .await?;
        respond(Ok(pb::ListApiTokensResponse {
            tokens: tokens.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn delete_api_token(
        &self,
        request: Request<pb::DeleteApiTokenRequest>,
    ) -> RpcResult<pb::DeleteApiTokenResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let token = self.state.catalog.get_api_token(id).await?;
        if !caller.can_access(token.user_id) {
            return Err(DomainError::not_found("api token", id).into());
        }
        self.state.catalog.delete_api_token(id).await?;
        respond(Ok(pb::DeleteApiTokenResponse {}))
    }
}
