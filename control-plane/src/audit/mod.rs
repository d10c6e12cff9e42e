//! The audit log's one recording path. Calls are recorded by [`AuditLayer`],
//! a tower layer around every service (`layer`): the method, the caller
//! resolved from its token, the peer address, the resource ids of the request
//! and response (`targets`: id fields only, never bodies) and the gRPC
//! outcome. Runs are recorded from the catalog's run events (`runs`) when
//! they are created and when they end, whoever created them (API, scheduler,
//! retention after a backup).
//!
//! Failure policy: a mutating call is recorded *before* it runs, and refused
//! with UNAVAILABLE when that write fails (fail closed: nothing changes
//! unaudited). Its outcome is written afterwards; if that second write
//! fails, the event keeps the result `UNKNOWN` and an error is logged (the
//! change has happened and cannot be taken back).

mod layer;
mod runs;
mod targets;

use uuid::Uuid;

pub use layer::AuditLayer;
pub use runs::record_run_events;

use crate::auth::{hash_secret, AuthMode, Authenticator};
use crate::catalog::{new_id, now_micros, Catalog};
use crate::model::audit::AuditEvent;

/// Who acted: the user and the token (never the token's secret).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Actor {
    user_id: Option<Uuid>,
    token_id: Option<Uuid>,
}

/// A new event at the current time.
fn event(action: &str, result: &str) -> AuditEvent {
    AuditEvent {
        id: new_id(),
        time: now_micros(),
        actor_user_id: None,
        actor_token_id: None,
        action: action.to_string(),
        target_ids: Vec::new(),
        result: result.to_string(),
        peer: String::new(),
        detail: String::new(),
    }
}

/// The actor of a call's `authorization` value: the token's user, or the
/// stand-in user of no-auth mode for a call without a token. An invalid or
/// unreadable token is no actor (the call itself is refused by its handler).
async fn resolve_actor(catalog: &Catalog, auth: &Authenticator, header: Option<&str>) -> Actor {
    let Some(value) = header else {
        return match auth.mode() {
            AuthMode::Disabled { as_user } => Actor {
                user_id: Some(as_user.id),
                token_id: None,
            },
            AuthMode::Required => Actor::default(),
        };
    };
    let Some(secret) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Actor::default();
    };
    match catalog
        .find_token_identity(&hash_secret(secret.trim()), now_micros())
        .await
    {
        Ok(Some(identity)) => Actor {
            user_id: Some(identity.user.id),
            token_id: Some(identity.token_id),
        },
        Ok(None) => Actor::default(),
        Err(error) => {
            tracing::warn!(%error, "audit: cannot resolve the caller's token");
            Actor::default()
        }
    }
}

/// The name of a gRPC code as the protocol spells it (`PERMISSION_DENIED`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
