//! Reading a source tree: a depth-first walk on a blocking thread that never
//! follows symlinks, yields entries in a deterministic order (each
//! directory's children sorted by the bytes of their names), and reports
//! unreadable entries as per-entry errors while the walk goes on.
//!
//! Paths are raw bytes relative to the source root, `/`-separated; names need
//! not be UTF-8.
//!
//! Nothing is looked up by absolute path: the root is opened beneath its
//! anchor (the grant's or the worker's root) and every entry beneath the
//! root's descriptor with [`crate::paths::beneath`], so a directory swapped
//! for a symlink while the walk runs is refused, never followed, and a
//! source root that is itself a symlink is refused (backing up the link
//! alone would be useless, and following it would read outside the granted
//! path).
//!
//! What the walk leaves out (exclude patterns, ignore files, caches,
//! markers, a size limit, other file systems) is decided in [`exclusion`];
//! a dry run asks for every left-out path with its reason.

mod exclusion;

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::paths::beneath;
use crate::paths::relative_to;

pub use exclusion::{
    Exclusion, ExclusionOptions, ExclusionReason, CACHE_TAG, DEFAULT_IGNORE_FILE,
    MAX_IGNORE_FILE_BYTES,
};
use exclusion::{IgnoreChain, Rules};
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
    /// What to leave out. An excluded directory is not descended into.
    pub exclusions: ExclusionOptions,
    /// Yield a [`WalkItem::Excluded`] for every path left out (a dry run).
    pub report_exclusions: bool,
    /// Do not descend into directories on another filesystem than the root's
    /// (the mount point itself is still listed).
    pub one_file_system: bool,
    /// A trusted directory containing the root, which the root is resolved
    /// beneath without following symlinks; `None`: the root's parent.
    pub anchor: Option<PathBuf>,
    /// Paths relative to the root that are never read (protected paths).
    pub skip: Vec<Vec<u8>>,
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
    /// A path left out, with why (only with
    /// [`WalkOptions::report_exclusions`]).
    Excluded(Exclusion),
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
    /// The source root, or a directory on its way from the anchor, is a
    /// symlink: refused, never followed.
    #[error("source path {} is refused: it is or passes through a symlink", .0.display())]
    SymlinkRoot(PathBuf),
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
    root: Arc<OwnedFd>,
}

impl SourceWalk {
    /// The directory entries' paths are relative to (the root itself, or
    /// for a single-file root its parent): open them with
    /// [`open_entry`].
    pub fn root(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.root)
    }

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
/// The root is opened beneath `options.anchor` without following symlinks
/// and is not an entry: a directory root yields its contents; a
/// regular-file root yields one entry named after the file. Fails only when
/// the root cannot be used or an exclude pattern is invalid; everything
/// below the root is reported per entry. The walk stops when `cancel` fires
/// or the [`SourceWalk`] is dropped.
pub async fn walk(
    root: &Path,
    options: &WalkOptions,
    cancel: &CancellationToken,
) -> Result<SourceWalk, SourceError> {
    let rules = Rules::new(&options.exclusions)?;
    let root = root.to_path_buf();
    let anchor = options.anchor.clone();
    let opening = root.clone();
    let opened = tokio::task::spawn_blocking(move || open_root(&opening, anchor.as_deref()))
        .await
        .map_err(|e| SourceError::RootUnreadable {
            path: root.clone(),
            source: std::io::Error::other(e),
        })??;
    let root_metadata = opened.metadata;
    let (base, first) = if root_metadata.is_dir() {
        let first = Pending::Children {
            dir: root.clone(),
            rel: Vec::new(),
            chain: IgnoreChain::default(),
        };
        (opened.fd, first)
    } else if root_metadata.is_file() {
        let name = root
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .ok_or_else(|| SourceError::UnsupportedRoot(root.clone()))?;
        // A single file is read by name from its parent, opened the same way.
        let (parent_rel, _) = beneath::split_parent(&opened.rel);
        let parent = beneath::open_dir(opened.anchor.as_fd(), parent_rel).map_err(|e| {
            SourceError::RootUnreadable {
                path: root.clone(),
                source: e,
            }
        })?;
        let first = Pending::Entry {
            abs: root.clone(),
            rel: name,
            chain: IgnoreChain::default(),
        };
        (parent, first)
    } else {
        return Err(SourceError::UnsupportedRoot(root));
    };
    let base = Arc::new(base);
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let walker = Walker {
        root: Arc::clone(&base),
        rules,
        report_exclusions: options.report_exclusions,
        skip: options.skip.clone(),
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
        root: base,
    })
}

/// The source root, opened.
struct OpenedRoot {
    /// The anchor it was resolved beneath.
    anchor: OwnedFd,
    /// The root relative to the anchor.
    rel: Vec<u8>,
    /// The root (`O_PATH`).
    fd: OwnedFd,
    metadata: Metadata,
}

