//! One entry of a manifest: a file, directory or symlink of the snapshot,
//! and the order entries come in.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::wire::EntryLine;
use crate::attributes::{EntryKind, FileAttributes};
use crate::id::ChunkId;
use crate::pack::MAX_CHUNK_SIZE;

/// One file, directory or symlink of the snapshot.
///
/// The JSON form (see `wire.rs`) keeps the field names and order of format
/// version 1, with the attributes' fields among the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "EntryLine<'static>")]
pub struct ManifestEntry {
    /// Path relative to the source root, components joined with `/`, as raw
    /// bytes (file names need not be UTF-8). The empty path is the root
    /// itself. Stored base64-encoded as `path_b64`.
    pub path: Vec<u8>,
    /// What the version records: kind, size (as `stat` reports it), the
    /// whole `st_mode`, owner, mtime, content hash and link target.
    pub attributes: FileAttributes,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number, to detect renames and hard links between runs.
    pub inode: u64,
    /// Device number the inode belongs to.
    pub dev: u64,
    /// The file's chunks in file order; empty for an empty file and for
    /// anything that is not a file.
    pub chunks: Vec<ChunkId>,
}

impl Serialize for ManifestEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EntryLine::from(self).serialize(serializer)
    }
}

impl<'a> From<&'a ManifestEntry> for EntryLine<'a> {
    fn from(entry: &'a ManifestEntry) -> Self {
        let attributes = &entry.attributes;
        EntryLine {
            path: Cow::Borrowed(&entry.path),
            kind: attributes.kind,
            size: attributes.size,
            mode: attributes.mode,
            uid: attributes.uid,
            gid: attributes.gid,
            mtime_ns: attributes.mtime_ns,
            ctime_ns: entry.ctime_ns,
            inode: entry.inode,
            dev: entry.dev,
            content_hash: attributes.content_hash.as_deref().map(Cow::Borrowed),
            chunks: Cow::Borrowed(&entry.chunks),
            symlink_target: attributes.symlink_target.as_deref().map(Cow::Borrowed),
        }
    }
}

/// What was read is owned: the conversion moves it, copying nothing.
impl From<EntryLine<'_>> for ManifestEntry {
    fn from(line: EntryLine<'_>) -> Self {
        ManifestEntry {
            path: line.path.into_owned(),
            attributes: FileAttributes {
                kind: line.kind,
                size: line.size,
                mode: line.mode,
                uid: line.uid,
                gid: line.gid,
                mtime_ns: line.mtime_ns,
                content_hash: line.content_hash.map(Cow::into_owned),
                symlink_target: line.symlink_target.map(Cow::into_owned),
            },
            ctime_ns: line.ctime_ns,
            inode: line.inode,
            dev: line.dev,
            chunks: line.chunks.into_owned(),
        }
    }
}

impl ManifestEntry {
    /// An entry without chunks whose change time, inode and device are zero
    /// (they only tell an incremental backup whether to read a file again).
    pub fn new(path: Vec<u8>, attributes: FileAttributes) -> Self {
        ManifestEntry {
            path,
            attributes,
            ctime_ns: 0,
            inode: 0,
            dev: 0,
            chunks: Vec::new(),
        }
    }

    /// What the entry is.
    pub fn kind(&self) -> EntryKind {
        self.attributes.kind
    }

    /// Checks the invariants every stored entry must satisfy. Paths are
    /// checked because a restore joins them to a target directory: an empty,
    /// `.` or `..` component or a NUL byte could escape it or name nothing.
    pub(super) fn check(&self) -> Result<(), String> {
        check_path(&self.path)?;
        let kind = self.kind();
        if kind != EntryKind::File && !self.chunks.is_empty() {
            return Err(format!("{} entry with chunks", kind.as_str()));
        }
        // Every chunk holds at least one byte and at most the chunk limit, so
        // the size bounds the count both ways (a restore plans by count).
        let chunks = self.chunks.len() as u64;
        let size = self.attributes.size;
        if chunks > size || size > chunks.saturating_mul(u64::from(MAX_CHUNK_SIZE)) {
            return Err(format!("{chunks} chunks cannot hold {size} bytes"));
        }
        self.attributes.check()
    }
}

/// Longest file name Linux filesystems take (`NAME_MAX`).
const MAX_NAME: usize = 255;

fn check_path(path: &[u8]) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte".to_owned());
    }
    if path
        .split(|byte| *byte == b'/')
        .any(|component| component.len() > MAX_NAME)
    {
        return Err("path has a component longer than 255 bytes".to_owned());
    }
    let bad_component = path
        .split(|byte| *byte == b'/')
        .any(|component| matches!(component, b"" | b"." | b".."));
    if bad_component {
        return Err(format!(
            "path {:?} has an empty, '.' or '..' component",
            String::from_utf8_lossy(path)
        ));
    }
    Ok(())
}

/// Orders relative paths component by component (split on `b'/'`),
/// comparing components as bytes — the order of a depth-first walk that
/// visits each directory's children sorted by name bytes, so a new walk and
/// a parent manifest can be merge-joined.
///
/// Plain byte order differs: it puts `a.b` before `a/b` because `.` < `/`,
/// while a walk finishes directory `a` (and so `a/b`) before it reaches
/// its sibling `a.b`.
pub fn compare_paths(a: &[u8], b: &[u8]) -> Ordering {
    // The root (empty path) splits into one empty component, which sorts
    // before every non-empty first component, so the root comes first.
    a.split(|byte| *byte == b'/')
        .cmp(b.split(|byte| *byte == b'/'))
}
