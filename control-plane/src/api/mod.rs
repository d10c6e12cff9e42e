//! gRPC adapters, one module per service. Handlers only convert: proto in,
//! validated domain types to the catalog, proto out. Errors become statuses
//! through `From<DomainError> for Status` in `crate::error`.

pub mod buckets;
pub mod configurations;
pub mod jobs;
pub mod metadata;
pub mod objects;
pub mod retention;
pub mod runs;
pub mod tags;
pub mod users;
pub mod workers;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost_types::{FieldMask, Timestamp};

use crate::auth::Authenticator;
use crate::catalog::leases::LeaseSettings;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::scheduler::{SchedulerHandle, SchedulerSettings};

/// What every handler needs.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The catalog.
    pub catalog: Catalog,
    /// Resolves callers.
    pub auth: Authenticator,
    /// Wakes `WatchRun` streams and the lease dispatcher when runs change.
    pub run_events: Arc<tokio::sync::broadcast::Sender<uuid::Uuid>>,
    /// Lease timing for worker sessions and the reaper.
    pub lease_settings: LeaseSettings,
    /// Fires when the server starts shutting down, so long-lived streams
    /// (lease sessions) end instead of holding the graceful shutdown open.
    pub stopping: tokio_util::sync::CancellationToken,
    /// This replica's job scheduler: settings, lease identity and status.
    pub scheduler: SchedulerHandle,
}

impl AppState {
    /// State over a catalog and an authenticator.
    pub fn new(catalog: Catalog, auth: Authenticator) -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(1024);
        AppState {
            catalog,
            auth,
            run_events: Arc::new(sender),
            lease_settings: LeaseSettings::default(),
            stopping: tokio_util::sync::CancellationToken::new(),
            scheduler: SchedulerHandle::new(SchedulerSettings::default()),
        }
    }

    /// The same state with other scheduler settings.
    pub fn with_scheduler_settings(mut self, settings: SchedulerSettings) -> Self {
        self.scheduler = SchedulerHandle::new(settings);
        self
    }

    /// The same state with other lease timing.
    pub fn with_lease_settings(mut self, settings: LeaseSettings) -> Self {
        self.lease_settings = settings;
        self
    }

    /// Announces that a run changed (ignored when nobody listens).
    pub fn notify_run(&self, id: uuid::Uuid) {
        let _ = self.run_events.send(id);
    }
}

/// Converts a time to a protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts an optional time.
pub fn optional_timestamp(time: Option<DateTime<Utc>>) -> Option<Timestamp> {
    time.map(timestamp)
}

/// Converts a protobuf timestamp, rejecting out-of-range values.
pub fn from_timestamp(field: &str, value: &Timestamp) -> DomainResult<DateTime<Utc>> {
    let nanos = u32::try_from(value.nanos)
        .map_err(|_| DomainError::invalid(field, "nanos must not be negative"))?;
    let time = DateTime::from_timestamp(value.seconds, nanos)
        .ok_or_else(|| DomainError::invalid(field, "timestamp out of range"))?;
    // Both catalogs store microseconds.
    Ok(DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap_or(time))
}

/// Takes a required message field.
pub fn required<T>(field: &str, value: Option<T>) -> DomainResult<T> {
    value.ok_or_else(|| DomainError::invalid(field, "is required"))
}

/// Validates an update mask against the fields an Update call accepts.
/// An empty or missing mask is rejected: AIP's "update everything" is too easy
/// to trigger by accident for a backup catalog.
pub fn mask_paths(mask: Option<FieldMask>, allowed: &[&str]) -> DomainResult<Vec<String>> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(DomainError::invalid(
            "update_mask",
            format!("is required; allowed paths: {}", allowed.join(", ")),
        ));
    }
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            return Err(DomainError::invalid(
                "update_mask",
                format!(
                    "unknown or immutable field {path:?}; allowed paths: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(paths)
}

/// Shorthand for a handler result.
pub type RpcResult<T> = Result<tonic::Response<T>, tonic::Status>;

/// Wraps a domain result into a gRPC response.
pub fn respond<T>(result: DomainResult<T>) -> RpcResult<T> {
    result
        .map(tonic::Response::new)
        .map_err(tonic::Status::from)
}

/// The standard answer for behaviour that a later issue delivers.
pub fn unimplemented<T>(what: &str) -> RpcResult<T> {
    Err(DomainError::Unimplemented(format!(
        "{what} is not implemented yet in this version of Coffer"
    ))
    .into())
}
