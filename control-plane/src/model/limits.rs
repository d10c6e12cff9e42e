//! Per-owner limits: how much one tenant may hold at once, so that one
//! tenant's flood (of queued runs, jobs, tokens or open watch streams) cannot
//! crowd out the others. Each limit is a configuration key with a default;
//! resources owned by admins are exempt (admins are trusted operators, and a
//! limit must never lock the operator out of repairing a tenant's mess).

use crate::error::DomainError;
use crate::model::configuration::{
    MAX_API_TOKENS_PER_OWNER, MAX_JOBS_PER_OWNER, MAX_QUEUED_RUNS_PER_OWNER,
    MAX_WATCH_STREAMS_PER_OWNER,
};

/// A resource counted per owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerLimit {
    /// Runs in state QUEUED.
    QueuedRuns,
    /// Jobs.
    Jobs,
    /// API tokens (user and worker scope).
    ApiTokens,
    /// Open `WatchRun` streams, counted per control-plane replica.
    WatchStreams,
}

impl OwnerLimit {
    /// The configuration key that sets the limit.
    pub fn key(self) -> &'static str {
        match self {
            OwnerLimit::QueuedRuns => MAX_QUEUED_RUNS_PER_OWNER,
            OwnerLimit::Jobs => MAX_JOBS_PER_OWNER,
            OwnerLimit::ApiTokens => MAX_API_TOKENS_PER_OWNER,
            OwnerLimit::WatchStreams => MAX_WATCH_STREAMS_PER_OWNER,
        }
    }

    /// The limit while the key is not set: generous for real use, small
    /// enough that one tenant cannot fill the catalog or the scheduler.
    pub fn default_limit(self) -> i64 {
        match self {
            OwnerLimit::QueuedRuns => 1000,
            OwnerLimit::Jobs => 1000,
            OwnerLimit::ApiTokens => 100,
            OwnerLimit::WatchStreams => 32,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            OwnerLimit::QueuedRuns => "queued runs",
            OwnerLimit::Jobs => "jobs",
            OwnerLimit::ApiTokens => "API tokens",
            OwnerLimit::WatchStreams => "open WatchRun streams",
        }
    }

    fn remedy(self) -> &'static str {
        match self {
            OwnerLimit::QueuedRuns => "wait for queued runs to start or cancel some",
            OwnerLimit::Jobs => "delete jobs no longer needed",
            OwnerLimit::ApiTokens => "revoke tokens no longer needed",
            OwnerLimit::WatchStreams => "close other watches first",
        }
    }

    /// The limit a configured value sets: the default when unset or not a
    /// positive number (the configuration service refuses such values; a
    /// value written around it must not disable the limit).
    pub fn from_configured(self, configured: Option<&str>) -> i64 {
        configured
            .and_then(|value| value.trim().parse::<i64>().ok())
            .filter(|limit| *limit > 0)
            .unwrap_or_else(|| self.default_limit())
    }

    /// The error for an owner who already holds `limit` of this resource.
    pub fn exhausted(self, limit: i64) -> DomainError {
        DomainError::ResourceExhausted(format!(
            "the owner already has {limit} {}, the most allowed (configuration `{}`); {}",
            self.noun(),
            self.key(),
            self.remedy()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_unusable_values_fall_back_to_the_default() {
        let limit = OwnerLimit::QueuedRuns;
        assert_eq!(limit.from_configured(None), 1000);
        assert_eq!(limit.from_configured(Some("0")), 1000);
        assert_eq!(limit.from_configured(Some("-5")), 1000);
        assert_eq!(limit.from_configured(Some("lots")), 1000);
        assert_eq!(limit.from_configured(Some(" 7 ")), 7);
    }

    #[test]
    fn the_error_names_the_limit_and_its_key() {
        let error = OwnerLimit::Jobs.exhausted(3);
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        let message = error.to_string();
        assert!(message.contains("3 jobs"), "{message}");
        assert!(message.contains(MAX_JOBS_PER_OWNER), "{message}");
    }
}
