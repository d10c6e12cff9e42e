//! Local paths in their one spelling: the rule the control plane applies to
//! what tenants send and the worker applies again before any I/O, written
//! once so the two can never disagree about which directory is meant.
//!
//! Nothing is rewritten: a path is either already normal or refused. An
//! absolute path starts with `/`, has no empty (`//`), `.` or `..`
//! component, no trailing `/` (except `/` itself), no NUL and at most
//! [`MAX_PATH_LEN`] bytes. "Beneath" compares whole components, so
//! `/data/ab` is not beneath `/data/a`.

/// Longest accepted absolute path, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Why a path is not in its one accepted spelling. The messages complete a
/// sentence whose subject is the path ("source_path must not end with '/'").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("must not be empty")]
    Empty,
    /// An absolute path was expected.
    #[error("must be an absolute path")]
    NotAbsolute,
    /// A relative path was expected.
    #[error("must be relative (no leading '/')")]
    NotRelative,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("must have at most {MAX_PATH_LEN} bytes")]
    TooLong,
    /// A NUL byte.
    #[error("must not contain NUL")]
    Nul,
    /// A trailing `/`.
    #[error("must not end with '/'")]
    TrailingSlash,
    /// An empty component (`a//b`).
    #[error("must not contain empty components ('//')")]
    EmptyComponent,
    /// A `.` component.
    #[error("must not contain '.' components")]
    Dot,
    /// A `..` component.
    #[error("must not contain '..' components")]
    DotDot,
}

/// Checks that `path` is a normalised absolute path (see the module
/// documentation).
pub fn check_absolute(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(());
    }
    check_len(path.as_bytes())?;
    check_components(rest.as_bytes())
}

/// Checks that `path` is a normalised relative path: not empty, no leading
/// or trailing `/`, no NUL, and every component neither empty, `.` nor
/// `..`. Bytes, not text: stored file names need not be UTF-8.
///
/// No length limit: a relative path names an entry beneath a root and is
/// resolved one component at a time, so a deep tree may exceed `PATH_MAX`.
/// Callers that store what a tenant typed bound it with [`check_len`].
pub fn check_relative(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.first() == Some(&b'/') {
        return Err(PathError::NotRelative);
    }
    check_components(path)
}

/// Checks the components of a non-empty path after its root.
fn check_components(path: &[u8]) -> Result<(), PathError> {
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.last() == Some(&b'/') {
        return Err(PathError::TrailingSlash);
    }
    for component in path.split(|byte| *byte == b'/') {
        match component {
            b"" => return Err(PathError::EmptyComponent),
            b"." => return Err(PathError::Dot),
            b".." => return Err(PathError::DotDot),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that `path` has at most [`MAX_PATH_LEN`] bytes.
pub fn check_len(path: &[u8]) -> Result<(), PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(())
}

/// The part of the normalised absolute `path` beneath `root`, without its
/// leading `/` (empty for `root` itself); `None` when `path` is not `root`
/// and not beneath it. Whole components are compared.
pub fn relative_to<'a>(path: &'a [u8], root: &[u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        return Some(rest);
    }
    if root == b"/" {
        return Some(rest);
    }
    rest.strip_prefix(b"/")
}

/// Whether the normalised absolute `path` is `root` or lies beneath it,
/// comparing whole components.
pub fn is_beneath(path: impl AsRef<[u8]>, root: impl AsRef<[u8]>) -> bool {
    relative_to(path.as_ref(), root.as_ref()).is_some()
}

/// Joins a normalised relative path (empty: none) below a normalised
/// absolute root with exactly one `/`.
pub fn join(root: &str, relative: &str) -> String {
    match (root, relative) {
        (_, "") => root.to_owned(),
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
            assert_eq!(check_absolute(good), Ok(()), "{good}");
        }
        let longest = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        assert_eq!(check_absolute(&longest), Ok(()));
    }

    #[test]
    fn every_other_spelling_is_refused_never_rewritten() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        for (bad, why) in [
            ("", PathError::Empty),
            ("data", PathError::NotAbsolute),
            ("./data", PathError::NotAbsolute),
            ("/data/", PathError::TrailingSlash),
            ("/a//", PathError::TrailingSlash),
            ("//", PathError::TrailingSlash),
            ("//data", PathError::EmptyComponent),
            ("/data//a", PathError::EmptyComponent),
            ("/data/./a", PathError::Dot),
            ("/data/.", PathError::Dot),
            ("/.", PathError::Dot),
            ("/data/../etc", PathError::DotDot),
            ("/..", PathError::DotDot),
            ("/data\0/a", PathError::Nul),
            (long.as_str(), PathError::TooLong),
        ] {
            assert_eq!(check_absolute(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_follow_the_same_rules() {
        for good in [&b"a"[..], b"a/b", b"a/\xff/c"] {
            assert_eq!(check_relative(good), Ok(()), "{good:?}");
        }
        for bad in [
            &b""[..],
            b"/a",
            b"a/",
            b"a//b",
            b"./a",
            b"a/../b",
            b"a/..",
            b"a\0",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_len(&[b'a'; MAX_PATH_LEN]), Ok(()));
        assert_eq!(
            check_len(&[b'a'; MAX_PATH_LEN + 1]),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn beneath_compares_components_not_strings() {
        assert!(is_beneath("/data/a", "/data/a"));
        assert!(is_beneath("/data/a/b", "/data/a"));
        assert!(!is_beneath("/data/ab", "/data/a"));
        assert!(!is_beneath("/data/a", "/data/ab"));
        assert!(!is_beneath("/data", "/data/a"));
        assert!(is_beneath("/anything", "/"));
        assert!(is_beneath("/", "/"));
        assert_eq!(relative_to(b"/data/x/y", b"/data"), Some(&b"x/y"[..]));
        assert_eq!(relative_to(b"/data", b"/data"), Some(&b""[..]));
        assert_eq!(relative_to(b"/x", b"/"), Some(&b"x"[..]));
        assert_eq!(relative_to(b"/other", b"/data"), None);
    }

    #[test]
    fn joins_with_one_slash() {
        assert_eq!(join("/", "a/b"), "/a/b");
        assert_eq!(join("/mnt", "a"), "/mnt/a");
        assert_eq!(join("/mnt", ""), "/mnt");
    }
}
