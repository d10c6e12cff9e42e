//! The local paths a run touches, checked where the I/O happens.
//!
//! - [`normalise`]: the one spelling of an absolute path the worker accepts
//!   (no `.`, `..`, empty or doubled components), and containment by
//!   components ([`is_within`]).
//! - [`grant`]: every backup source, restore destination and filesystem
//!   repository must carry a grant from the control plane *and* lie beneath
//!   one of this worker's own roots, and never inside a protected path.
//! - [`beneath`]: opening and creating entries beneath a directory without
//!   following a symlink in any component (`openat2`).

pub mod beneath;
pub mod grant;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a path is not in its one accepted spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("the path is empty")]
    Empty,
    /// The path does not start with `/`.
    #[error("the path is not absolute")]
    Relative,
    /// The path holds a NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// A component is empty (`a//b`), `.` or `..`.
    #[error("the path has an empty, '.' or '..' component")]
    BadComponent,
}

/// Checks that `path` is absolute and normalised and returns it; a single
/// trailing `/` is dropped (`/data/` is `/data`), anything else that is not
/// already normal is refused rather than rewritten, so that the worker and
/// the control plane can never disagree about which directory is meant.
pub fn normalise(path: &str) -> Result<PathBuf, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::Relative);
    };
    if rest.is_empty() {
        return Ok(PathBuf::from("/"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(PathError::BadComponent);
    }
    check_relative(rest.as_bytes())?;
    Ok(PathBuf::from(path.strip_suffix('/').unwrap_or(path)))
}

/// Checks a relative `/`-separated path: not empty, no NUL, and every
/// component non-empty and neither `.` nor `..`.
pub fn check_relative(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.first() == Some(&b'/') {
        return Err(PathError::BadComponent);
    }
    let bad = path
        .split(|byte| *byte == b'/')
        .any(|component| matches!(component, b"" | b"." | b".."));
    if bad {
        return Err(PathError::BadComponent);
    }
    Ok(())
}

/// Whether normalised `path` is `root` or lies beneath it, compared by
/// whole components (`/data2` is not within `/data`).
pub fn is_within(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

/// `path` relative to `root` as raw bytes (empty for `root` itself), or
/// `None` when it is not within it.
pub fn relative_to(path: &Path, root: &Path) -> Option<Vec<u8>> {
    path.strip_prefix(root)
        .ok()
        .map(|rest| rest.as_os_str().as_bytes().to_vec())
}

/// Joins a relative path of raw bytes below `root`.
pub fn join_relative(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_normal_spelling_is_accepted() {
        assert_eq!(normalise("/data/a"), Ok(PathBuf::from("/data/a")));
        assert_eq!(normalise("/data/a/"), Ok(PathBuf::from("/data/a")));
        assert_eq!(normalise("/"), Ok(PathBuf::from("/")));
        assert_eq!(normalise(""), Err(PathError::Empty));
        assert_eq!(normalise("data"), Err(PathError::Relative));
        assert_eq!(normalise("/a\0b"), Err(PathError::Nul));
        for bad in [
            "/a//b", "/a/./b", "/a/../b", "/..", "//", "/a//", "/.", "/a/.",
        ] {
            assert_eq!(normalise(bad), Err(PathError::BadComponent), "{bad:?}");
        }
    }

    #[test]
    fn containment_is_by_components() {
        let root = Path::new("/data");
        assert!(is_within(Path::new("/data"), root));
        assert!(is_within(Path::new("/data/x/y"), root));
        assert!(!is_within(Path::new("/data2"), root));
        assert!(!is_within(Path::new("/dat"), root));
        assert!(is_within(Path::new("/anything"), Path::new("/")));
        assert_eq!(
            relative_to(Path::new("/data/x/y"), root),
            Some(b"x/y".to_vec())
        );
        assert_eq!(relative_to(Path::new("/data"), root), Some(Vec::new()));
        assert_eq!(relative_to(Path::new("/other"), root), None);
    }

    #[test]
    fn relative_paths_stay_relative() {
        assert!(check_relative(b"a/b").is_ok());
        for bad in [&b""[..], b"/a", b"a//b", b"a/..", b"./a", b"a/", b"a\0"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }
}
