//! Format v2 packs: the blobs of v1, each sealed with AES-256-GCM under the
//! pack's own key, in a random order, with a sealed trailer.
//!
//! ```text
//! 0    4   "CFPK"
//! 4    4   version u32 LE (= 2)
//! 8    1   encryption: 1 = aes-256-gcm, 0 = none (keyed BLAKE3 tag)
//! 9    3   zero
//! 12   4   generation u32 LE
//! 16   32  salt
//! 48   ..  blobs in a random order; blob = (zstd or raw chunk) sealed with
//!          nonce = 8 zero bytes ‖ its offset u32 BE, associated data =
//!          chunk id ‖ blob type, followed by its 16-byte tag
//! T    ..  sealed trailer: count u32 LE | n × 46-byte entries (chunk id
//!          [32] | offset u32 | length u32 | raw_length u32 | compression u8
//!          | blob type u8), entries in blob order; nonce = 12 × 0xff,
//!          associated data = the 48-byte header; then its 16-byte tag
//! L-8  4   sealed trailer length u32 LE (tag included)
//! L-4  4   "CFPK"
//! ```
//!
//! The pack key is HKDF(pack key of the generation, salt, "coffer v2
//! object"). An entry's `length` counts the tag.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    check_count, check_tiling, decode_blob, pack_too_large, u32_at, BlobType, Compression,
    EncodedChunk, PackEntry, SealedPack, MAX_CHUNK_SIZE, PACK_MAGIC,
};
use crate::crypto::cipher::{ObjectCipher, TAG_LEN};
use crate::crypto::{Encryption, ObjectKind, RepositoryKeys, Salt};
use crate::error::FormatError;
use crate::id::{ChunkId, PackId};
use crate::version::FORMAT_VERSION_2;

/// Bytes before the first blob of a v2 pack.
pub const PACK_V2_HEADER_LEN: usize = 48;
/// Bytes after the sealed trailer: its length and the magic.
const FOOTER_LEN: usize = 8;
const ENTRY_LEN: usize = 46;
/// The trailer's nonce: above every blob's, whose first 8 bytes are zero.
const TRAILER_NONCE: [u8; 12] = [0xff; 12];

/// What a reader needs, besides the key set, to open a blob of a v2 pack
/// with one ranged read; index files record it per pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackSealing {
    /// The key generation the pack is sealed under.
    pub generation: u32,
    /// The pack's salt.
    #[serde(with = "crate::config::hex_key")]
    pub salt: Salt,
}

fn blob_nonce(offset: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[8..].copy_from_slice(&offset.to_be_bytes());
    nonce
}

fn blob_aad(entry_id: &[u8; 32], blob_type: BlobType) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(entry_id);
    aad[32] = blob_type.to_byte();
    aad
}

fn encode_header(encryption: Encryption, sealing: &PackSealing) -> [u8; PACK_V2_HEADER_LEN] {
    let mut header = [0u8; PACK_V2_HEADER_LEN];
    header[..4].copy_from_slice(&PACK_MAGIC);
    header[4..8].copy_from_slice(&FORMAT_VERSION_2.to_le_bytes());
    header[8] = encryption.to_byte();
    header[12..16].copy_from_slice(&sealing.generation.to_le_bytes());
    header[16..48].copy_from_slice(&sealing.salt);
    header
}

/// Collects compressed chunks (see [`super::encode_chunk`]) for one v2 pack;
/// they are shuffled and sealed by [`PackWriterV2::finish`], because a
/// blob's nonce is its offset, known only once the order is.
#[derive(Default)]
pub struct PackWriterV2 {
    blobs: Vec<(EncodedChunk, BlobType)>,
    /// Chunk ids and types already added.
    ids: HashSet<(ChunkId, BlobType)>,
    blob_bytes: usize,
}

