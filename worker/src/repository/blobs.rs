//! Opening stored blobs, the one place where the two formats differ for
//! data: a v1 blob is decoded and checked against its chunk id, a v2 blob is
//! first authenticated and decrypted with its pack's key. Cheap to clone and
//! `Send`, so it goes to the blocking threads that decode.

use std::sync::Arc;

use coffer_format::pack::{open_blob, PackSealing};
use coffer_format::{
    decode_blob, encode_chunk, ChunkHasher, ChunkId, ChunkLocation, Compressor, EncodedChunk,
    FormatError, PackEntry, RepositoryKeys,
};

/// Opens blobs of one repository.
#[derive(Clone)]
pub struct BlobOpener {
    hasher: ChunkHasher,
    keys: Option<Arc<RepositoryKeys>>,
}

impl BlobOpener {
    pub(super) fn new(hasher: ChunkHasher, keys: Option<Arc<RepositoryKeys>>) -> Self {
        BlobOpener { hasher, keys }
    }

    /// The chunk `id` at `location`, from its stored bytes `blob`.
    pub fn open(
        &self,
        id: ChunkId,
        location: &ChunkLocation,
        blob: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        self.open_entry(&location.entry(id), location.sealing.as_ref(), blob)
    }

    /// The chunk of `entry`, in a pack sealed as `sealing` (v2; `None` in
    /// v1), from its stored bytes `blob`. A blob that does not
    /// authenticate or does not hash to its id is an error, never data.
    pub fn open_entry(
        &self,
        entry: &PackEntry,
        sealing: Option<&PackSealing>,
        blob: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        match (&self.keys, sealing) {
            (None, None) => decode_blob(&self.hasher, entry, blob),
            (Some(keys), Some(sealing)) => open_blob(keys, sealing, entry, blob),
            (None, Some(_)) => Err(FormatError::Corrupt(format!(
                "chunk {}: a v1 repository's index names a v2 pack",
                entry.chunk_id
            ))),
            (Some(_), None) => Err(FormatError::Corrupt(format!(
                "chunk {}: a v2 repository's index names a v1 pack",
                entry.chunk_id
            ))),
        }
    }

    /// The blob of `entry`, checked, ready to be packed again (garbage
    /// collection's repacking): a v1 blob as it is stored; a v2 blob opened
    /// and compressed again, since the new pack seals it under its own key.
    pub fn repack(
        &self,
        entry: &PackEntry,
        sealing: Option<&PackSealing>,
        blob: &[u8],
        compressor: &mut Compressor,
    ) -> Result<EncodedChunk, FormatError> {
        let chunk = self.open_entry(entry, sealing, blob)?;
        if self.keys.is_some() {
            return encode_chunk(compressor, entry.chunk_id, &chunk);
        }
        Ok(EncodedChunk {
            id: entry.chunk_id,
            raw_length: entry.raw_length,
            compression: entry.compression,
            bytes: blob.to_vec(),
        })
    }
}
