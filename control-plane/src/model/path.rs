//! Local paths as the control plane accepts them: one spelling per path, so
//! that "beneath a grant's root" and "the same repository" are questions
//! about components, never about how a caller happened to type the path.
//! The rule itself is `coffer_format::local_path`, shared with the worker,
//! which checks every path again before any I/O; here it is applied to
//! request fields, and a refusal names the field.

use coffer_format::local_path::{self, PathError};

use crate::error::{DomainError, DomainResult};

pub use coffer_format::local_path::{is_beneath, join};

/// Checks that `value` is a normalised absolute path (see
/// [`coffer_format::local_path`]). Anything else is INVALID_ARGUMENT naming
/// `field`; nothing is rewritten, so what is stored is exactly what the
/// caller sent.
pub fn check_normalised_absolute(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    local_path::check_absolute(value).map_err(|error| invalid(field, error))
}

/// Checks that `value` is a normalised relative path (an NFS path below the
/// mount, a prefix): empty, or components without `.`, `..`, empty ones, a
/// leading or trailing slash or NUL, at most
/// [`local_path::MAX_PATH_LEN`] bytes.
pub fn check_normalised_relative(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Ok(());
    }
    local_path::check_len(value.as_bytes())
        .and_then(|()| local_path::check_relative(value.as_bytes()))
        .map_err(|error| invalid(field, error))
}

fn invalid(field: &str, error: PathError) -> DomainError {
    DomainError::invalid(field, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_path_names_its_field_and_the_rule() {
        for (bad, message) in [
            ("", "is required"),
            ("data", "must be an absolute path"),
            ("/data/", "must not end with '/'"),
            ("/data/../etc", "must not contain '..' components"),
        ] {
            let error = check_normalised_absolute("job.source_path", bad).expect_err(bad);
            assert!(
                matches!(&error, DomainError::InvalidArgument(v)
                    if v[0].field == "job.source_path" && v[0].description == message),
                "{bad:?}: {error:?}"
            );
        }
        assert!(check_normalised_absolute("f", "/data/a").is_ok());
    }

    #[test]
    fn relative_fields_may_be_empty_and_follow_the_shared_rule() {
        for good in ["", "a", "a/b"] {
            assert!(check_normalised_relative("f", good).is_ok(), "{good}");
        }
        let long = "a".repeat(local_path::MAX_PATH_LEN + 1);
        for bad in ["/a", "a/", "a//b", "./a", "a/../b", "a\0", long.as_str()] {
            let error = check_normalised_relative("target.nfs_path", bad).expect_err(bad);
            assert!(
                matches!(&error, DomainError::InvalidArgument(v) if v[0].field == "target.nfs_path"),
                "{bad:?}: {error:?}"
            );
        }
    }
}