impl PackWriterV2 {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one blob, taking it (the pack copies each blob once, when it
    /// is sealed); `false` when the same chunk id and type is already in
    /// this pack. A pack that would pass 4 GiB is
    /// [`FormatError::InvalidInput`]: seal it earlier.
    pub fn add(&mut self, blob: EncodedChunk, blob_type: BlobType) -> Result<bool, FormatError> {
        if self.ids.contains(&(blob.id, blob_type)) {
            return Ok(false);
        }
        if blob.raw_length > MAX_CHUNK_SIZE {
            return Err(FormatError::InvalidInput(format!(
                "chunk {} is {} bytes, more than the {MAX_CHUNK_SIZE}-byte limit",
                blob.id, blob.raw_length
            )));
        }
        let sealed_len = PACK_V2_HEADER_LEN
            + self.blob_bytes
            + blob.bytes.len()
            + TAG_LEN
            + (self.blobs.len() + 1) * ENTRY_LEN
            + 4
            + TAG_LEN
            + FOOTER_LEN;
        if u32::try_from(sealed_len).is_err() {
            return Err(pack_too_large());
        }
        self.blob_bytes += blob.bytes.len() + TAG_LEN;
        self.ids.insert((blob.id, blob_type));
        self.blobs.push((blob, blob_type));
        Ok(true)
    }

    /// Bytes of sealed blobs so far (to decide when the pack is full).
    pub fn len(&self) -> usize {
        self.blob_bytes
    }

    /// True when no blob has been added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Number of blobs added.
    pub fn chunk_count(&self) -> usize {
        self.blobs.len()
    }

    /// True when the chunk is already in this pack as `blob_type`.
    pub fn contains(&self, id: &ChunkId, blob_type: BlobType) -> bool {
        self.ids.contains(&(*id, blob_type))
    }

    /// Shuffles the blobs with `rng` (Fisher–Yates), seals each one and the
    /// trailer under the current generation of `keys` with a fresh salt,
    /// and returns the finished pack.
    pub fn finish<R: rand::RngCore + rand::CryptoRng>(
        self,
        keys: &RepositoryKeys,
        rng: &mut R,
    ) -> Result<SealedPack, FormatError> {
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        let sealing = PackSealing {
            generation: keys.current().generation(),
            salt,
        };
        let mut blobs = self.blobs;
        shuffle(&mut blobs, rng);
        let cipher = keys.current().cipher(ObjectKind::Pack, &salt);
        let header = encode_header(keys.encryption(), &sealing);
        let mut bytes =
            Vec::with_capacity(PACK_V2_HEADER_LEN + self.blob_bytes + blobs.len() * ENTRY_LEN + 64);
        bytes.extend_from_slice(&header);
        let mut entries = Vec::with_capacity(blobs.len());
        for (blob, blob_type) in &blobs {
            // `add` kept the whole pack below 4 GiB.
            let offset = bytes.len() as u32;
            bytes.extend_from_slice(&blob.bytes);
            let tag = cipher.seal(
                &blob_nonce(offset),
                &blob_aad(&blob.id.0, *blob_type),
                &mut bytes[offset as usize..],
            );
            bytes.extend_from_slice(&tag);
            entries.push(PackEntry {
                chunk_id: blob.id,
                offset,
                length: (blob.bytes.len() + TAG_LEN) as u32,
                raw_length: blob.raw_length,
                compression: blob.compression,
                blob_type: *blob_type,
            });
        }
        let trailer = cipher.seal_to_vec(&TRAILER_NONCE, &header, &encode_trailer(&entries));
        bytes.extend_from_slice(&trailer);
        bytes.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&PACK_MAGIC);
        Ok(SealedPack {
            id: PackId::compute(&bytes),
            bytes,
            entries,
            sealing: Some(sealing),
        })
    }
}

impl fmt::Debug for PackWriterV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackWriterV2")
            .field("len", &self.len())
            .field("chunk_count", &self.chunk_count())
            .finish()
    }
}

/// Fisher–Yates: for i from n−1 down to 1, swap i with j =
/// ⌊next_u64 × (i + 1) / 2⁶⁴⌋ (bias below 2⁻³², irrelevant for hiding
/// an order; written out rather than `SliceRandom::shuffle` so the test
/// vectors do not depend on `rand`'s internals).
fn shuffle<T, R: rand::RngCore>(items: &mut [T], rng: &mut R) {
    for i in (1..items.len()).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

fn encode_trailer(entries: &[PackEntry]) -> Vec<u8> {
    let mut trailer = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
    trailer.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        trailer.extend_from_slice(&entry.chunk_id.0);
        trailer.extend_from_slice(&entry.offset.to_le_bytes());
        trailer.extend_from_slice(&entry.length.to_le_bytes());
        trailer.extend_from_slice(&entry.raw_length.to_le_bytes());
        trailer.push(entry.compression.to_byte());
        trailer.push(entry.blob_type.to_byte());
    }
    trailer
}

fn corrupt(what: impl Into<String>) -> FormatError {
    FormatError::Corrupt(format!("pack: {}", what.into()))
}

/// Checks an entry's lengths in a v2 pack: the stored length counts the
/// tag, and an uncompressed blob is its raw length plus the tag.
fn check_v2_lengths(entry: &PackEntry) -> Result<(), FormatError> {
    if entry.raw_length > MAX_CHUNK_SIZE || (entry.length as usize) < TAG_LEN {
        return Err(corrupt(format!(
            "chunk {}: implausible lengths",
            entry.chunk_id
        )));
    }
    if entry.compression == Compression::None
        && entry.length as usize != entry.raw_length as usize + TAG_LEN
    {
        return Err(corrupt(format!(
            "uncompressed chunk {} has stored length {} for raw length {}",
            entry.chunk_id, entry.length, entry.raw_length
        )));
    }
    Ok(())
}

