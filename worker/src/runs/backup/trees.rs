//! The new manifest's entries stored as `tree` blobs (format v2), so that
//! a later snapshot names an unchanged run of entries with one `subtree`
//! line instead of writing it again.
//!
//! Runs end after an entry whose path hashes (keyed) to a boundary, about
//! one entry in [`BOUNDARY_SPACING`]: where runs end depends on the paths
//! alone, so a run whose entries did not change encodes to the same bytes
//! and the same blob id as in the parent, which the repository holds
//! already. A change rewrites only the blob of its run; an added or removed
//! path moves at most the boundaries next to it. Runs are also cut at
//! [`MAX_TREE_ENTRIES`] entries and about [`MAX_TREE_BYTES`] of lines, so a
//! blob stays far below the 16 MiB a blob may hold.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use coffer_format::manifest::encode_tree;
use coffer_format::{
    encode_chunk, new_compressor, BlobType, ChunkHasher, ChunkId, ChunkIndex, Compressor,
    EncodedChunk, ManifestEntry, ManifestWriter,
};
use tokio::sync::mpsc;

use crate::report::RunFailure;

/// Entries per tree blob on average.
const BOUNDARY_SPACING: u16 = 512;
/// Entries per tree blob at most.
pub(crate) const MAX_TREE_ENTRIES: usize = 4096;
/// Estimated bytes of lines per tree blob at most.
const MAX_TREE_BYTES: usize = 4 << 20;

/// Where the new tree blobs of a backup go, and what it holds already.
pub(crate) struct TreeOutput {
    /// The queue of the packer of tree blobs.
    pub(crate) packer: mpsc::Sender<EncodedChunk>,
    /// The repository's chunk index, as loaded for the backup.
    pub(crate) index: Arc<ChunkIndex>,
}

/// Groups a manifest's entries into tree blobs as they are added.
pub(crate) struct TreeGrouper {
    hasher: ChunkHasher,
    compressor: Compressor,
    output: TreeOutput,
    /// Tree blobs this run queued for packing.
    queued: HashSet<ChunkId>,
    pending: Vec<ManifestEntry>,
    pending_bytes: usize,
}

impl TreeGrouper {
    /// A grouper that hashes with `hasher` and compresses new tree blobs at
    /// `compression_level` for `output`.
    pub(crate) fn new(
        hasher: ChunkHasher,
        compression_level: i32,
        output: TreeOutput,
    ) -> Result<Self, RunFailure> {
        Ok(TreeGrouper {
            hasher,
            compressor: new_compressor(compression_level)
                .map_err(|e| RunFailure::permanent(format!("starting zstd: {e}")))?,
            output,
            queued: HashSet::new(),
            pending: Vec::with_capacity(BOUNDARY_SPACING.into()),
            pending_bytes: 0,
        })
    }

    /// Adds the next entry (in manifest order), writing a `subtree` line
    /// into `writer` when it ends a run. Runs on a blocking thread.
    pub(crate) fn add<W: Write>(
        &mut self,
        writer: &mut ManifestWriter<W>,
        entry: ManifestEntry,
    ) -> Result<(), RunFailure> {
        let boundary = self.is_boundary(&entry.path);
        self.pending_bytes += estimated_line_bytes(&entry);
        self.pending.push(entry);
        if boundary
            || self.pending.len() >= MAX_TREE_ENTRIES
            || self.pending_bytes >= MAX_TREE_BYTES
        {
            self.flush(writer)?;
        }
        Ok(())
    }

    /// Writes the pending run, if any: a `subtree` line naming its blob,
    /// packed unless the repository holds it already.
    pub(crate) fn flush<W: Write>(
        &mut self,
        writer: &mut ManifestWriter<W>,
    ) -> Result<(), RunFailure> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = match encode_tree(&self.hasher, &self.pending) {
            Ok((subtree, bytes)) => {
                if !self.is_stored(&subtree.blob) {
                    self.pack(subtree.blob, &bytes)?;
                }
                writer.add_subtree(&subtree)
            }
            // Entries a blob cannot hold (over 16 MiB of lines: files of
            // hundreds of thousands of chunks) are written in place; an
            // invalid entry fails there, as it would without trees.
            Err(_) => self.pending.iter().try_for_each(|entry| writer.add(entry)),
        };
        written.map_err(|e| RunFailure::permanent(format!("writing the manifest: {e}")))?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    fn is_boundary(&self, path: &[u8]) -> bool {
        let hash = self.hasher.chunk_id(path);
        let [low, high, ..] = *hash.as_bytes();
        u16::from_le_bytes([low, high]) % BOUNDARY_SPACING == 0
    }

    fn is_stored(&self, id: &ChunkId) -> bool {
        self.queued.contains(id)
            || self
                .output
                .index
                .get(id)
                .is_some_and(|location| location.blob_type == BlobType::Tree)
    }

    fn pack(&mut self, id: ChunkId, bytes: &[u8]) -> Result<(), RunFailure> {
        let chunk = encode_chunk(&mut self.compressor, id, bytes)
            .map_err(|e| RunFailure::permanent(format!("compressing a tree blob: {e}")))?;
        self.output
            .packer
            .blocking_send(chunk)
            .map_err(|_| RunFailure::retryable("the tree packer stopped"))?;
        self.queued.insert(id);
        Ok(())
    }
}

/// About how many bytes an entry's line takes, without encoding it.
fn estimated_line_bytes(entry: &ManifestEntry) -> usize {
    let target = entry.attributes.symlink_target.as_ref().map_or(0, Vec::len);
    256 + (entry.path.len() + target) * 4 / 3 + entry.chunks.len() * 67
}
