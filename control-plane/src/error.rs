//! Domain errors and their one mapping to gRPC status codes.

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `job.source_path`.
    pub field: String,
    /// Why it is invalid.
    pub description: String,
}

/// Everything a domain operation can fail with. The variant decides the gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request is malformed; each violation names a field.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, or the caller may not see it.
    #[error("{0} not found")]
    NotFound(String),
    /// A unique key is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid credentials were presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The behaviour belongs to a later version of Coffer.
    #[error("{0}")]
    Unimplemented(String),
    /// A dependency (the catalog) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// A fenced write came with a lease that is no longer current.
    #[error("{0}")]
    Aborted(String),
    /// A per-owner limit (queued runs, jobs, tokens, watch streams) is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Anything else; the message is logged, not shown in full to callers.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl DomainError {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        DomainError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A missing resource, e.g. `not_found("job", id)`.
    pub fn not_found(kind: &str, id: impl std::fmt::Display) -> Self {
        DomainError::NotFound(format!("{kind} {id}"))
    }

    /// A write refused because the resource changed since the caller read
    /// it, e.g. `changed_concurrently("bucket", id)`.
    pub fn changed_concurrently(kind: &str, id: impl std::fmt::Display) -> Self {
        DomainError::Aborted(format!(
            "{kind} {id} changed concurrently; read it again and retry"
        ))
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            DomainError::InvalidArgument(_) => Code::InvalidArgument,
            DomainError::NotFound(_) => Code::NotFound,
            DomainError::AlreadyExists(_) => Code::AlreadyExists,
            DomainError::FailedPrecondition(_) => Code::FailedPrecondition,
            DomainError::PermissionDenied(_) => Code::PermissionDenied,
            DomainError::Unauthenticated(_) => Code::Unauthenticated,
            DomainError::Unimplemented(_) => Code::Unimplemented,
            DomainError::Unavailable(_) => Code::Unavailable,
            DomainError::Aborted(_) => Code::Aborted,
            DomainError::ResourceExhausted(_) => Code::ResourceExhausted,
            DomainError::Internal(_) => Code::Internal,
        }
    }
}

impl From<DomainError> for tonic::Status {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::InvalidArgument(violations) => {
                let message = format!("invalid argument: {}", describe(&violations));
                let mut details = ErrorDetails::new();
                for violation in violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                tonic::Status::with_error_details(Code::InvalidArgument, message, details)
            }
            DomainError::Internal(message) => {
                tracing::error!(%message, "internal error");
                tonic::Status::internal("internal error; see the control-plane log")
            }
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

/// Collects field violations so a request reports every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Records the violations of a nested check, if it failed with InvalidArgument.
    pub fn absorb<T>(&mut self, result: Result<T, DomainError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(DomainError::InvalidArgument(violations)) => {
                self.0.extend(violations);
                None
            }
            Err(other) => {
                self.add("", other.to_string());
                None
            }
        }
    }

    /// `Ok(())` when nothing was recorded.
    pub fn finish(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::InvalidArgument(self.0))
        }
    }
}

/// Result alias for domain operations.
pub type DomainResult<T> = Result<T, DomainError>;
