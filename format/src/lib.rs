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
pub mod local_path;
pub mod manifest;
pub mod pack;
mod version;

#[cfg(test)]
mod test_data;

pub use attributes::{FileAttributes, PERMISSION_BITS};
pub use chunker::{ChunkBuffer, ChunkStream, Chunker, StreamChunk};
pub use condemned::{CondemnedPack, CondemnedSet};
pub use config::{ChunkerParams, RepositoryConfig};
pub use error::FormatError;
pub use hash::{ChunkHasher, ContentHasher};
pub use id::{ChunkId, IndexId, InvalidId, PackId};
pub use index::{ChunkIndex, ChunkLocation, IndexFile, IndexPack};
pub use jsonl::MAX_LINE_BYTES;
pub use manifest::{
    compare_paths, EntryKind, ManifestEntry, ManifestFooter, ManifestHeader, ManifestReader,
    ManifestWriter,
};
pub use pack::{
    decode_blob, encode_chunk, new_compressor, read_pack_entries, Compression, Compressor,
    EncodedChunk, PackBuilder, PackEntry, SealedPack,
};
pub use version::{FORMAT_NAME, FORMAT_VERSION};

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
