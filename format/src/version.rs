//! The format's name and version, written into every self-describing object.

/// Name written into every self-describing object (config, index files,
/// manifests), so a reader can tell a Coffer repository from anything else.
pub const FORMAT_NAME: &str = "coffer";

/// The format version this crate writes and the newest one it reads. Any
/// change to an encoding that an older reader would misread bumps it.
pub const FORMAT_VERSION: u32 = 1;
