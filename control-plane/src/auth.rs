//! Who is calling: bearer tokens, hashed at rest, resolved against the catalog.

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::user::{NewApiToken, TokenScope, User};

/// Prefix of every secret Coffer issues, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "coffer_";

/// The authenticated caller of a user-facing RPC.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The user the token belongs to.
    pub user: User,
}

impl Caller {
    /// Whether the caller sees and changes everything.
    pub fn is_admin(&self) -> bool {
        self.user.admin
    }

    /// The owner filter for lists and lookups: `None` for admins (everything),
    /// the caller's id otherwise.
    pub fn owner_scope(&self) -> Option<Uuid> {
        if self.is_admin() {
            None
        } else {
            Some(self.user.id)
        }
    }

    /// The owner filter of a List call: admins may filter by any owner (or
    /// none); everyone else always lists only their own resources.
    pub fn list_owner_filter(&self, requested: Option<Uuid>) -> Option<Uuid> {
        if self.is_admin() {
            requested
        } else {
            Some(self.user.id)
        }
    }

    /// Whether the caller may see or change a resource owned by `owner_id`.
    pub fn can_access(&self, owner_id: Uuid) -> bool {
        self.is_admin() || self.user.id == owner_id
    }

    /// Refuses non-admins.
    pub fn require_admin(&self, what: &str) -> DomainResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(format!(
                "{what} is for admins only"
            )))
        }
    }

    /// The owner of a new resource: the caller, or (admins only) the requested one.
    pub fn resolve_owner(&self, field: &str, requested: Option<Uuid>) -> DomainResult<Uuid> {
        match requested {
            None => Ok(self.user.id),
            Some(id) if id == self.user.id => Ok(id),
            Some(_) if self.is_admin() => Ok(requested.unwrap_or(self.user.id)),
            Some(_) => Err(DomainError::PermissionDenied(format!(
                "{field}: only admins may create or move resources for another user"
            ))),
        }
    }
}

/// A worker's identity on the worker protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerCaller {
    /// The token's owner (normally an admin account).
    pub user: User,
    /// The worker token; the worker registration is bound to it. `None`
    /// only for anonymous calls in loopback no-auth mode.
    pub token_id: Option<Uuid>,
}

/// How calls are authenticated.
#[derive(Clone, Debug)]
pub enum AuthMode {
    /// Every call needs a valid bearer token.
    Required,
    /// Loopback-only standalone mode: calls without a token act as this user.
    Disabled {
        /// The user anonymous calls act as.
        as_user: User,
    },
}

/// Resolves bearer tokens to callers.
#[derive(Clone, Debug)]
pub struct Authenticator {
    catalog: Catalog,
    mode: Arc<AuthMode>,
}

/// A newly minted secret and what is stored of it.
#[derive(Debug)]
pub struct MintedSecret {
    /// The secret to hand to the user once.
    pub secret: String,
    /// Its SHA-256.
    pub hash: Vec<u8>,
    /// Its first characters, for recognising it.
    pub prefix: String,
}

/// Creates a random secret.
pub fn mint_secret() -> MintedSecret {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    describe_secret(&secret)
}

/// Hash and prefix of a given secret (used for tokens supplied by the environment).
pub fn describe_secret(secret: &str) -> MintedSecret {
    MintedSecret {
        secret: secret.to_string(),
        hash: hash_secret(secret),
        prefix: secret.chars().take(TOKEN_PREFIX.len() + 4).collect(),
    }
}

