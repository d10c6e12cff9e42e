//! Coffer's on-storage repository format, versions 1 and 2.
//!
//! This crate only turns bytes into bytes: it defines how chunks are cut and
//! identified, how packs, index files, the repository config and snapshot
//! manifests are encoded (and, in format v2, sealed), and where each object
//! lives in the repository. It does no network or storage I/O, so the
//! worker (which uploads) and any offline tool (which verifies or restores)
//! share one definition of the format. `README.md` beside this crate
//! specifies both versions for people.
//!
//! # Using format v2 from a worker
//!
//! Everything that needs randomness takes a `CryptoRng` (the worker passes
//! `rand::rngs::OsRng`); every object to write comes back as
//! [`crypto::StoredObject`] `(key, bytes)`.
//!
//! 1. **Create** ([`RepositoryKeys::create`]): write every returned object
//!    create-only, then `config` last. The catalog keeps the 32-byte
//!    catalog key (a managed secret) and may record
//!    [`crypto::GenerationKeys::fingerprint`] of the current generation.
//! 2. **Open**: read `config` with [`AnyConfig::from_bytes`]; for
//!    [`AnyConfig::V2`], call [`RepositoryConfigV2::check_expected`] with the
//!    catalog's repository id and encryption. List and fetch `keys/` and
//!    `keyring/` ([`layout::parse_slot_key`], [`layout::parse_keyring_key`]),
//!    parse slots with [`crypto::KeySlot::parse`], unlock one with
//!    [`crypto::unlock_slot`] (the lease's catalog key, or a passphrase for a
//!    rebuild without the catalog), then [`RepositoryKeys::open`]. An
//!    unencrypted repository: [`RepositoryConfigV2::unencrypted_keys`].
//! 3. **Back up**: cut files with [`RepositoryKeys::chunker`], name chunks
//!    with [`RepositoryKeys::hasher`], compress with [`encode_chunk`], pack
//!    them with [`pack::PackWriterV2`] (`finish` shuffles and seals), list
//!    them in an [`IndexFile`] of [`IndexPack::from_sealed`] written with
//!    [`IndexFile::encode_v2`], and stream the manifest through
//!    [`manifest::sealed_manifest_writer`] under its attempt key. The v1
//!    write order (packs, index, manifest) holds.
//! 4. **Restore and verify**: [`IndexFile::decode_v2`] into a [`ChunkIndex`];
//!    each [`ChunkLocation`] has the pack's [`pack::PackSealing`], so
//!    [`pack::open_blob`] opens a blob from one ranged read;
//!    [`pack::read_pack_v2`] checks a whole pack; manifests stream through
//!    [`manifest::sealed_manifest_reader`] (or, for manifests with
//!    `subtree` lines, [`ManifestReader::with_trees`] around a
//!    [`crypto::SealedReader`], with a [`manifest::TreeSource`] that opens
//!    tree blobs from their packs). Errors for which
//!    [`FormatError::is_corruption`] holds name the damaged object;
//!    [`FormatError::KeyRejected`] means the slot cannot read it.
//! 5. **Manage slots**: [`RepositoryKeys::add_slot`], and
//!    [`RepositoryKeys::rotate`] with the remaining slots to remove one
//!    (then delete its `keys/` and `keyring/` objects).
//!
//! ```
//! use coffer_format::crypto::{unlock_slot, KeySlot, SlotSecret};
//! use coffer_format::{layout, AnyConfig, RepositoryKeys};
//! # fn main() -> Result<(), coffer_format::FormatError> {
//! let catalog_key = [7u8; 32];
//! let mut rng = rand::rngs::OsRng;
//! let new = RepositoryKeys::create("0190a0c4", &catalog_key, None, chrono::Utc::now(), &mut rng)?;
//! // ... the worker writes `new.objects`, then `new.config` under `config`.
//! let AnyConfig::V2(config) = AnyConfig::from_bytes(&new.config)? else { unreachable!() };
//! config.check_expected("0190a0c4", true)?;
//! let slots: Vec<KeySlot> = new.objects.iter()
//!     .filter(|(key, _)| layout::parse_slot_key(key).is_some())
//!     .map(|(key, bytes)| KeySlot::parse(key, bytes))
//!     .collect::<Result<_, _>>()?;
//! let slot = unlock_slot(&slots, SlotSecret::Catalog(&catalog_key))?;
//! let keys = RepositoryKeys::open(&config, &slot, &new.objects)?;
//! assert_eq!(keys.current().generation(), 1);
//! # Ok(())
//! # }
//! ```

mod attributes;
pub mod chunker;
pub mod condemned;
pub mod config;
pub mod config_v2;
pub mod crypto;
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
pub use chunker::{ChunkBuffer, ChunkStream, Chunker, GearTable, StreamChunk};
pub use condemned::{CondemnedPack, CondemnedSet};
pub use config::{ChunkerParams, RepositoryConfig};
pub use config_v2::{AnyConfig, RepositoryConfigV2};
pub use crypto::{Encryption, ObjectKind, RepositoryKeys};
pub use error::FormatError;
pub use hash::{ChunkHasher, ContentHasher};
pub use id::{ChunkId, IndexId, InvalidId, PackId};
pub use index::{ChunkIndex, ChunkLocation, IndexFile, IndexPack};
pub use jsonl::MAX_LINE_BYTES;
pub use manifest::{
    compare_paths, EntryKind, ManifestEntry, ManifestFooter, ManifestHeader, ManifestReader,
    ManifestWriter,
};
pub use pack::BlobType;
pub use pack::{
    decode_blob, encode_chunk, new_compressor, read_pack_entries, Compression, Compressor,
    EncodedChunk, PackBuilder, PackEntry, SealedPack,
};
pub use version::{FORMAT_NAME, FORMAT_VERSION, FORMAT_VERSION_2, NEWEST_FORMAT_VERSION};

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
