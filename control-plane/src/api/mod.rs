//! gRPC adapters, one module per service. Handlers only convert: proto in,
//! validated domain types to the catalog or to run admission, proto out; the
//! conversions several services share are in `convert`. Errors become statuses
//! through `From<DomainError> for Status` in `crate::error`.

pub mod audit;
pub mod buckets;
pub mod commands;
pub mod configurations;
pub mod convert;
pub mod copies;
pub mod downloads;
pub mod grants;
pub mod jobs;
pub mod key_slots;
pub mod metadata;
pub mod notifications;
pub mod objects;
pub mod retention;
pub mod runs;
pub mod secrets;
pub mod tags;
pub mod users;
pub mod workers;

use prost_types::FieldMask;

use crate::error::{DomainError, DomainResult};

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
