//! Coffer's on-storage repository format, version 1.
//!
//! This crate only turns bytes into bytes: it defines how chunks are cut and
//! identified, how packs, index files, the repository config and snapshot
//! manifests are encoded, and where each object lives in the repository. It
//! does no network or storage I/O, so the worker (which uploads) and any
//! offline tool (which verifies or restores) share one definition of the
//! format. `README.md` beside this crate describes the format for people.

mod attributes;
pub mod chunker;
pub mod condemned;
pub mod config;
mod error;
pub mod hash;
pub mod id;
pub mod index;
mod jsonl;
pub mod layout;
pub mod manifest;
pub mod pack;

#[cfg(test)]
mod test_data;

pub use attributes::{FileAttributes, PERMISSION_BITS};
pub use chunker::{ChunkBuffer, ChunkStream, Chunker, StreamChunk};
pub use condemned::{CondemnedPack, CondemnedSet};
pub use config::{ChunkerParams, RepositoryConfig};
pub use error::FormatError;
pub use hash::{ChunkHasher, ContentHasher};
pub use id::{ChunkId, IndexId, PackId};
pub use index::{ChunkIndex, ChunkLocation, IndexFile, IndexPack};
pub use manifest::{
    compare_paths, EntryKind, ManifestEntry, ManifestFooter, ManifestHeader, ManifestReader,
    ManifestWriter,
};
pub use pack::{
    decode_blob, encode_chunk, new_compressor, read_pack_entries, Compression, Compressor,
    EncodedChunk, PackBuilder, PackEntry, SealedPack,
};

/// Name written into every self-describing object (config, index files,
/// manifests), so a reader can tell a Coffer repository from anything else.
pub const FORMAT_NAME: &str = "coffer";

/// The format version this crate writes and the newest one it reads. Any
/// change to an encoding that an older reader would misread bumps it.
pub const FORMAT_VERSION: u32 = 1;

/// Rejects objects that are not Coffer objects of a version this build reads.
///
/// Version 0 never existed, so it is as unreadable as a future version.
fn check_format(format: &str, version: u32) -> Result<(), FormatError> {
    if format == FORMAT_NAME && (1..=FORMAT_VERSION).contains(&version) {
        return Ok(());
    }
    Err(FormatError::UnsupportedFormat {
        format: format.to_owned(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Chunking, compression and hashing run on blocking threads, so the
    /// types doing them must move between threads.
    #[test]
    fn working_types_can_move_to_blocking_threads() {
        assert_send(&PackBuilder::new(3));
        assert_send(&ChunkIndex::new());
        assert_send(&ChunkHasher::new([0; 32]).content_hasher());
        assert_send(&Chunker::new(ChunkerParams::default()).chunks(std::io::empty()));
        assert_send(
            &Chunker::new(ChunkerParams::default())
                .stream(std::io::empty(), ChunkBuffer::default()),
        );
        let header = ManifestHeader::new(
            uuid::Uuid::nil(),
            "/".to_owned(),
            "host".to_owned(),
            chrono::DateTime::UNIX_EPOCH,
            ChunkerParams::default(),
        );
        let writer = ManifestWriter::new(Vec::new(), &header, 1).expect("header is valid");
        assert_send(&writer);
        let bytes = writer.finish().expect("in memory");
        let reader = ManifestReader::new(std::io::Cursor::new(bytes)).expect("just written");
        assert_send(&reader);
    }
}
