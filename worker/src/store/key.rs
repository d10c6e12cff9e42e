//! Object keys: relative `/`-separated paths that cannot leave the
//! repository root.

use super::error::StoreError;

/// Checks that `key` is a relative `/`-separated path without empty, `.` or
/// `..` segments, so that it cannot escape the repository root.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if key.starts_with('/') {
        return invalid("absolute");
    }
    if key.contains('\0') || key.contains('\\') {
        return invalid("contains NUL or a backslash");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return invalid("has an empty, '.' or '..' segment");
    }
    Ok(())
}