/// Opens the source root beneath its anchor (default: its parent), refusing
/// a symlink anywhere from the anchor down, the root included.
fn open_root(given: &Path, anchor: Option<&Path>) -> Result<OpenedRoot, SourceError> {
    // A relative root (only from in-process callers; assignments are
    // normalised) is taken from the working directory.
    let absolute = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
    let root = absolute.as_path();
    let anchor = anchor
        .map(Path::to_path_buf)
        .or_else(|| root.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| root.to_path_buf());
    let unreadable = |source: std::io::Error| SourceError::RootUnreadable {
        path: root.to_path_buf(),
        source,
    };
    let rel = relative_to(root, &anchor)
        .ok_or_else(|| unreadable(std::io::Error::other("the source is outside its anchor")))?;
    let classify = |error: std::io::Error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            SourceError::RootNotFound(root.to_path_buf())
        } else if beneath::is_symlink_refusal(&error) {
            SourceError::SymlinkRoot(root.to_path_buf())
        } else {
            unreadable(error)
        }
    };
    let anchor_fd = rustix::fs::open(
        &anchor,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| classify(e.into()))?;
    let fd =
        beneath::open(anchor_fd.as_fd(), &rel, OFlags::PATH, Mode::empty()).map_err(classify)?;
    let metadata = stat(&fd).map_err(unreadable)?;
    if metadata.file_type().is_symlink() {
        return Err(SourceError::SymlinkRoot(root.to_path_buf()));
    }
    Ok(OpenedRoot {
        anchor: anchor_fd,
        rel,
        fd,
        metadata,
    })
}

/// `fstat` of a descriptor (an `O_PATH` one included).
fn stat(fd: &OwnedFd) -> std::io::Result<Metadata> {
    let file = File::from(fd.try_clone()?);
    file.metadata()
}

/// Opens the entry `rel` of a walk beneath its root (see
/// [`SourceWalk::root`]) with `flags`, never following a symlink.
pub fn open_entry(root: &OwnedFd, rel: &[u8], flags: OFlags) -> std::io::Result<File> {
    beneath::open(root.as_fd(), rel, flags, Mode::empty()).map(File::from)
}

/// Work left to do, kept on an explicit stack so deep trees cannot overflow
/// the thread's stack.
/// Each carries the ignore files in effect for it.
enum Pending {
    /// An entry to stat and emit (and, for a directory, descend into).
    Entry {
        abs: PathBuf,
        rel: Vec<u8>,
        chain: IgnoreChain,
    },
    /// The children of a directory, without the directory itself.
    Children {
        dir: PathBuf,
        rel: Vec<u8>,
        chain: IgnoreChain,
    },
}

