//! A repository in a local directory or on an NFS mount.
//!
//! Writes are atomic and durable: content goes to a temporary file in the
//! destination directory, which is fsynced, renamed into place, and then the
//! directory is fsynced, so a crash leaves either the old object or the new
//! one, never a torn one. Temporary files start with [`TEMP_PREFIX`] and are
//! never listed. A create-only write links the temporary file into place
//! instead of renaming it: `link` fails on an existing name, so nothing is
//! replaced even when two writers race.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::error::StoreError;

/// Name prefix of temporary files written before their rename into place.
pub const TEMP_PREFIX: &str = ".coffer-tmp-";

/// Copy buffer size; cancellation is checked once per buffer.
const COPY_BUFFER: usize = 1 << 20;

/// A repository rooted at a directory.
#[derive(Debug, Clone)]
pub struct FilesystemStore {
    root: PathBuf,
    /// Append-only: every deletion is refused (a backup-class worker).
    pub(super) deletes_refused: bool,
    /// The bandwidth limits its transfers pay into (none by default).
    pub(super) throttle: std::sync::Arc<crate::bandwidth::Throttle>,
}

/// What to write into an object.
enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl FilesystemStore {
    /// A store rooted at `root`, which must be absolute. The directory is
    /// created on the first write.
    pub fn new(root: PathBuf) -> Result<Self, StoreError> {
        if !root.is_absolute() {
            return Err(StoreError::Config(format!(
                "filesystem repository path {} is not absolute",
                root.display()
            )));
        }
        Ok(Self {
            root,
            deletes_refused: false,
            throttle: crate::bandwidth::Throttle::unlimited(),
        })
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        debug_assert!(super::key::validate_key(key).is_ok());
        self.root.join(key)
    }

    pub(super) async fn put_file(
        &self,
        key: &str,
        source: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        self.write(key, Content::File(source.to_path_buf()), cancel)
            .await
    }

    pub(super) async fn put_file_new(
        &self,
        key: &str,
        source: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let destination = self.path_of(key);
        let content = Content::File(source.to_path_buf());
        let cancel = cancel.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            write_atomically(&destination, content, Placement::CreateNew(key), &cancel)
        })
        .await
        .map_err(|e| StoreError::io("filesystem write task", io::Error::other(e)))?
    }

    pub(super) async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.write(key, Content::Bytes(bytes), cancel)
            .await
            .map(|_| ())
    }

    async fn write(
        &self,
        key: &str,
        content: Content,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let destination = self.path_of(key);
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            write_atomically(&destination, content, Placement::Replace, &cancel)
        })
        .await
        .map_err(|e| StoreError::io("filesystem write task", io::Error::other(e)))?
    }

    // Reads, existence checks and deletions give way to cancellation in
    // `Store`, which wraps each of them whole.
    pub(super) async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key);
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::NotFound { key: key.clone() },
                _ => StoreError::io(format!("opening {}", path.display()), e),
            })?;
            let mut buffer = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
            let mut filled = 0;
            while filled < buffer.len() {
                let read = file
                    .read_at(&mut buffer[filled..], offset + filled as u64)
                    .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            // A short read (the object is shorter than asked) returns
            // what is there, like an S3 range past the end.
            buffer.truncate(filled);
            Ok(buffer)
        })
        .await
        .map_err(|e| StoreError::io("filesystem read task", io::Error::other(e)))?
    }

    pub(super) async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key);
        tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound { key: key.into() },
            _ => StoreError::io(format!("reading {}", path.display()), e),
        })
    }

    pub(super) async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path_of(key);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format!("checking {}", path.display()), e)),
        }
    }

    pub(super) async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || list_keys(&root, &prefix, &cancel))
            .await
            .map_err(|e| StoreError::io("filesystem list task", io::Error::other(e)))?
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("deleting {}", path.display()), e)),
        }
    }
}

/// How a written temporary file takes its place.
enum Placement {
    /// Renamed over whatever is there.
    Replace,
    /// Linked under its name, which must be free (the key, for the error).
    CreateNew(String),
}

/// Writes `content` to `destination` through a temporary file in the same
/// directory; returns the number of bytes written.
fn write_atomically(
    destination: &Path,
    content: Content,
    placement: Placement,
    cancel: &CancellationToken,
) -> Result<u64, StoreError> {
    let dir = destination
        .parent()
        .ok_or_else(|| StoreError::Config(format!("{} has no parent", destination.display())))?;
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    let temp_path = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let result = write_temp_and_place(&temp_path, destination, content, placement, cancel);
    if result.is_err() || matches!(result, Ok((_, true))) {
        // Best effort: the temporary file is invisible to readers either way.
        let _ = fs::remove_file(&temp_path);
    }
    result.map(|(written, _)| written)
}

/// Writes the temporary file and puts it in place; returns the bytes
/// written and whether the temporary name is still there (after a link).
fn write_temp_and_place(
    temp_path: &Path,
    destination: &Path,
    content: Content,
    placement: Placement,
    cancel: &CancellationToken,
) -> Result<(u64, bool), StoreError> {
    let temp_context = || format!("writing {}", temp_path.display());
    let mut temp = File::options()
        .write(true)
        .create_new(true)
        .open(temp_path)
        .map_err(|e| StoreError::io(temp_context(), e))?;
    let written = match content {
        Content::Bytes(bytes) => {
            temp.write_all(&bytes)
                .map_err(|e| StoreError::io(temp_context(), e))?;
            bytes.len() as u64
        }
        Content::File(source) => copy_cancellable(&source, &mut temp, cancel)?,
    };
    temp.sync_all()
        .map_err(|e| StoreError::io(temp_context(), e))?;
    drop(temp);
    if cancel.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let linked = match placement {
        Placement::Replace => {
            fs::rename(temp_path, destination)
                .map_err(|e| StoreError::io(format!("renaming to {}", destination.display()), e))?;
            false
        }
        Placement::CreateNew(key) => {
            fs::hard_link(temp_path, destination).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { key },
                _ => StoreError::io(format!("linking to {}", destination.display()), e),
            })?;
            true
        }
    };
    sync_parent_dir(destination)?;
    Ok((written, linked))
}

fn copy_cancellable(
    source: &Path,
    destination: &mut File,
    cancel: &CancellationToken,
) -> Result<u64, StoreError> {
    let read_context = || format!("reading {}", source.display());
    let mut input = File::open(source).map_err(|e| StoreError::io(read_context(), e))?;
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let n = match input.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io(read_context(), e)),
        };
        destination
            .write_all(&buffer[..n])
            .map_err(|e| StoreError::io("writing temporary object", e))?;
        total += n as u64;
    }
}

fn sync_parent_dir(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// Lists the keys below `root` starting with `prefix`, starting the walk at
/// the deepest directory the prefix names.
fn list_keys(
    root: &Path,
    prefix: &str,
    cancel: &CancellationToken,
) -> Result<Vec<(String, u64)>, StoreError> {
    let start_dir = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut keys = Vec::new();
    let mut pending = vec![start_dir.to_owned()];
    while let Some(relative) = pending.pop() {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let dir = if relative.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&relative)
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            // Keys are UTF-8 by construction; anything else was not written by a store.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let key = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let file_type = entry
                .file_type()
                .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            if file_type.is_dir() {
                // Descend only where keys below can still match the prefix.
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    pending.push(key);
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                let size = entry
                    .metadata()
                    .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?
                    .len();
                keys.push((key, size));
            }
        }
    }
    Ok(keys)
}
