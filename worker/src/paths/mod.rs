//! The local paths a run touches, checked where the I/O happens.
//!
//! - [`normalise`]: the one spelling of an absolute path the worker accepts
//!   (`coffer_format::local_path`, the control plane's rule: no `.`, `..`,
//!   empty or doubled components, no trailing `/`), and containment by
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

use coffer_format::local_path;

pub use coffer_format::local_path::{check_relative, PathError};

/// Checks that `path` is absolute and in its one normal spelling (the rule
/// of [`coffer_format::local_path`], the control plane's too) and returns
/// it. Nothing is rewritten: `/data/` is refused, not read as `/data`, so
/// the worker and the control plane never disagree about which directory
/// is meant.
pub fn normalise(path: &str) -> Result<PathBuf, PathError> {
    local_path::check_absolute(path)?;
    Ok(PathBuf::from(path))
}

/// Whether normalised `path` is `root` or lies beneath it, compared by
/// whole components (`/data2` is not within `/data`).
pub fn is_within(path: &Path, root: &Path) -> bool {
    local_path::is_beneath(path.as_os_str().as_bytes(), root.as_os_str().as_bytes())
}

/// `path` relative to `root` as raw bytes (empty for `root` itself), or
/// `None` when it is not within it.
pub fn relative_to(path: &Path, root: &Path) -> Option<Vec<u8>> {
    local_path::relative_to(path.as_os_str().as_bytes(), root.as_os_str().as_bytes())
        .map(<[u8]>::to_vec)
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
    fn only_the_normal_spelling_is_accepted_and_nothing_is_rewritten() {
        assert_eq!(normalise("/data/a"), Ok(PathBuf::from("/data/a")));
        assert_eq!(normalise("/"), Ok(PathBuf::from("/")));
        assert_eq!(normalise("/data/a/"), Err(PathError::TrailingSlash));
        assert_eq!(normalise("data"), Err(PathError::NotAbsolute));
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
}
