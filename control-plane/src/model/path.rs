//! Local paths as the control plane accepts them: one spelling per path, so
//! that "beneath a grant's root" and "the same repository" are questions
//! about components, never about how a caller happened to type the path.

use crate::error::{DomainError, DomainResult};

/// Longest accepted local path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Checks that `value` is a normalised absolute path: it starts with `/`,
/// has no empty, `.` or `..` component, no trailing slash (except `/`
/// itself), no NUL and at most [`MAX_PATH_LEN`] bytes. Anything else is
/// INVALID_ARGUMENT naming `field`; nothing is rewritten, so what is stored
/// is exactly what the caller sent.
pub fn check_normalised_absolute(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    if !value.starts_with('/') {
        return Err(DomainError::invalid(field, "must be an absolute path"));
    }
    if value == "/" {
        return Ok(());
    }
    check_len(field, value)?;
    check_components(field, &value[1..])
}

/// Checks that `value` is a normalised relative path (an NFS path below the
/// mount): empty, or components without `.`, `..`, empty ones, a leading or
/// trailing slash or NUL, at most [`MAX_PATH_LEN`] bytes.
pub fn check_normalised_relative(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Ok(());
    }
    if value.starts_with('/') {
        return Err(DomainError::invalid(
            field,
            "must be relative (no leading '/')",
        ));
    }
    check_components(field, value)
}

fn check_len(field: &str, value: &str) -> DomainResult<()> {
    if value.len() > MAX_PATH_LEN {
        return Err(DomainError::invalid(
            field,
            format!("must have at most {MAX_PATH_LEN} bytes"),
        ));
    }
    Ok(())
}

fn check_components(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value)?;
    if value.contains('\0') {
        return Err(DomainError::invalid(field, "must not contain NUL"));
    }
    if value.ends_with('/') {
        return Err(DomainError::invalid(field, "must not end with '/'"));
    }
    for component in value.split('/') {
        let problem = match component {
            "" => "must not contain empty components ('//')",
            "." => "must not contain '.' components",
            ".." => "must not contain '..' components",
            _ => continue,
        };
        return Err(DomainError::invalid(field, problem));
    }
    Ok(())
}

/// Whether the normalised absolute `path` is `root` or lies beneath it,
/// comparing whole components: `/data/a` is not beneath `/data/ab`.
pub fn is_beneath(path: &str, root: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Joins a normalised relative path below a normalised absolute root.
pub fn join(root: &str, relative: &str) -> String {
    match (root, relative) {
        (_, "") => root.to_string(),
        ("/", _) => format!("/{relative}"),
        _ => format!("{root}/{relative}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_absolute_paths_are_accepted() {
        for good in [
            "/",
            "/data",
            "/data/a b/c",
            "/.hidden/x",
            "/a/..b/c..",
            "/ä/ö",
        ] {
            assert!(check_normalised_absolute("f", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn every_other_spelling_is_refused() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        for bad in [
            "",
            "data",
            "./data",
            "/data/",
            "//data",
            "/data//a",
            "/data/./a",
            "/data/.",
            "/data/../etc",
            "/..",
            "/data\0/a",
            long.as_str(),
        ] {
            let error = check_normalised_absolute("job.source_path", bad).expect_err(bad);
            assert!(
                matches!(&error, DomainError::InvalidArgument(v) if v[0].field == "job.source_path"),
                "{bad:?}: {error:?}"
            );
        }
    }

    #[test]
    fn relative_paths_follow_the_same_rules() {
        for good in ["", "a", "a/b"] {
            assert!(check_normalised_relative("f", good).is_ok(), "{good}");
        }
        for bad in ["/a", "a/", "a//b", "./a", "a/../b", "a\0"] {
            assert!(check_normalised_relative("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn beneath_compares_components_not_strings() {
        assert!(is_beneath("/data/a", "/data/a"));
        assert!(is_beneath("/data/a/b", "/data/a"));
        assert!(!is_beneath("/data/ab", "/data/a"));
        assert!(!is_beneath("/data/a", "/data/ab"));
        assert!(!is_beneath("/data", "/data/a"));
        assert!(is_beneath("/anything", "/"));
    }

    #[test]
    fn joins_with_one_slash() {
        assert_eq!(join("/", "a/b"), "/a/b");
        assert_eq!(join("/mnt", "a"), "/mnt/a");
        assert_eq!(join("/mnt", ""), "/mnt");
    }
}
