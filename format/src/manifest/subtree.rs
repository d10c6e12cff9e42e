//! Subtrees: a run of manifest entries stored once as a `tree` blob in a
//! pack and named by a manifest's `subtree` line, so a later manifest can
//! point at its parent's unchanged parts instead of writing them again.
//!
//! ```text
//! {"subtree":{"blob":"<chunk id>","first_b64":"…","last_b64":"…","entries":N,"files":F,"total_bytes":B}}
//! ```
//!
//! The blob holds the entries' `{"entry":…}` lines, newline-terminated, in
//! [`compare_paths`] order, from `first` to `last`; a reader expands it in
//! place and checks the order across its edges and the counts.

use serde::{Deserialize, Serialize};

use super::entry::{compare_paths, ManifestEntry};
use super::footer::ManifestFooter;
use super::wire::base64_bytes;
use crate::error::FormatError;
use crate::hash::ChunkHasher;
use crate::id::ChunkId;
use crate::pack::MAX_CHUNK_SIZE;

/// A manifest's reference to a tree blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtree {
    /// The tree blob's chunk id (keyed hash of its lines).
    pub blob: ChunkId,
    /// Path of its first entry.
    #[serde(rename = "first_b64", with = "base64_bytes")]
    pub first: Vec<u8>,
    /// Path of its last entry.
    #[serde(rename = "last_b64", with = "base64_bytes")]
    pub last: Vec<u8>,
    /// Number of entries.
    pub entries: u64,
    /// Number of regular files among them.
    pub files: u64,
    /// Sum of their file sizes.
    pub total_bytes: u64,
}

impl Subtree {
    /// Checks what a stored reference must satisfy on its own.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.entries == 0 || self.files > self.entries {
            return Err("subtree with no entries or more files than entries".to_owned());
        }
        if compare_paths(&self.first, &self.last) == std::cmp::Ordering::Greater {
            return Err("subtree whose first path sorts after its last".to_owned());
        }
        Ok(())
    }

    pub(super) fn counts(&self) -> ManifestFooter {
        ManifestFooter {
            entries: self.entries,
            files: self.files,
            total_bytes: self.total_bytes,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum TreeLine<'a> {
    Entry(&'a ManifestEntry),
}

/// Encodes `entries` (valid, in strictly increasing order, at least one) as
/// a tree blob, and returns the reference a manifest writes for it with
/// the blob: store the blob in a pack as [`crate::BlobType::Tree`] under
/// `subtree.blob`.
pub fn encode_tree(
    hasher: &ChunkHasher,
    entries: &[ManifestEntry],
) -> Result<(Subtree, Vec<u8>), FormatError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(FormatError::InvalidInput(
            "a subtree needs at least one entry".to_owned(),
        ));
    };
    let mut counts = ManifestFooter::default();
    let mut bytes = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        entry
            .check()
            .map_err(|reason| FormatError::InvalidInput(format!("subtree entry: {reason}")))?;
        if index > 0
            && compare_paths(&entries[index - 1].path, &entry.path) != std::cmp::Ordering::Less
        {
            return Err(FormatError::InvalidInput(
                "subtree entries out of order".to_owned(),
            ));
        }
        serde_json::to_writer(&mut bytes, &TreeLine::Entry(entry))?;
        bytes.push(b'\n');
        counts.count(entry);
    }
    if bytes.len() > MAX_CHUNK_SIZE as usize {
        return Err(FormatError::InvalidInput(format!(
            "a subtree of {} bytes is larger than a blob may be",
            bytes.len()
        )));
    }
    let subtree = Subtree {
        blob: hasher.chunk_id(&bytes),
        first: first.path.clone(),
        last: last.path.clone(),
        entries: counts.entries,
        files: counts.files,
        total_bytes: counts.total_bytes,
    };
    Ok((subtree, bytes))
}

/// Where a reader gets the tree blobs its manifest names: the worker
/// opens them from their packs ([`crate::pack::open_blob`], which checks
/// the chunk id).
pub trait TreeSource: Send {
    /// The bytes of tree blob `id`.
    fn tree_blob(&mut self, id: &ChunkId) -> Result<Vec<u8>, FormatError>;
}

impl<F: FnMut(&ChunkId) -> Result<Vec<u8>, FormatError> + Send> TreeSource for F {
    fn tree_blob(&mut self, id: &ChunkId) -> Result<Vec<u8>, FormatError> {
        self(id)
    }
}

/// A tree blob being expanded by a reader.
pub(super) struct TreeCursor {
    pub(super) subtree: Subtree,
    pub(super) bytes: Vec<u8>,
    pub(super) position: usize,
    /// The reader's counts before the first entry of the tree.
    pub(super) counts_before: ManifestFooter,
}

impl TreeCursor {
    /// The next line of the tree, `None` at its end; a last line without
    /// its newline is corrupt.
    pub(super) fn next_line(&mut self) -> Result<Option<&[u8]>, FormatError> {
        if self.position == self.bytes.len() {
            return Ok(None);
        }
        let rest = &self.bytes[self.position..];
        let end = rest.iter().position(|byte| *byte == b'\n').ok_or_else(|| {
            FormatError::Corrupt(format!(
                "subtree {}: ends in the middle of a line",
                self.subtree.blob
            ))
        })?;
        self.position += end + 1;
        Ok(Some(&rest[..end]))
    }
}