struct Walker {
    /// Entries' paths are relative to this directory.
    root: Arc<OwnedFd>,
    rules: Rules,
    report_exclusions: bool,
    skip: Vec<Vec<u8>>,
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
                Pending::Entry { abs, rel, chain } => self.visit(abs, rel, chain, &mut stack),
                Pending::Children { dir, rel, chain } => {
                    self.push_children(&dir, &rel, &chain, &mut stack)
                }
            };
            if !keep_going {
                return;
            }
        }
        self.flush();
    }

    /// Stats and emits one entry; returns false once the consumer is gone.
    fn visit(
        &mut self,
        abs: PathBuf,
        rel: Vec<u8>,
        chain: IgnoreChain,
        stack: &mut Vec<Pending>,
    ) -> bool {
        let fd = match beneath::open(self.root.as_fd(), &rel, OFlags::PATH, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return self.error(rel, format!("cannot stat: {e}")),
        };
        let metadata = match stat(&fd) {
            Ok(m) => m,
            Err(e) => return self.error(rel, format!("cannot stat: {e}")),
        };
        let kind = EntryKind::of(&metadata);
        let regular_size = (kind == EntryKind::Regular).then(|| metadata.size());
        let is_dir = kind == EntryKind::Directory;
        if let Some(exclusion) = self
            .rules
            .entry_exclusion(&rel, is_dir, regular_size, &chain)
        {
            return self.excluded(exclusion);
        }
        let symlink_target = if kind == EntryKind::Symlink {
            match rustix::fs::readlinkat(&fd, c"", Vec::new()) {
                Ok(target) => Some(target.into_bytes()),
                Err(e) => return self.error(rel, format!("cannot read link: {e}")),
            }
        } else {
            None
        };
        let other_file_system = self.one_file_system && metadata.dev() != self.root_dev;
        let descend = is_dir && !other_file_system;
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
            stack.push(Pending::Children {
                dir: abs,
                rel,
                chain,
            });
        } else if is_dir && other_file_system {
            return self.excluded(Exclusion {
                path: rel,
                reason: ExclusionReason::OtherFileSystem,
                rule: "one_file_system".into(),
                source: "options.one_file_system".into(),
                size: 0,
            });
        }
        true
    }

    /// Lists a directory and pushes its children so that they pop in name order.
    /// The directory's tag, marker and ignore file are applied here.
    fn push_children(
        &mut self,
        dir: &Path,
        rel: &[u8],
        chain: &IgnoreChain,
        stack: &mut Vec<Pending>,
    ) -> bool {
        let opened = beneath::open_dir(self.root.as_fd(), rel);
        let listing = opened.and_then(|fd| {
            let entries = rustix::fs::Dir::read_from(&fd).map_err(std::io::Error::from)?;
            Ok((fd, entries))
        });
        let (dir_fd, entries) = match listing {
            Ok(listing) => listing,
            Err(e) => return self.error(rel.to_vec(), format!("cannot list directory: {e}")),
        };
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in entries {
            if self.cancel.is_cancelled() {
                return false;
            }
            match entry {
                Ok(entry) => {
                    let name = entry.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        names.push(name.to_vec());
                    }
                }
                Err(e) => {
                    if !self.error(rel.to_vec(), format!("cannot list directory: {e}")) {
                        return false;
                    }
                    // A failing listing would fail again on every call.
                    break;
                }
            }
        }
        names.sort_unstable();
        let contents = self.rules.contents_exclusion(dir_fd.as_fd(), rel, &names);
        let (chain, problems) = self.rules.enter(dir_fd.as_fd(), rel, &names, chain);
        for (path, message) in problems {
            if !self.error(path, message) {
                return false;
            }
        }
        // Pushed in reverse so that they pop in name order; exclusions
        // decided here are reported in that order too.
        let mut excluded = Vec::new();
        for name in names.into_iter().rev() {
            let child_rel = join_rel(rel, &name);
            if self.skip.contains(&child_rel) {
                continue;
            }
            if let Some(contents) = contents.as_ref().filter(|c| c.kept != name) {
                excluded.push(contents.of(child_rel));
                continue;
            }
            if let Some(exclusion) = self.rules.pattern_exclusion(&child_rel) {
                excluded.push(exclusion);
                continue;
            }
            stack.push(Pending::Entry {
                abs: dir.join(OsStr::from_bytes(&name)),
                rel: child_rel,
                chain: chain.clone(),
            });
        }
        excluded
            .into_iter()
            .rev()
            .all(|exclusion| self.excluded(exclusion))
    }

    /// Reports `exclusion` when asked to; false once the consumer is gone.
    fn excluded(&mut self, exclusion: Exclusion) -> bool {
        !self.report_exclusions || self.send(WalkItem::Excluded(exclusion))
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

pub(crate) fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
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
    use std::fs;

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
                WalkItem::Error(_) | WalkItem::Excluded(_) => None,
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
            exclusions: ExclusionOptions {
                exclude: vec!["**/*.tmp".into(), "c".into()],
                ..ExclusionOptions::default()
            },
            one_file_system: true,
            ..WalkOptions::default()
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
            exclusions: ExclusionOptions {
                exclude: vec!["a[".into()],
                ..ExclusionOptions::default()
            },
            ..WalkOptions::default()
        };
        let result = walk(dir.path(), &options, &CancellationToken::new()).await;
        assert!(matches!(result, Err(SourceError::InvalidExclude { .. })));
    }

    #[tokio::test]
    async fn a_symlinked_root_is_refused_and_links_inside_are_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        fs::write(outside.path().join("secret"), b"x").expect("write");
        fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("src/out")).expect("symlink");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let result = walk(
            &dir.path().join("link"),
            &WalkOptions::default(),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(result, Err(SourceError::SymlinkRoot(_))));
        let options = WalkOptions {
            anchor: Some(dir.path().to_path_buf()),
            ..WalkOptions::default()
        };
        let items = collect(&dir.path().join("src"), &options).await;
        assert_eq!(paths(&items), ["out"]);
        let through = walk(
            &dir.path().join("link/x"),
            &options,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(through, Err(SourceError::SymlinkRoot(_))));
    }

    #[tokio::test]
    async fn skipped_paths_are_not_listed() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("state/deep")).expect("mkdir");
        fs::write(dir.path().join("state/deep/admin.token"), b"t").expect("write");
        fs::write(dir.path().join("kept"), b"k").expect("write");
        let options = WalkOptions {
            skip: vec![b"state".to_vec()],
            ..WalkOptions::default()
        };
        assert_eq!(paths(&collect(dir.path(), &options).await), ["kept"]);
    }
}
