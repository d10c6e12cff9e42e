//! Why a store operation failed, and the one way an operation gives way to
//! its cancellation token.

use tokio_util::sync::CancellationToken;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation was cancelled through its token.
    #[error("cancelled")]
    Cancelled,
    /// The key does not exist.
    #[error("object {key:?} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create-only write found the key taken; nothing was written.
    #[error("object {key:?} already exists")]
    AlreadyExists {
        /// The key written.
        key: String,
    },
    /// The store is append-only (a backup-class worker's): it deletes nothing.
    #[error("refusing to delete {key:?}: this worker is append-only (class backup)")]
    DeleteRefused {
        /// The key a deletion was asked for.
        key: String,
    },
    /// S3 Object Lock keeps the object: it cannot be deleted yet.
    #[error("object {key:?} is locked{}", until.map(|u| format!(" until {}", u.to_rfc3339())).unwrap_or_default())]
    Locked {
        /// The key.
        key: String,
        /// Its retain-until date, when the server says.
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The object is in an archive storage class (GLACIER, DEEP_ARCHIVE)
    /// and must be restored on the S3 side before it can be read.
    #[error("object {key:?} is in storage class {class}: restore it on the S3 side (RestoreObject, or the provider's console) before reading it, then run again")]
    Archived {
        /// The key.
        key: String,
        /// Its storage class, as the server names it.
        class: String,
    },
    /// The key is not a valid relative object key.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The target cannot be turned into a store (missing fields, credentials).
    #[error("invalid storage target: {0}")]
    Config(String),
    /// A local I/O error of the filesystem store or of a file being uploaded.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed (after the client's own retries).
    #[error("S3 {operation} {key:?}: {message}")]
    S3 {
        /// The S3 operation, e.g. `PutObject`.
        operation: &'static str,
        /// The key (full, with the repository prefix) or prefix involved.
        key: String,
        /// The error with its causes.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed: configuration and key errors
    /// will not, I/O and service errors may.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            StoreError::Config(_)
                | StoreError::InvalidKey { .. }
                | StoreError::Cancelled
                | StoreError::AlreadyExists { .. }
                | StoreError::DeleteRefused { .. }
                | StoreError::Locked { .. }
                | StoreError::Archived { .. }
        )
    }

    pub(super) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs `future` unless `cancel` fires first.
pub(super) async fn cancellable<T>(
    cancel: &CancellationToken,
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(StoreError::Cancelled),
        result = future => result,
    }
}
