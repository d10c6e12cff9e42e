//! Reading a source tree: a depth-first walk on a blocking thread that never
//! follows symlinks, yields entries in a deterministic order (each
//! directory's children sorted by the bytes of their names), and reports
//! unreadable entries as per-entry errors while the walk goes on.
//!
//! Paths are raw bytes relative to the source root, `/`-separated; names need
//! not be UTF-8.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use globset::{GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Entries buffered between the walking thread and its consumer.
/// Walk items handed over at once (one wake-up of the consumer per batch).
const BATCH: usize = 128;
/// Batches queued between the walk and its consumer.
const CHANNEL_CAPACITY: usize = 4;

/// How a source tree is read.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Glob patterns of paths (relative to the root) to skip, e.g. `**/*.tmp`.
    /// `*` and `?` do not match `/`; `**` matches any number of directories.
    /// An excluded directory is not descended into.
    pub exclude: Vec<String>,
    /// Do not descend into directories on another filesystem than the root's
    /// (the mount point itself is still listed).
    pub one_file_system: bool,
}

/// The type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryKind {
    /// The catalog's and manifest's spelling, e.g. `regular`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Regular => "regular",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "char_device",
            EntryKind::BlockDevice => "block_device",
        }
    }

    fn of(metadata: &Metadata) -> Self {
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_fifo() {
            EntryKind::Fifo
        } else if file_type.is_socket() {
            EntryKind::Socket
        } else if file_type.is_char_device() {
            EntryKind::CharDevice
        } else if file_type.is_block_device() {
            EntryKind::BlockDevice
        } else {
            EntryKind::Regular
        }
    }
}

/// A point in time as seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileTime {
    /// Whole seconds (negative before 1970).
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// The `lstat` metadata of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryMetadata {
    /// Size in bytes.
    pub size: u64,
    /// Mode bits (type and permissions, as `st_mode`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Last modification.
    pub mtime: FileTime,
    /// Last status change.
    pub ctime: FileTime,
    /// Inode number.
    pub inode: u64,
    /// Device the entry lives on.
    pub dev: u64,
}

impl From<&Metadata> for EntryMetadata {
    fn from(m: &Metadata) -> Self {
        Self {
            size: m.size(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: FileTime {
                seconds: m.mtime(),
                nanos: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            },
            ctime: FileTime {
                seconds: m.ctime(),
                nanos: u32::try_from(m.ctime_nsec()).unwrap_or(0),
            },
            inode: m.ino(),
            dev: m.dev(),
        }
    }
}

/// One entry of the source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the root as raw bytes, `/`-separated.
    pub path: Vec<u8>,
    /// Absolute path on this machine, for reading the entry.
    pub abs_path: PathBuf,
    /// The entry's type.
    pub kind: EntryKind,
    /// Its `lstat` metadata.
    pub metadata: EntryMetadata,
    /// Target of a symlink, as raw bytes.
    pub symlink_target: Option<Vec<u8>>,
}

/// An entry that could not be read; the walk continues past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Path relative to the root as raw bytes.
    pub path: Vec<u8>,
    /// What went wrong.
    pub message: String,
}

/// One item produced by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkItem {
    /// An entry.
    Entry(Entry),
    /// An entry or a directory listing that could not be read.
    Error(EntryError),
}

/// Why a walk could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source root does not exist.
    #[error("source path {} does not exist", .0.display())]
    RootNotFound(PathBuf),
    /// The source root exists but cannot be read.
    #[error("source path {}: {source}", path.display())]
    RootUnreadable {
        /// The root.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The source root is neither a directory nor a regular file.
    #[error("source path {} is neither a directory nor a regular file", .0.display())]
    UnsupportedRoot(PathBuf),
    /// An exclude pattern is not a valid glob.
    #[error("invalid exclude pattern {pattern:?}: {message}")]
    InvalidExclude {
        /// The pattern.
        pattern: String,
        /// Why it is invalid.
        message: String,
    },
}

