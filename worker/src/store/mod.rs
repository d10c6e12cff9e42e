//! Object stores that hold a repository: a directory on a filesystem (or an
//! NFS mount) or a prefix in an S3 bucket.
//!
//! Keys are relative, `/`-separated paths such as `data/ab/ab12…` or
//! `snapshots/<run>.json`; the store maps them below its repository root. Every
//! operation takes a [`CancellationToken`] and returns [`StoreError::Cancelled`]
//! promptly once it fires.

mod error;
pub mod filesystem;
mod key;
pub mod lock;
pub mod s3;
mod s3_metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_proto::v1::ResolvedTarget;
use tokio_util::sync::CancellationToken;

use crate::bandwidth::{Direction, Throttle};
use error::cancellable;
pub use error::StoreError;
pub use filesystem::FilesystemStore;
pub use key::validate_key;
pub use lock::{lock_action, LockAction, LockMode, ObjectLock};
pub use s3::{S3Location, S3Store};

/// A repository's object store.
#[derive(Debug, Clone)]
pub enum Store {
    /// A directory (local disk or NFS mount).
    Filesystem(FilesystemStore),
    /// A prefix in an S3 bucket.
    S3(S3Store),
}

impl Store {
    /// Opens the store a resolved target points at, with `repository_prefix`
    /// (relative, may be empty) appended below the target's own root: the
    /// target's filesystem path joined with it, or the bucket's prefix
    /// followed by it.
    ///
    /// A target with a filesystem path (its own or its bucket's) is a
    /// filesystem store; a target with an S3 bucket name is an S3 store
    /// signing with the credentials its lease allows ([`s3::credentials_for`])
    /// and writing packs in the bucket's storage class.
    pub async fn open(
        target: &ResolvedTarget,
        repository_prefix: &str,
    ) -> Result<Self, StoreError> {
        let bucket = target.bucket.as_ref();
        let filesystem_path = if !target.filesystem_path.is_empty() {
            Some(target.filesystem_path.as_str())
        } else {
            bucket
                .map(|b| b.filesystem_path.as_str())
                .filter(|p| !p.is_empty())
        };
        if let Some(root) = filesystem_path {
            let root = join_fs_prefix(Path::new(root), repository_prefix)?;
            return Ok(Store::Filesystem(FilesystemStore::new(root)?));
        }
        let Some(bucket) = bucket.filter(|b| !b.bucket.is_empty()) else {
            return Err(StoreError::Config(
                "target has neither a filesystem path nor an S3 bucket".into(),
            ));
        };
        let location = S3Location {
            endpoint: s3::endpoint_for(bucket),
            bucket: bucket.bucket.clone(),
            region: bucket.region.clone(),
            force_path_style: bucket.force_path_style,
            prefix: join_key_prefix(&bucket.prefix, repository_prefix),
        };
        let credentials = s3::credentials_for(bucket).await?;
        let store = S3Store::new(location, credentials)
            .await?
            .with_pack_storage_class(&bucket.pack_storage_class)?;
        Ok(Store::S3(store))
    }

    /// The same store, append-only: every deletion through it fails with
    /// [`StoreError::DeleteRefused`], whatever a lease asks. What a
    /// backup-class worker opens, so that even a control plane that
    /// assigned it a deleting run, or a bug in one, deletes nothing.
    pub fn refusing_deletes(mut self) -> Self {
        match &mut self {
            Store::Filesystem(fs) => fs.deletes_refused = true,
            Store::S3(s3) => s3.deletes_refused = true,
        }
        self
    }

    /// The same store, paying for every byte it moves into `throttle`'s
    /// bandwidth limits.
    pub fn throttled(mut self, throttle: Arc<Throttle>) -> Self {
        match &mut self {
            Store::Filesystem(fs) => fs.throttle = throttle,
            Store::S3(s3) => s3.throttle = throttle,
        }
        self
    }

    /// The bandwidth limits the store's transfers pay into.
    pub fn throttle(&self) -> &Arc<Throttle> {
        match self {
            Store::Filesystem(fs) => &fs.throttle,
            Store::S3(s3) => &s3.throttle,
        }
    }

    /// Waits until `bytes` may move `direction` under the store's limits.
    async fn pay(
        &self,
        direction: Direction,
        bytes: u64,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        if self.throttle().take(direction, bytes, cancel).await {
            Ok(())
        } else {
            Err(StoreError::Cancelled)
        }
    }