/// SHA-256 of a secret. Tokens are 256 random bits, so a fast hash is enough.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Authenticator {
    /// An authenticator over the catalog.
    pub fn new(catalog: Catalog, mode: AuthMode) -> Self {
        Authenticator {
            catalog,
            mode: Arc::new(mode),
        }
    }

    /// Whether tokens are required.
    pub fn mode(&self) -> &AuthMode {
        &self.mode
    }

    /// Authenticates a call to a user-facing service.
    pub async fn caller(&self, metadata: &MetadataMap) -> DomainResult<Caller> {
        match self.identify(metadata).await? {
            Some((user, TokenScope::User, _)) => Ok(Caller { user }),
            Some((_, TokenScope::Worker, _)) => Err(DomainError::PermissionDenied(
                "worker tokens may only call WorkerService".to_string(),
            )),
            None => match self.mode.as_ref() {
                AuthMode::Disabled { as_user } => Ok(Caller {
                    user: as_user.clone(),
                }),
                AuthMode::Required => Err(DomainError::Unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>`".to_string(),
                )),
            },
        }
    }

    /// Authenticates a call to the worker protocol.
    pub async fn worker(&self, metadata: &MetadataMap) -> DomainResult<WorkerCaller> {
        match self.identify(metadata).await? {
            Some((user, TokenScope::Worker, token_id)) => Ok(WorkerCaller {
                user,
                token_id: Some(token_id),
            }),
            Some((_, TokenScope::User, _)) => Err(DomainError::PermissionDenied(
                "WorkerService needs a worker-scope token".to_string(),
            )),
            None => match self.mode.as_ref() {
                AuthMode::Disabled { as_user } => Ok(WorkerCaller {
                    user: as_user.clone(),
                    token_id: None,
                }),
                AuthMode::Required => Err(DomainError::Unauthenticated(
                    "missing credentials: send `authorization: Bearer <worker token>`".to_string(),
                )),
            },
        }
    }

    /// Resolves the bearer token, if one was sent, to its user, scope and id.
    /// A token that was sent but is wrong is always an error, even when
    /// anonymous calls are allowed.
    async fn identify(
        &self,
        metadata: &MetadataMap,
    ) -> DomainResult<Option<(User, TokenScope, Uuid)>> {
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
        };
        let value = value.to_str().map_err(|_| {
            DomainError::Unauthenticated("authorization header is not ASCII".to_string())
        })?;
        let Some(secret) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(DomainError::Unauthenticated(
                "authorization header must be `Bearer <token>`".to_string(),
            ));
        };
        let now = self.catalog.now().await?;
        let identity = self
            .catalog
            .find_token_identity(&hash_secret(secret.trim()), now)
            .await?
            .ok_or_else(|| DomainError::Unauthenticated("invalid or expired token".to_string()))?;
        if needs_touch(identity.last_used_time, now) {
            // Best effort, and off the call's path: a failed bookkeeping
            // write must not fail the call, nor a busy catalog delay it.
            let catalog = self.catalog.clone();
            let token_id = identity.token_id;
            tokio::spawn(async move {
                if let Err(error) = catalog.touch_api_token(token_id, now).await {
                    tracing::warn!(%error, "could not record token use");
                }
            });
        }
        Ok(Some((identity.user, identity.scope, identity.token_id)))
    }
}

fn needs_touch(last_used: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used.is_none_or(|t| now - t > chrono::Duration::minutes(1))
}

/// Makes sure the catalog has an admin account that `secret` authenticates as.
/// Used on start-up with `COFFER_ADMIN_TOKEN`; does nothing when the token exists.
pub async fn ensure_bootstrap_token(
    catalog: &Catalog,
    secret: &str,
    scope: TokenScope,
) -> DomainResult<()> {
    let described = describe_secret(secret);
    if catalog.api_token_exists(&described.hash).await? {
        return Ok(());
    }
    let admin = ensure_admin_user(catalog).await?;
    let display_name = match scope {
        TokenScope::User => "bootstrap admin token",
        TokenScope::Worker => "bootstrap worker token",
    };
    let created = catalog
        .create_api_token(&NewApiToken {
            user_id: admin.id,
            display_name: display_name.to_string(),
            scope,
            prefix: described.prefix,
            secret_hash: described.hash.clone(),
            expire_time: None,
        })
        .await;
    match created {
        Ok(_) => {
            tracing::info!(user = %admin.username, scope = scope.as_str(), "bootstrap token registered");
            Ok(())
        }
        // Replicas starting together register the same token at the same
        // moment: the one that lost the race finds it there, and is done.
        Err(DomainError::AlreadyExists(_)) if catalog.api_token_exists(&described.hash).await? => {
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Returns the `admin` account, creating it if needed.
pub async fn ensure_admin_user(catalog: &Catalog) -> DomainResult<User> {
    if let Some(user) = catalog.get_user_by_username("admin").await? {
        return Ok(user);
    }
    let new = crate::model::user::NewUser {
        username: "admin".to_string(),
        email: "admin@localhost.localdomain".to_string(),
        admin: true,
    };
    match catalog.create_user(&new).await {
        Ok(user) => Ok(user),
        // Another replica created it at the same moment.
        Err(DomainError::AlreadyExists(_)) => {
            catalog.get_user_by_username("admin").await?.ok_or_else(|| {
                DomainError::Internal("admin user vanished during bootstrap".to_string())
            })
        }
        Err(other) => Err(other),
    }
}
