//! The catalog's database errors, translated into domain errors in exactly
//! one place, for both backends.

use crate::error::DomainError;

/// Translates database errors in exactly one place: constraint violations
/// become domain errors, connection trouble becomes `Unavailable`.
pub(crate) fn from_sqlx(error: sqlx::Error, what: &str) -> DomainError {
    match &error {
        sqlx::Error::RowNotFound => DomainError::NotFound(what.to_string()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            DomainError::AlreadyExists(format!("{what} already exists"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            DomainError::FailedPrecondition(format!(
                "{what} refers to, or is referred to by, another resource"
            ))
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            DomainError::Unavailable(format!("catalog unavailable: {error}"))
        }
        _ => DomainError::Internal(format!("{what}: {error}")),
    }
}