    /// Whether deletions are refused ([`Store::refusing_deletes`]).
    pub fn refuses_deletes(&self) -> bool {
        match self {
            Store::Filesystem(fs) => fs.deletes_refused,
            Store::S3(s3) => s3.deletes_refused,
        }
    }

    /// The same store writing with `lock` after checking that its bucket
    /// has Object Lock enabled. A filesystem store cannot lock anything
    /// and is refused: data that must be immutable is never written where
    /// it would not be.
    pub async fn with_object_lock(
        self,
        lock: ObjectLock,
        cancel: &CancellationToken,
    ) -> Result<Self, StoreError> {
        match self {
            Store::Filesystem(_) => Err(StoreError::Config(
                "Object Lock is required, but the repository is on a filesystem".into(),
            )),
            Store::S3(s3) => {
                s3.check_object_lock(cancel).await?;
                Ok(Store::S3(s3.with_object_lock(lock)))
            }
        }
    }

    /// The Object Lock objects are written with, if any.
    pub fn object_lock(&self) -> Option<&ObjectLock> {
        match self {
            Store::Filesystem(_) => None,
            Store::S3(s3) => s3.object_lock(),
        }
    }

    /// The retain-until date of object `key`, `None` when it is not locked
    /// (always on a filesystem); [`StoreError::NotFound`] when it does not exist.
    pub async fn retain_until(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        validate_key(key)?;
        match self {
            Store::Filesystem(_) => Ok(None),
            Store::S3(s3) => cancellable(cancel, s3.retain_until(key)).await,
        }
    }

    /// Moves the lock of object `key` to `until` (a store with Object Lock
    /// only). Maintenance only: refused like a deletion on an append-only
    /// store, since a lock extended without end would keep garbage forever.
    pub async fn extend_lock(
        &self,
        key: &str,
        until: chrono::DateTime<chrono::Utc>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        validate_key(key)?;
        if self.refuses_deletes() {
            return Err(StoreError::DeleteRefused { key: key.into() });
        }
        match self {
            Store::Filesystem(_) => Err(StoreError::Config(
                "a filesystem repository has no Object Lock".into(),
            )),
            Store::S3(s3) => s3.extend_lock(key, until, cancel).await,
        }
    }

    /// A short description of where the store writes, without secrets.
    pub fn describe(&self) -> String {
        match self {
            Store::Filesystem(fs) => format!("filesystem {}", fs.root().display()),
            Store::S3(s3) => s3.describe(),
        }
    }