/// A running walk; items arrive in walk order.
#[derive(Debug)]
pub struct SourceWalk {
    receiver: mpsc::Receiver<Vec<WalkItem>>,
    buffered: std::vec::IntoIter<WalkItem>,
}

impl SourceWalk {
    /// The next item, or `None` once the walk has finished (or was cancelled).
    pub async fn next(&mut self) -> Option<WalkItem> {
        loop {
            if let Some(item) = self.buffered.next() {
                return Some(item);
            }
            self.buffered = self.receiver.recv().await?.into_iter();
        }
    }
}

/// Starts walking `root` on a blocking thread.
///
/// The root itself is followed if it is a symlink, and is not an entry: a
/// directory root yields its contents; a regular-file root yields one entry
/// named after the file. Fails only when the root cannot be used or an
/// exclude pattern is invalid; everything below the root is reported per
/// entry. The walk stops when `cancel` fires or the [`SourceWalk`] is dropped.
pub async fn walk(
    root: &Path,
    options: &WalkOptions,
    cancel: &CancellationToken,
) -> Result<SourceWalk, SourceError> {
    let excludes = build_excludes(&options.exclude)?;
    let root = root.to_path_buf();
    let root_for_stat = root.clone();
    let root_metadata = tokio::task::spawn_blocking(move || fs::metadata(&root_for_stat))
        .await
        .map_err(|e| SourceError::RootUnreadable {
            path: root.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::RootNotFound(root.clone()),
            _ => SourceError::RootUnreadable {
                path: root.clone(),
                source: e,
            },
        })?;
    let first = if root_metadata.is_dir() {
        Pending::Children {
            dir: root.clone(),
            rel: Vec::new(),
        }
    } else if root_metadata.is_file() {
        let name = root
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .ok_or_else(|| SourceError::UnsupportedRoot(root.clone()))?;
        Pending::Entry {
            abs: root.clone(),
            rel: name,
        }
    } else {
        return Err(SourceError::UnsupportedRoot(root));
    };
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let walker = Walker {
        excludes,
        one_file_system: options.one_file_system,
        root_dev: root_metadata.dev(),
        sender,
        batch: Vec::with_capacity(BATCH),
        cancel: cancel.clone(),
    };
    tokio::task::spawn_blocking(move || walker.run(first));
    Ok(SourceWalk {
        receiver,
        buffered: Vec::new().into_iter(),
    })
}

