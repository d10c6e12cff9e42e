//! Audit events: who did what to which resources, with what outcome, when
//! and from where. Only ids, method names, outcome codes and addresses are
//! ever stored: never a request body, a token or another secret.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Action of the event recorded when a run is created.
pub const RUN_CREATED: &str = "run.created";
/// Action of the event recorded when a run reaches a final state.
pub const RUN_FINISHED: &str = "run.finished";
/// Result of a call whose outcome could not be recorded after it ran.
pub const RESULT_UNKNOWN: &str = "UNKNOWN";

/// One recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// Id (UUIDv7, so ids sort by time).
    pub id: Uuid,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The acting user; `None` without a valid token.
    pub actor_user_id: Option<Uuid>,
    /// The token used; `None` without a valid token.
    pub actor_token_id: Option<Uuid>,
    /// The full gRPC method, or `run.created` / `run.finished`.
    pub action: String,
    /// The resources acted on.
    pub target_ids: Vec<Uuid>,
    /// A gRPC code name, or a run state.
    pub result: String,
    /// The peer's address, empty for run events.
    pub peer: String,
    /// Non-secret context (a run's kind).
    pub detail: String,
}

impl AuditEvent {
    /// The targets as stored: space-separated UUIDs.
    pub fn target_text(&self) -> String {
        let ids: Vec<String> = self.target_ids.iter().map(Uuid::to_string).collect();
        ids.join(" ")
    }

    /// Targets as stored; anything that is not a UUID is dropped.
    pub fn parse_targets(text: &str) -> Vec<Uuid> {
        text.split_whitespace()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect()
    }
}

/// How an action filter matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionFilter {
    /// Exactly this action.
    Exact(String),
    /// Actions starting with this (a filter ending in `/` or `.`).
    Prefix(String),
}

impl ActionFilter {
    /// `coffer.v1.JobService/` and `run.` select by prefix; anything else exactly.
    pub fn parse(text: &str) -> Option<ActionFilter> {
        if text.is_empty() {
            None
        } else if text.ends_with('/') || text.ends_with('.') {
            Some(ActionFilter::Prefix(text.to_string()))
        } else {
            Some(ActionFilter::Exact(text.to_string()))
        }
    }
}

/// Filters of ListAuditEvents; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    /// The acting user.
    pub actor_user_id: Option<Uuid>,
    /// The action.
    pub action: Option<ActionFilter>,
    /// A resource among the targets.
    pub target_id: Option<Uuid>,
    /// The result.
    pub result: Option<String>,
    /// At or after.
    pub start_time: Option<DateTime<Utc>>,
    /// Before.
    pub end_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_junk_is_dropped() {
        let event = AuditEvent {
            id: Uuid::now_v7(),
            time: Utc::now(),
            actor_user_id: None,
            actor_token_id: None,
            action: "x".into(),
            target_ids: vec![Uuid::now_v7(), Uuid::now_v7()],
            result: "OK".into(),
            peer: String::new(),
            detail: String::new(),
        };
        assert_eq!(
            AuditEvent::parse_targets(&event.target_text()),
            event.target_ids
        );
        assert!(AuditEvent::parse_targets("coffer_secret 12").is_empty());
    }

    #[test]
    fn action_filters_are_exact_unless_they_end_a_segment() {
        assert_eq!(
            ActionFilter::parse("run."),
            Some(ActionFilter::Prefix("run.".into()))
        );
        assert_eq!(
            ActionFilter::parse("coffer.v1.JobService/CreateJob"),
            Some(ActionFilter::Exact("coffer.v1.JobService/CreateJob".into()))
        );
        assert_eq!(ActionFilter::parse(""), None);
    }
}
