//! AuditService: the audit log, for admins only.

use coffer_proto::v1 as pb;
use coffer_proto::v1::audit_service_server::AuditService;
use tonic::Request;

use super::convert::{from_timestamp, optional_id, timestamp};
use super::{respond, RpcResult};
use crate::catalog::Page;
use crate::error::{DomainResult, Violations};
use crate::model::audit::{ActionFilter, AuditEvent, AuditFilter};
use crate::model::parse_optional_id;
use crate::state::AppState;

/// Handler of `coffer.v1.AuditService`.
#[derive(Clone, Debug)]
pub struct AuditApi {
    state: AppState,
}

impl AuditApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        AuditApi { state }
    }
}

impl From<AuditEvent> for pb::AuditEvent {
    fn from(event: AuditEvent) -> Self {
        pb::AuditEvent {
            id: event.id.to_string(),
            time: Some(timestamp(event.time)),
            actor_user_id: optional_id(event.actor_user_id),
            actor_token_id: optional_id(event.actor_token_id),
            action: event.action,
            target_ids: event.target_ids.iter().map(ToString::to_string).collect(),
            result: event.result,
            peer: event.peer,
            detail: event.detail,
        }
    }
}

/// The filters of a request, every bad field reported at once.
fn audit_filter(request: &pb::ListAuditEventsRequest) -> DomainResult<AuditFilter> {
    let mut violations = Violations::new();
    let actor_user_id = violations
        .absorb(parse_optional_id("actor_user_id", &request.actor_user_id))
        .flatten();
    let target_id = violations
        .absorb(parse_optional_id("target_id", &request.target_id))
        .flatten();
    let start_time = request
        .start_time
        .as_ref()
        .and_then(|t| violations.absorb(from_timestamp("start_time", t)));
    let end_time = request
        .end_time
        .as_ref()
        .and_then(|t| violations.absorb(from_timestamp("end_time", t)));
    if let (Some(start), Some(end)) = (start_time, end_time) {
        if end <= start {
            violations.add("end_time", "must be after start_time");
        }
    }
    violations.finish()?;
    Ok(AuditFilter {
        actor_user_id,
        action: ActionFilter::parse(&request.action),
        target_id,
        result: Some(request.result.clone()).filter(|r| !r.is_empty()),
        start_time,
        end_time,
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> RpcResult<pb::ListAuditEventsResponse> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        caller.require_admin("ListAuditEvents")?;
        let request = request.into_inner();
        let filter = audit_filter(&request)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (events, next_page_token) = self.state.catalog.list_audit_events(&filter, page).await?;
        respond(Ok(pb::ListAuditEventsResponse {
            audit_events: events.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