/// Reads a whole v2 pack's header and sealed trailer, checks the entries
/// tile the blob area, and returns the pack's sealing and entries (in blob
/// order). A damaged header or trailer, or a pack sealed under another key
/// or generation, is corrupt; a generation the key set cannot open is
/// [`FormatError::KeyRejected`].
pub fn read_pack_v2(
    keys: &RepositoryKeys,
    pack: &[u8],
) -> Result<(PackSealing, Vec<PackEntry>), FormatError> {
    if pack.len() < PACK_V2_HEADER_LEN + 4 + TAG_LEN + FOOTER_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than the smallest v2 pack",
            pack.len()
        )));
    }
    if pack[..4] != PACK_MAGIC || u32_at(pack, 4) != FORMAT_VERSION_2 || pack[9..12] != [0, 0, 0] {
        return Err(corrupt("not a v2 pack (magic, version or reserved bytes)"));
    }
    if Encryption::from_byte(pack[8]) != Some(keys.encryption()) {
        return Err(corrupt("encryption byte is not the repository's"));
    }
    if pack[pack.len() - 4..] != PACK_MAGIC {
        return Err(corrupt("bad footer magic (truncated?)"));
    }
    let header: &[u8; PACK_V2_HEADER_LEN] = pack[..PACK_V2_HEADER_LEN]
        .try_into()
        .expect("checked length");
    let sealing = PackSealing {
        generation: u32_at(pack, 12),
        salt: header[16..48].try_into().expect("32 bytes"),
    };
    let footer_start = pack.len() - FOOTER_LEN;
    let trailer_length = u32_at(pack, footer_start) as usize;
    let Some(trailer_start) = footer_start
        .checked_sub(trailer_length)
        .filter(|start| *start >= PACK_V2_HEADER_LEN)
    else {
        return Err(corrupt(format!(
            "trailer length {trailer_length} does not fit in a {}-byte pack",
            pack.len()
        )));
    };
    let cipher = keys
        .generation(sealing.generation)?
        .cipher(ObjectKind::Pack, &sealing.salt);
    let trailer = cipher
        .open_to_vec(&TRAILER_NONCE, header, &pack[trailer_start..footer_start])
        .ok_or_else(|| {
            corrupt("trailer does not authenticate (damaged, or sealed under another key)")
        })?;
    let entries = parse_trailer(&trailer)?;
    check_tiling(&entries, PACK_V2_HEADER_LEN, trailer_start)?;
    Ok((sealing, entries))
}

fn parse_trailer(trailer: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    if trailer.len() < 4 {
        return Err(corrupt("trailer shorter than its entry count"));
    }
    let count = u32_at(trailer, 0) as usize;
    let records = &trailer[4..];
    if Some(records.len()) != count.checked_mul(ENTRY_LEN) {
        return Err(corrupt(format!(
            "trailer has {} bytes of entries for {count} entries",
            records.len()
        )));
    }
    let mut seen = HashSet::new();
    records
        .chunks_exact(ENTRY_LEN)
        .map(|record| {
            let compression = Compression::from_byte(record[44])
                .ok_or_else(|| corrupt(format!("unknown compression byte {}", record[44])))?;
            let blob_type = BlobType::from_byte(record[45])
                .ok_or_else(|| corrupt(format!("unknown blob type {}", record[45])))?;
            let entry = PackEntry {
                chunk_id: ChunkId(record[..32].try_into().expect("32 bytes")),
                offset: u32_at(record, 32),
                length: u32_at(record, 36),
                raw_length: u32_at(record, 40),
                compression,
                blob_type,
            };
            check_v2_lengths(&entry)?;
            if !seen.insert((entry.chunk_id, blob_type)) {
                return Err(corrupt(format!("chunk {} listed twice", entry.chunk_id)));
            }
            Ok(entry)
        })
        .collect()
}

/// Opens one blob of a v2 pack (the `length` bytes at `offset`, from a
/// ranged read or a whole pack): authenticates and decrypts it with the
/// pack's key, decompresses at most `raw_length` bytes and checks the
/// chunk id. A blob moved within its pack or from another pack, damaged,
/// or given under another id or type is corrupt; never returned.
pub fn open_blob(
    keys: &RepositoryKeys,
    sealing: &PackSealing,
    entry: &PackEntry,
    blob: &[u8],
) -> Result<Vec<u8>, FormatError> {
    check_v2_lengths(entry)?;
    check_count(entry, ("got", "blob bytes"), blob.len(), entry.length)?;
    let cipher: ObjectCipher = keys
        .generation(sealing.generation)?
        .cipher(ObjectKind::Pack, &sealing.salt);
    let plain = cipher
        .open_to_vec(&blob_nonce(entry.offset), &blob_aad(&entry.chunk_id.0, entry.blob_type), blob)
        .ok_or_else(|| {
            FormatError::Corrupt(format!(
                "chunk {}: blob at offset {} does not authenticate (damaged, moved, or from another pack)",
                entry.chunk_id, entry.offset
            ))
        })?;
    let inner = PackEntry {
        length: entry.length - TAG_LEN as u32,
        ..entry.clone()
    };
    decode_blob(keys.hasher(), &inner, &plain)
}

#[cfg(test)]
mod tests;