    /// Stores the content of the local file at `path` under `key`, replacing
    /// any previous object. Returns the number of bytes written.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        self.upload_file(key, path, false, cancel).await
    }

    /// Stores the content of the local file at `path` under `key` only if
    /// no object has that key: [`StoreError::AlreadyExists`] otherwise, and
    /// the existing object is left as it was. For objects that must never
    /// be replaced (snapshot manifests). Returns the number of bytes written.
    pub async fn put_file_new(
        &self,
        key: &str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        self.upload_file(key, path, true, cancel).await
    }

    async fn upload_file(
        &self,
        key: &str,
        path: &Path,
        create_only: bool,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        validate_key(key)?;
        if self.throttle().limits(Direction::Upload) {
            let length = tokio::fs::metadata(path)
                .await
                .map_err(|source| StoreError::Io {
                    context: format!("reading the size of {}", path.display()),
                    source,
                })?
                .len();
            self.pay(Direction::Upload, length, cancel).await?;
        }
        match (self, create_only) {
            (Store::Filesystem(fs), false) => fs.put_file(key, path, cancel).await,
            (Store::Filesystem(fs), true) => fs.put_file_new(key, path, cancel).await,
            (Store::S3(s3), false) => s3.put_file(key, path, cancel).await,
            (Store::S3(s3), true) => s3.put_file_new(key, path, cancel).await,
        }
    }

    /// Stores `bytes` under `key`, replacing any previous object.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.put_bytes_in(key, bytes, false, cancel).await
    }

    /// Stores a data pack under `key`: as [`Store::put_bytes`], in the
    /// storage class the bucket (or the run's job) chose for packs. Tree
    /// packs are written with `put_bytes`, in the default class, since an
    /// incremental backup reads its parent's trees.
    pub async fn put_data_pack(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.put_bytes_in(key, bytes, true, cancel).await
    }

    async fn put_bytes_in(
        &self,
        key: &str,
        bytes: Vec<u8>,
        data_pack: bool,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        validate_key(key)?;
        self.pay(Direction::Upload, bytes.len() as u64, cancel)
            .await?;
        match self {
            Store::Filesystem(fs) => fs.put_bytes(key, bytes, cancel).await,
            Store::S3(s3) => {
                let class = data_pack
                    .then(|| s3.pack_storage_class().cloned())
                    .flatten();
                s3.put_bytes(key, bytes, class, cancel).await
            }
        }
    }

    /// Reads the whole object `key`; [`StoreError::NotFound`] when it does not exist.
    pub async fn get_bytes(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, StoreError> {
        validate_key(key)?;
        let bytes = cancellable(cancel, async {
            match self {
                Store::Filesystem(fs) => fs.get_bytes(key).await,
                Store::S3(s3) => s3.get(key, None).await,
            }
        })
        .await?;
        // Paid for once received: the size is known only then.
        self.pay(Direction::Download, bytes.len() as u64, cancel)
            .await?;
        Ok(bytes)
    }

    /// Reads `length` bytes of object `key` from `offset` (fewer when the
    /// object ends first); [`StoreError::NotFound`] when it does not exist.
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, StoreError> {
        validate_key(key)?;
        let bytes = cancellable(cancel, async {
            match self {
                Store::Filesystem(fs) => fs.get_range(key, offset, length).await,
                Store::S3(s3) => s3.get(key, Some((offset, length))).await,
            }
        })
        .await?;
        self.pay(Direction::Download, bytes.len() as u64, cancel)
            .await?;
        Ok(bytes)
    }

    /// Whether the object `key` exists.
    pub async fn exists(&self, key: &str, cancel: &CancellationToken) -> Result<bool, StoreError> {
        validate_key(key)?;
        cancellable(cancel, async {
            match self {
                Store::Filesystem(fs) => fs.exists(key).await,
                Store::S3(s3) => s3.exists(key).await,
            }
        })
        .await
    }

    /// Every key starting with `prefix` (a plain string prefix, e.g. `data/`
    /// or `snapshots/`; empty lists everything), sorted.
    pub async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, StoreError> {
        let listed = self.list_with_sizes(prefix, cancel).await?;
        Ok(listed.into_iter().map(|(key, _)| key).collect())
    }

    /// Like [`Store::list`], with each object's size in bytes.
    pub async fn list_with_sizes(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut keys = match self {
            Store::Filesystem(fs) => fs.list(prefix, cancel).await?,
            Store::S3(s3) => s3.list(prefix, cancel).await?,
        };
        keys.sort_unstable();
        Ok(keys)
    }

    /// Deletes the object `key`; deleting a missing object succeeds. An
    /// append-only store refuses ([`StoreError::DeleteRefused`]); under
    /// Object Lock, a locked object fails with [`StoreError::Locked`] and
    /// stays as it was.
    pub async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        validate_key(key)?;
        if self.refuses_deletes() {
            return Err(StoreError::DeleteRefused { key: key.into() });
        }
        cancellable(cancel, async {
            match self {
                Store::Filesystem(fs) => fs.delete(key).await,
                Store::S3(s3) => s3.delete(key, cancel).await,
            }
        })
        .await
    }
}

/// Joins a repository prefix below a filesystem root, refusing prefixes that
/// would leave it.
fn join_fs_prefix(root: &Path, prefix: &str) -> Result<PathBuf, StoreError> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(root.to_path_buf());
    }
    validate_key(prefix)?;
    Ok(root.join(prefix))
}

/// Joins two S3 key prefixes with a single `/`, dropping empty parts.
fn join_key_prefix(a: &str, b: &str) -> String {
    [a.trim_matches('/'), b.trim_matches('/')]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_the_root_are_rejected() {
        for key in ["", "/abs", "a/../b", "..", "a//b", "./a", "a/", "a\\b"] {
            assert!(validate_key(key).is_err(), "{key:?} should be rejected");
        }
        for key in ["a", "data/ab/abcdef", "snapshots/x.json", "a..b/c"] {
            assert!(validate_key(key).is_ok(), "{key:?} should be accepted");
        }
    }

    #[test]
    fn key_prefixes_join_with_one_slash() {
        assert_eq!(join_key_prefix("", ""), "");
        assert_eq!(join_key_prefix("backups/", "/repo"), "backups/repo");
        assert_eq!(join_key_prefix("", "repo"), "repo");
        assert_eq!(join_key_prefix("b", ""), "b");
    }
}