fn build_excludes(patterns: &[String]) -> Result<GlobSet, SourceError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| SourceError::InvalidExclude {
                pattern: pattern.clone(),
                message: e.kind().to_string(),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| SourceError::InvalidExclude {
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

/// Work left to do, kept on an explicit stack so deep trees cannot overflow
/// the thread's stack.
enum Pending {
    /// An entry to stat and emit (and, for a directory, descend into).
    Entry { abs: PathBuf, rel: Vec<u8> },
    /// The children of a directory, without the directory itself.
    Children { dir: PathBuf, rel: Vec<u8> },
}

struct Walker {
    excludes: GlobSet,
    one_file_system: bool,
    root_dev: u64,
    sender: mpsc::Sender<Vec<WalkItem>>,
    /// Items not yet handed over.
    batch: Vec<WalkItem>,
    cancel: CancellationToken,
}

impl Walker {
    fn run(mut self, first: Pending) {
        let mut stack = vec![first];
        while let Some(pending) = stack.pop() {
            if self.cancel.is_cancelled() {
                return;
            }
            let keep_going = match pending {
                Pending::Entry { abs, rel } => self.visit(abs, rel, &mut stack),
                Pending::Children { dir, rel } => self.push_children(&dir, &rel, &mut stack),
            };
            if !keep_going {
                return;
            }
        }
        self.flush();
    }

    /// Stats and emits one entry; returns false once the consumer is gone.
    fn visit(&mut self, abs: PathBuf, rel: Vec<u8>, stack: &mut Vec<Pending>) -> bool {
        let metadata = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) => return self.error(rel, format!("cannot stat: {e}")),
        };
        let kind = EntryKind::of(&metadata);
        let symlink_target = if kind == EntryKind::Symlink {
            match fs::read_link(&abs) {
                Ok(target) => Some(target.into_os_string().into_vec()),
                Err(e) => return self.error(rel, format!("cannot read link: {e}")),
            }
        } else {
            None
        };
        let descend = kind == EntryKind::Directory
            && (!self.one_file_system || metadata.dev() == self.root_dev);
        let entry = Entry {
            path: rel.clone(),
            abs_path: abs.clone(),
            kind,
            metadata: EntryMetadata::from(&metadata),
            symlink_target,
        };
        if !self.send(WalkItem::Entry(entry)) {
            return false;
        }
        if descend {
            stack.push(Pending::Children { dir: abs, rel });
        }
        true
    }

    /// Lists a directory and pushes its children so that they pop in name order.
    fn push_children(&mut self, dir: &Path, rel: &[u8], stack: &mut Vec<Pending>) -> bool {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return self.error(rel.to_vec(), format!("cannot list directory: {e}")),
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in entries {
            if self.cancel.is_cancelled() {
                return false;
            }
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => {
                    if !self.error(rel.to_vec(), format!("cannot list directory: {e}")) {
                        return false;
                    }
                }
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names.into_iter().rev() {
            let child_rel = join_rel(rel, name.as_bytes());
            if self.is_excluded(&child_rel) {
                continue;
            }
            stack.push(Pending::Entry {
                abs: dir.join(&name),
                rel: child_rel,
            });
        }
        true
    }

    fn is_excluded(&self, rel: &[u8]) -> bool {
        !self.excludes.is_empty()
            && self
                .excludes
                .is_match(Path::new(std::ffi::OsStr::from_bytes(rel)))
    }

    fn error(&mut self, path: Vec<u8>, message: String) -> bool {
        self.send(WalkItem::Error(EntryError { path, message }))
    }

    fn send(&mut self, item: WalkItem) -> bool {
        self.batch.push(item);
        self.batch.len() < BATCH || self.flush()
    }

    /// Hands the batch over; false once the consumer is gone.
    fn flush(&mut self) -> bool {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        batch.is_empty() || self.sender.blocking_send(batch).is_ok()
    }
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(root: &Path, options: &WalkOptions) -> Vec<WalkItem> {
        let mut walk = walk(root, options, &CancellationToken::new())
            .await
            .expect("walk starts");
        let mut items = Vec::new();
        while let Some(item) = walk.next().await {
            items.push(item);
        }
        items
    }

    fn paths(items: &[WalkItem]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                WalkItem::Entry(e) => Some(String::from_utf8_lossy(&e.path).into_owned()),
                WalkItem::Error(_) => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn walk_is_depth_first_in_name_order_and_honours_excludes() {
        let dir = tempfile::tempdir().expect("temp dir");
        for d in ["b/y", "a", "c"] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        for f in ["b/y/z", "b/x", "a/1.tmp", "a/2", "top.tmp"] {
            fs::write(dir.path().join(f), b"x").expect("write");
        }
        let options = WalkOptions {
            exclude: vec!["**/*.tmp".into(), "c".into()],
            one_file_system: true,
        };
        let items = collect(dir.path(), &options).await;
        assert_eq!(paths(&items), ["a", "a/2", "b", "b/x", "b/y", "b/y/z"]);
    }

    #[tokio::test]
    async fn missing_root_is_reported_as_such() {
        let dir = tempfile::tempdir().expect("temp dir");
        let result = walk(
            &dir.path().join("nope"),
            &WalkOptions::default(),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(result, Err(SourceError::RootNotFound(_))));
    }

    #[tokio::test]
    async fn invalid_exclude_patterns_are_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = WalkOptions {
            exclude: vec!["a[".into()],
            one_file_system: false,
        };
        let result = walk(dir.path(), &options, &CancellationToken::new()).await;
        assert!(matches!(result, Err(SourceError::InvalidExclude { .. })));
    }
}
