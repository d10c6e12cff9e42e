//! Domain types: validated, transport-free. Handlers convert protos into these
//! at the edge; the catalog stores and returns them.

pub mod audit;
pub mod bucket;
pub mod command;
pub mod configuration;
pub mod endpoint;
pub mod grant;
pub mod job;
pub mod key_slot;
pub mod limits;
pub mod metadata;
pub mod notification;
pub mod object;
pub mod path;
pub mod retention;
pub mod run;
pub mod secret;
pub mod snapshot;
pub mod snapshot_diff;
pub mod tag;
pub mod user;
pub mod worker_class;

use uuid::Uuid;

use crate::error::{DomainError, DomainResult};

/// Parses a required UUID field.
pub fn parse_id(field: &str, value: &str) -> DomainResult<Uuid> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| DomainError::invalid(field, "must be a UUID"))
}

/// Parses an optional UUID field (empty means unset).
pub fn parse_optional_id(field: &str, value: &str) -> DomainResult<Option<Uuid>> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_id(field, value).map(Some)
}

/// Checks a free-form text field against a maximum length in characters.
pub fn check_len(field: &str, value: &str, min: usize, max: usize) -> DomainResult<()> {
    let len = value.chars().count();
    if len < min {
        return Err(DomainError::invalid(
            field,
            if min == 1 {
                "is required".to_string()
            } else {
                format!("must have at least {min} characters")
            },
        ));
    }
    if len > max {
        return Err(DomainError::invalid(
            field,
            format!("must have at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks a name: 1-`max` characters of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn check_name(field: &str, value: &str, max: usize) -> DomainResult<()> {
    check_len(field, value, 1, max)?;
    let valid_first = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_rest = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if !valid_first || !valid_rest {
        return Err(DomainError::invalid(
            field,
            "may contain only lowercase letters, digits, '_', '.' and '-', and must start with a letter or digit",
        ));
    }
    Ok(())
}

/// Checks an absolute path as a worker would see it: normalised, in the one
/// spelling [`path::check_normalised_absolute`] accepts.
pub fn check_absolute_path(field: &str, value: &str) -> DomainResult<()> {
    path::check_normalised_absolute(field, value)
}

/// Checks a relative path (a prefix or a path below a root).
pub fn check_relative_path(field: &str, value: &str) -> DomainResult<()> {
    if value.starts_with('/') {
        return Err(DomainError::invalid(
            field,
            "must be relative (no leading '/')",
        ));
    }
    if value.contains('\0') {
        return Err(DomainError::invalid(field, "must not contain NUL"));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(DomainError::invalid(field, "must not contain '..'"));
    }
    check_len(field, value, 0, 1024)
}
