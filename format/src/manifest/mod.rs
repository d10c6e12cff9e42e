//! Snapshot manifests: one per snapshot, listing every entry of the backed
//! up tree with its metadata and chunk ids.
//!
//! A manifest is zstd-compressed JSON lines, each line one externally tagged
//! object, so `zstd -dc snapshots/<run> | jq` reads it:
//!
//! ```text
//! {"manifest":{"format":"coffer","version":1,"run_id":"...",...}}
//! {"entry":{"path_b64":"...","kind":"file","size":5,...,"chunks":["<hex>"]}}
//! ...
//! {"end":{"entries":N,"files":F,"total_bytes":B}}
//! ```
//!
//! Entries are in [`compare_paths`] order, so a new walk of the source can
//! be merge-joined with its parent's manifest one entry at a time, and both
//! [`ManifestWriter`] and [`ManifestReader`] stream: memory does not grow
//! with the number of entries. The end line's counts make a manifest cut
//! short at a line boundary detectable as well.

mod reader;
mod wire;
mod writer;

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ChunkerParams;
use crate::id::ChunkId;
use crate::{FileAttributes, FORMAT_NAME, FORMAT_VERSION};

pub use crate::attributes::EntryKind;
pub use reader::ManifestReader;
pub use writer::ManifestWriter;

/// The first line of a manifest: which snapshot this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version the manifest was written with.
    pub version: u32,
    /// The backup run that produced this snapshot (also its object key).
    pub run_id: Uuid,
    /// The job the run belongs to, if any.
    pub job_id: Option<Uuid>,
    /// The snapshot this one was compared against to skip unchanged files.
    pub parent_run_id: Option<Uuid>,
    /// The backed-up directory on the source host; entry paths are relative to it.
    pub source_path: String,
    /// The host the source was read on.
    pub hostname: String,
    /// When the run started, in UTC (RFC 3339 in the JSON).
    pub created: DateTime<Utc>,
    /// The chunking sizes used, so a later run can tell whether the parent's
    /// chunk lists are reusable as they are.
    pub chunker: ChunkerParams,
}

impl ManifestHeader {
    /// A header for this format version with no job and no parent.
    pub fn new(
        run_id: Uuid,
        source_path: String,
        hostname: String,
        created: DateTime<Utc>,
        chunker: ChunkerParams,
    ) -> Self {
        ManifestHeader {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            run_id,
            job_id: None,
            parent_run_id: None,
            source_path,
            hostname,
            created,
            chunker,
        }
    }
}

/// One file, directory or symlink of the snapshot.
///
/// The JSON form (see [`wire`]) keeps the field names and order of format
/// version 1, with the attributes' fields among the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "wire::EntryLine<'static>")]
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
        wire::EntryLine::from(self).serialize(serializer)
    }
}

impl ManifestEntry {
    /// What the entry is.
    pub fn kind(&self) -> EntryKind {
        self.attributes.kind
    }

    /// Checks the invariants every stored entry must satisfy. Paths are
    /// checked because a restore joins them to a target directory: an empty,
    /// `.` or `..` component or a NUL byte could escape it or name nothing.
    fn check(&self) -> Result<(), String> {
        check_path(&self.path)?;
        let kind = self.kind();
        if kind != EntryKind::File && !self.chunks.is_empty() {
            return Err(format!("{} entry with chunks", kind.as_str()));
        }
        self.attributes.check()
    }
}

fn check_path(path: &[u8]) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.contains(&0) {
        return Err("path contains a NUL byte".to_owned());
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

/// The last line of a manifest. Counts are computed by the writer from the
/// entries it wrote and checked by the reader against the entries it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFooter {
    /// Number of entries of every kind.
    pub entries: u64,
    /// Number of regular files.
    pub files: u64,
    /// Sum of the sizes of regular files.
    pub total_bytes: u64,
}

impl ManifestFooter {
    fn count(&mut self, entry: &ManifestEntry) {
        self.entries += 1;
        if entry.kind() == EntryKind::File {
            self.files += 1;
            self.total_bytes = self.total_bytes.saturating_add(entry.attributes.size);
        }
    }
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

#[cfg(test)]
mod tests;
