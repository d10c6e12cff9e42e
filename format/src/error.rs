use crate::id::ChunkId;
use crate::version::{FORMAT_NAME, FORMAT_VERSION, NEWEST_FORMAT_VERSION};

/// Everything that can go wrong while encoding or decoding repository objects.
///
/// Callers branch on the kind: `Corrupt` and `HashMismatch` mean the stored
/// bytes are bad (re-fetch, or report the object as damaged), while
/// `UnsupportedFormat` means this build is too old for the repository.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Stored bytes do not follow the format; the message says what is wrong.
    #[error("corrupt data: {0}")]
    Corrupt(String),

    /// A blob decoded cleanly but its keyed hash is not the id it is stored under.
    #[error("hash mismatch: expected chunk {expected}, got {actual}")]
    HashMismatch {
        /// The id the blob is stored under.
        expected: ChunkId,
        /// The keyed hash of the bytes actually decoded.
        actual: ChunkId,
    },

    /// The object names another format, or a version this build cannot read.
    #[error(
        "unsupported format {format:?} version {version} \
         (this build reads {FORMAT_NAME:?} versions 1 to {NEWEST_FORMAT_VERSION}, \
         each with its own reader)"
    )]
    UnsupportedFormat {
        /// The format name found in the object.
        format: String,
        /// The version found in the object.
        version: u32,
    },

    /// The caller asked for something the format cannot represent (for
    /// example manifest entries out of order, or a chunk larger than
    /// [`crate::pack::MAX_CHUNK_SIZE`]); this is a bug in the caller, not bad data.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// No key slot opens with the secret given (a wrong passphrase or
    /// catalog key). The message never says which slot was tried or why it
    /// failed, so it cannot help guess a passphrase slot by slot.
    #[error("key rejected: {0}")]
    KeyRejected(String),

    /// Reading from or writing to the caller's reader or writer failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// A JSON object could not be encoded, or a stored one could not be parsed.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

impl FormatError {
    /// True when the error says stored bytes are damaged or were never valid
    /// (as opposed to an I/O failure, a too-old build or a caller bug), so a
    /// verifier can report the object as corrupt.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            FormatError::Corrupt(_) | FormatError::HashMismatch { .. } | FormatError::Json(_)
        )
    }
}

/// Rejects objects that are not Coffer objects of format v1 (the v1
/// readers' check).
///
/// Version 0 never existed, so it is as unreadable as a future version.
pub(crate) fn check_format(format: &str, version: u32) -> Result<(), FormatError> {
    check_format_range(format, version, FORMAT_VERSION)
}

/// Rejects objects that are not Coffer objects of any version this build reads.
pub(crate) fn check_any_format(format: &str, version: u32) -> Result<(), FormatError> {
    check_format_range(format, version, NEWEST_FORMAT_VERSION)
}

fn check_format_range(format: &str, version: u32, newest: u32) -> Result<(), FormatError> {
    if format == FORMAT_NAME && (1..=newest).contains(&version) {
        return Ok(());
    }
    Err(FormatError::UnsupportedFormat {
        format: format.to_owned(),
        version,
    })
}
