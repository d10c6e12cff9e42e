//! The format's name and versions, written into every self-describing object.

/// Name written into every self-describing object (config, index files,
/// manifests), so a reader can tell a Coffer repository from anything else.
pub const FORMAT_NAME: &str = "coffer";

/// The version of format v1 objects: what the v1 writers write and the
/// only version the v1 readers accept (they report a v2 object as
/// unsupported, so a caller knows to use the v2 reader).
pub const FORMAT_VERSION: u32 = 1;

/// The version of format v2 (encrypted, authenticated) repositories.
pub const FORMAT_VERSION_2: u32 = 2;

/// The newest version this build reads.
pub const NEWEST_FORMAT_VERSION: u32 = FORMAT_VERSION_2;
