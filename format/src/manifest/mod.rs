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
mod writer;

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ChunkerParams;
use crate::id::ChunkId;
use crate::{FORMAT_NAME, FORMAT_VERSION};

pub use reader::ManifestReader;
pub use writer::ManifestWriter;

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file; the only kind with content and chunks.
    File,
    /// A directory; its children follow it in the manifest.
    Directory,
    /// A symbolic link; its target is stored, not followed.
    Symlink,
}

impl EntryKind {
    /// The name used in the manifest: `file`, `directory` or `symlink`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the source root, components joined with `/`, as raw
    /// bytes (file names need not be UTF-8). The empty path is the root
    /// itself. Stored base64-encoded as `path_b64`.
    #[serde(rename = "path_b64", with = "base64_bytes")]
    pub path: Vec<u8>,
    /// What the entry is.
    pub kind: EntryKind,
    /// Size in bytes as reported by `stat` (content length for files).
    pub size: u64,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number, to detect renames and hard links between runs.
    pub inode: u64,
    /// Device number the inode belongs to.
    pub dev: u64,
    /// Keyed hash of the whole content (64 hex digits); regular files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// The file's chunks in file order; empty for an empty file and for
    /// anything that is not a file.
    #[serde(default)]
    pub chunks: Vec<ChunkId>,
    /// The link target as raw bytes; symlinks only. Stored base64-encoded as
    /// `symlink_target_b64`.
    #[serde(
        rename = "symlink_target_b64",
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_optional_bytes"
    )]
    pub symlink_target: Option<Vec<u8>>,
}

impl ManifestEntry {
    /// Checks the invariants every stored entry must satisfy. Paths are
    /// checked because a restore joins them to a target directory: an empty,
    /// `.` or `..` component or a NUL byte could escape it or name nothing.
    fn check(&self) -> Result<(), String> {
        check_path(&self.path)?;
        let is_file = self.kind == EntryKind::File;
        if !is_file && !self.chunks.is_empty() {
            return Err(format!("{} entry with chunks", self.kind.as_str()));
        }
        if !is_file && self.content_hash.is_some() {
            return Err(format!("{} entry with a content hash", self.kind.as_str()));
        }
        if let Some(hash) = &self.content_hash {
            let is_hex = hash.len() == 64
                && hash
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            if !is_hex {
                return Err(format!(
                    "content hash {hash:?} is not 64 lowercase hex digits"
                ));
            }
        }
        if (self.kind == EntryKind::Symlink) != self.symlink_target.is_some() {
            return Err("symlink target present exactly when the entry is a symlink".to_owned());
        }
        Ok(())
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
        if entry.kind == EntryKind::File {
            self.files += 1;
            self.total_bytes = self.total_bytes.saturating_add(entry.size);
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

/// Serde for raw bytes as standard base64 text.
mod base64_bytes {
    use std::fmt;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Base64Visitor;

        impl Visitor<'_> for Base64Visitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 text")
            }

            // Accepts borrowed and escaped strings alike without copying
            // the text first.
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Base64Visitor)
    }
}

/// Serde for optional raw bytes as standard base64 text.
mod base64_optional_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        super::base64_bytes::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests;
