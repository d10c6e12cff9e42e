//! Packs: many compressed chunks in one storage object.
//!
//! Object stores charge per request and list slowly, so chunks (about 1 MiB)
//! are grouped into packs (about 16 MiB). A pack carries its own entry list
//! at the end, so the index can be rebuilt from the packs alone.
//!
//! Byte layout (all integers little-endian, offsets from the start of the pack):
//!
//! ```text
//! header   8 bytes   "CFPK" | version: u32 (= 1)
//! blobs    ...       blob i occupies entries[i].offset .. +entries[i].length,
//!                    back to back in entry order starting at offset 8
//! trailer  4+45n     count: u32 | n entries of 45 bytes:
//!                    chunk_id [32] | offset u32 | length u32 | raw_length u32 | compression u8
//! footer   24 bytes  trailer_length: u32 | blake3(trailer)[..16] | "CFPK"
//! ```
//!
//! The fixed-size footer lets a reader find the trailer from the end with one
//! ranged read; the trailer checksum catches a damaged entry list without
//! hashing the whole pack.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::FormatError;
use crate::hash::ChunkHasher;
use crate::id::{ChunkId, PackId};
use crate::version::{FORMAT_NAME, FORMAT_VERSION};

mod v2;

pub use v2::{open_blob, read_pack_v2, PackSealing, PackWriterV2, PACK_V2_HEADER_LEN};

/// The largest chunk a pack holds: FastCDC's largest `max_size`. Bounding it
/// bounds the memory a (possibly corrupt) entry can make a reader allocate.
pub const MAX_CHUNK_SIZE: u32 = fastcdc::v2020::MAXIMUM_MAX;

/// Magic at both ends of a pack.
pub const PACK_MAGIC: [u8; 4] = *b"CFPK";
/// Bytes before the first blob: magic and version.
pub const PACK_HEADER_LEN: usize = 8;
/// Bytes after the trailer: trailer length, trailer checksum, magic.
pub const PACK_FOOTER_LEN: usize = 24;
/// Bytes of one trailer entry.
pub const PACK_ENTRY_LEN: usize = 45;
const TRAILER_COUNT_LEN: usize = 4;
const TRAILER_CHECKSUM_LEN: usize = 16;

/// How a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// The blob is the raw chunk (zstd did not make it smaller).
    None,
    /// The blob is one zstd frame.
    Zstd,
}

impl Compression {
    fn to_byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What a blob holds (format v2; every v1 blob is `data`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File content: a chunk.
    #[default]
    Data,
    /// A run of manifest entries (zstd JSON lines), for manifests that
    /// point at their parent's unchanged parts.
    Tree,
}

impl BlobType {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }

    fn is_data(&self) -> bool {
        *self == BlobType::Data
    }
}

/// Where one chunk's blob lies in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackEntry {
    /// Keyed hash of the uncompressed chunk.
    pub chunk_id: ChunkId,
    /// Byte offset of the blob from the start of the pack.
    pub offset: u32,
    /// Stored (possibly compressed) length of the blob.
    pub length: u32,
    /// Length of the chunk after decompression.
    pub raw_length: u32,
    /// How the blob is stored.
    pub compression: Compression,
    /// What the blob holds; absent (data) in format v1.
    #[serde(rename = "type", default, skip_serializing_if = "BlobType::is_data")]
    pub blob_type: BlobType,
}

impl PackEntry {
    /// Checks what can be checked about one entry on its own: sizes within
    /// limits and, for an uncompressed blob, stored length equal to raw length.
    pub(crate) fn check_lengths(&self) -> Result<(), FormatError> {
        if self.raw_length > MAX_CHUNK_SIZE {
            return Err(FormatError::Corrupt(format!(
                "chunk {} claims {} bytes, more than the {MAX_CHUNK_SIZE}-byte limit",
                self.chunk_id, self.raw_length
            )));
        }
        if self.compression == Compression::None && self.length != self.raw_length {
            return Err(FormatError::Corrupt(format!(
                "uncompressed chunk {} has stored length {} but raw length {}",
                self.chunk_id, self.length, self.raw_length
            )));
        }
        Ok(())
    }
}

/// A chunk ready for a pack: compressed when that made it smaller.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// The chunk's keyed hash.
    pub id: ChunkId,
    /// Uncompressed length.
    pub raw_length: u32,
    /// How `bytes` is encoded.
    pub compression: Compression,
    /// The blob as stored.
    pub bytes: Vec<u8>,
}

/// Compresses one chunk with zstd (keeping it raw when that is not
/// smaller, or when a sample of it looks like random bytes), for
/// [`PackBuilder::add_blob`]. `compressor` is reused between calls because
/// setting one up costs more than a small chunk.
pub fn encode_chunk(
    compressor: &mut zstd::bulk::Compressor<'static>,
    id: ChunkId,
    raw: &[u8],
) -> Result<EncodedChunk, FormatError> {
    let raw_length = chunk_length(id, raw)?;
    let stored_raw = || EncodedChunk {
        id,
        raw_length,
        compression: Compression::None,
        bytes: raw.to_vec(),
    };
    if looks_incompressible(raw) {
        return Ok(stored_raw());
    }
    let compressed = compressor.compress(raw)?;
    Ok(if compressed.len() < raw.len() {
        EncodedChunk {
            id,
            raw_length,
            compression: Compression::Zstd,
            bytes: compressed,
        }
    } else {
        stored_raw()
    })
}

/// The length of chunk `id` as a pack records it; a chunk over
/// [`MAX_CHUNK_SIZE`] is [`FormatError::InvalidInput`].
fn chunk_length(id: ChunkId, raw: &[u8]) -> Result<u32, FormatError> {
    u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_CHUNK_SIZE)
        .ok_or_else(|| {
            FormatError::InvalidInput(format!(
                "chunk {id} is {} bytes, more than the {MAX_CHUNK_SIZE}-byte limit",
                raw.len()
            ))
        })
}

/// Chunks shorter than this are always offered to zstd.
const ENTROPY_MIN_LEN: usize = 512;
/// Bytes of a chunk whose histogram is taken: this many windows of
/// [`ENTROPY_WINDOW`] bytes spread evenly over the chunk.
const ENTROPY_WINDOWS: usize = 16;
const ENTROPY_WINDOW: usize = 512;

/// Whether a sample of `raw` has a byte histogram so flat (order-0 entropy
/// within sampling noise of 8 bits per byte) that zstd would not make it
/// noticeably smaller: compressed or encrypted data, random bytes. Costs a
/// histogram of at most 8 KiB instead of a zstd pass over the whole chunk,
/// which on such data spends the most time per byte for nothing.
///
/// The price of a wrong guess is only size, never correctness: a blob
/// stored raw is as valid as a compressed one. Data that is flat byte-wise
/// yet repetitive (the same random block many times in one chunk) is the
/// case this misses; deduplication still catches repeats at chunk scale.
fn looks_incompressible(raw: &[u8]) -> bool {
    if raw.len() < ENTROPY_MIN_LEN {
        return false;
    }
    let mut counts = [0u32; 256];
    let mut sampled = 0usize;
    if raw.len() <= ENTROPY_WINDOWS * ENTROPY_WINDOW {
        raw.iter().for_each(|b| counts[usize::from(*b)] += 1);
        sampled = raw.len();
    } else {
        let stride = (raw.len() - ENTROPY_WINDOW) / (ENTROPY_WINDOWS - 1);
        for window in 0..ENTROPY_WINDOWS {
            let start = window * stride;
            raw[start..start + ENTROPY_WINDOW]
                .iter()
                .for_each(|b| counts[usize::from(*b)] += 1);
            sampled += ENTROPY_WINDOW;
        }
    }
    let n = sampled as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    // A sample of n uniformly random bytes shows about 255 / (2 n ln 2)
    // bits less than 8 (the plug-in estimator's bias); allow twice that
    // plus a little for noise.
    let bias = 255.0 / (2.0 * n * std::f64::consts::LN_2);
    entropy >= 8.0 - 2.0 * bias - 0.02
}

/// A reusable zstd compression context.
pub type Compressor = zstd::bulk::Compressor<'static>;

/// A zstd compressor for [`encode_chunk`].
pub fn new_compressor(level: i32) -> Result<Compressor, FormatError> {
    Ok(zstd::bulk::Compressor::new(level)?)
}

/// Accumulates compressed chunks into one pack.
pub struct PackBuilder {
    compression_level: i32,
    /// Created on first use and reused: a zstd context is costly to set up
    /// and packs often hold thousands of small chunks.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
    ids: HashSet<ChunkId>,
}

impl PackBuilder {
    /// An empty pack whose blobs will be compressed at `compression_level`.
    pub fn new(compression_level: i32) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&PACK_MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        debug_assert_eq!(bytes.len(), PACK_HEADER_LEN);
        PackBuilder {
            compression_level,
            compressor: None,
            bytes,
            entries: Vec::new(),
            ids: HashSet::new(),
        }
    }

    /// Compresses and appends one chunk. Stores it uncompressed when zstd
    /// does not make it smaller.
    ///
    /// `id` must be the chunk's keyed hash ([`ChunkHasher::chunk_id`]); it is
    /// not recomputed here, and [`decode_blob`] rejects a blob stored under a
    /// wrong id. Adding a chunk id already in this pack is a no-op returning
    /// `false`. A chunk larger than [`MAX_CHUNK_SIZE`], or one that would push the
    /// pack past 4 GiB (offsets are `u32`), is [`FormatError::InvalidInput`].
    pub fn add(&mut self, id: ChunkId, raw: &[u8]) -> Result<bool, FormatError> {
        if self.ids.contains(&id) {
            return Ok(false);
        }
        let raw_length = chunk_length(id, raw)?;
        let compressed = self.compress(raw)?;
        let (compression, blob) = if compressed.len() < raw.len() {
            (Compression::Zstd, compressed.as_slice())
        } else {
            (Compression::None, raw)
        };
        if u32::try_from(self.sealed_len(blob.len(), 1)).is_err() {
            return Err(pack_too_large());
        }
        // Both fit: they are below the sealed length just checked.
        let offset = self.bytes.len() as u32;
        let length = blob.len() as u32;
        self.bytes.extend_from_slice(blob);
        self.entries.push(PackEntry {
            chunk_id: id,
            offset,
            length,
            raw_length,
            compression,
            blob_type: BlobType::Data,
        });
        self.ids.insert(id);
        Ok(true)
    }

    /// Appends a blob compressed elsewhere (see [`encode_chunk`]), so that
    /// compression can run on many threads while one builder packs.
    /// Returns `false` when the id is already in this pack.
    pub fn add_blob(&mut self, blob: &EncodedChunk) -> Result<bool, FormatError> {
        if self.ids.contains(&blob.id) {
            return Ok(false);
        }
        if blob.raw_length > MAX_CHUNK_SIZE {
            return Err(FormatError::InvalidInput(format!(
                "chunk {} is {} bytes, more than the {MAX_CHUNK_SIZE}-byte limit",
                blob.id, blob.raw_length
            )));
        }
        if u32::try_from(self.sealed_len(blob.bytes.len(), 1)).is_err() {
            return Err(pack_too_large());
        }
        // Both fit: they are below the sealed length just checked.
        let offset = self.bytes.len() as u32;
        let length = blob.bytes.len() as u32;
        self.bytes.extend_from_slice(&blob.bytes);
        self.entries.push(PackEntry {
            chunk_id: blob.id,
            offset,
            length,
            raw_length: blob.raw_length,
            compression: blob.compression,
            blob_type: BlobType::Data,
        });
        self.ids.insert(blob.id);
        Ok(true)
    }

    fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, FormatError> {
        let compressor = match &mut self.compressor {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(self.compression_level)?),
        };
        Ok(compressor.compress(raw)?)
    }

    /// Size of the sealed pack if `blob_bytes` more blob bytes in `entries`
    /// more entries were added. `add` keeps this within `u32` so that
    /// `finish` cannot fail for size after chunks were accepted.
    fn sealed_len(&self, blob_bytes: usize, entries: usize) -> usize {
        self.bytes.len()
            + blob_bytes
            + TRAILER_COUNT_LEN
            + (self.entries.len() + entries) * PACK_ENTRY_LEN
            + PACK_FOOTER_LEN
    }

    /// Bytes of blob data so far (to decide when the pack is full).
    pub fn len(&self) -> usize {
        self.bytes.len() - PACK_HEADER_LEN
    }

    /// True when no chunk has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of distinct chunks added.
    pub fn chunk_count(&self) -> usize {
        self.entries.len()
    }

    /// True when `id` was already added to this pack.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains(id)
    }

    /// Writes the trailer and returns the finished pack. An empty builder
    /// gives a valid pack with no entries; callers normally skip uploading it.
    pub fn finish(self) -> Result<SealedPack, FormatError> {
        let PackBuilder {
            mut bytes, entries, ..
        } = self;
        let trailer = encode_trailer(&entries)?;
        let sealed_len = bytes.len() + trailer.len() + PACK_FOOTER_LEN;
        if u32::try_from(sealed_len).is_err() {
            return Err(pack_too_large());
        }
        let trailer_length = trailer.len() as u32;
        bytes.extend_from_slice(&trailer);
        bytes.extend_from_slice(&trailer_length.to_le_bytes());
        bytes.extend_from_slice(&blake3::hash(&trailer).as_bytes()[..TRAILER_CHECKSUM_LEN]);
        bytes.extend_from_slice(&PACK_MAGIC);
        Ok(SealedPack {
            id: PackId::compute(&bytes),
            bytes,
            entries,
            sealing: None,
        })
    }
}

impl fmt::Debug for PackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackBuilder")
            .field("compression_level", &self.compression_level)
            .field("len", &self.len())
            .field("chunk_count", &self.chunk_count())
            .finish_non_exhaustive()
    }
}

fn pack_too_large() -> FormatError {
    FormatError::InvalidInput(
        "pack would exceed 4 GiB (offsets are u32); seal it earlier".to_owned(),
    )
}

fn encode_trailer(entries: &[PackEntry]) -> Result<Vec<u8>, FormatError> {
    let count = u32::try_from(entries.len())
        .map_err(|_| FormatError::InvalidInput("too many chunks in one pack".to_owned()))?;
    let mut trailer = Vec::with_capacity(TRAILER_COUNT_LEN + entries.len() * PACK_ENTRY_LEN);
    trailer.extend_from_slice(&count.to_le_bytes());
    for entry in entries {
        trailer.extend_from_slice(&entry.chunk_id.0);
        trailer.extend_from_slice(&entry.offset.to_le_bytes());
        trailer.extend_from_slice(&entry.length.to_le_bytes());
        trailer.extend_from_slice(&entry.raw_length.to_le_bytes());
        trailer.push(entry.compression.to_byte());
    }
    Ok(trailer)
}

/// A finished pack, ready to upload under [`crate::layout::pack_key`]`(&id)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPack {
    /// Plain BLAKE3 of `bytes`.
    pub id: PackId,
    /// The whole pack object.
    pub bytes: Vec<u8>,
    /// The pack's entries, in blob order (the same list as its trailer).
    pub entries: Vec<PackEntry>,
    /// Format v2: the generation and salt its blobs are sealed with.
    pub sealing: Option<PackSealing>,
}

impl fmt::Debug for SealedPack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedPack")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Reads a little-endian `u32` at `at`; callers have checked the bounds.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn corrupt(what: impl Into<String>) -> FormatError {
    FormatError::Corrupt(format!("pack: {}", what.into()))
}

/// Parses the trailer of a whole pack (for rebuilding an index or verifying)
/// and checks every entry lies inside the blob area.
///
/// Also checks the header, the footer and trailer checksum, and that the
/// blobs tile the blob area exactly, in order, as [`PackBuilder`] writes
/// them. It does not decompress or hash blobs: use [`decode_blob`] for that.
pub fn read_pack_entries(pack: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    let minimum = PACK_HEADER_LEN + TRAILER_COUNT_LEN + PACK_FOOTER_LEN;
    if pack.len() < minimum {
        return Err(corrupt(format!(
            "{} bytes is shorter than the smallest pack ({minimum})",
            pack.len()
        )));
    }
    if pack[..4] != PACK_MAGIC {
        return Err(corrupt("bad header magic"));
    }
    let version = u32_at(pack, 4);
    if version == 0 || version > FORMAT_VERSION {
        return Err(FormatError::UnsupportedFormat {
            format: FORMAT_NAME.to_owned(),
            version,
        });
    }

    let footer_start = pack.len() - PACK_FOOTER_LEN;
    let footer = &pack[footer_start..];
    if footer[PACK_FOOTER_LEN - 4..] != PACK_MAGIC {
        return Err(corrupt("bad footer magic (truncated?)"));
    }
    let trailer_length = u32_at(footer, 0) as usize;
    let Some(trailer_start) = footer_start
        .checked_sub(trailer_length)
        .filter(|start| *start >= PACK_HEADER_LEN)
    else {
        return Err(corrupt(format!(
            "trailer length {trailer_length} does not fit in a {}-byte pack",
            pack.len()
        )));
    };
    let trailer = &pack[trailer_start..footer_start];
    let checksum = &footer[4..4 + TRAILER_CHECKSUM_LEN];
    if blake3::hash(trailer).as_bytes()[..TRAILER_CHECKSUM_LEN] != *checksum {
        return Err(corrupt("trailer checksum mismatch"));
    }

    let entries = parse_trailer(trailer)?;
    check_tiling(&entries, PACK_HEADER_LEN, trailer_start)?;
    Ok(entries)
}

fn parse_trailer(trailer: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    if trailer.len() < TRAILER_COUNT_LEN {
        return Err(corrupt("trailer shorter than its entry count"));
    }
    let count = u32_at(trailer, 0) as usize;
    let records = &trailer[TRAILER_COUNT_LEN..];
    if Some(records.len()) != count.checked_mul(PACK_ENTRY_LEN) {
        return Err(corrupt(format!(
            "trailer has {} bytes of entries for {count} entries",
            records.len()
        )));
    }
    records
        .chunks_exact(PACK_ENTRY_LEN)
        .map(|record| {
            let mut chunk_id = [0u8; 32];
            chunk_id.copy_from_slice(&record[..32]);
            let compression = Compression::from_byte(record[44])
                .ok_or_else(|| corrupt(format!("unknown compression byte {}", record[44])))?;
            let entry = PackEntry {
                chunk_id: ChunkId(chunk_id),
                offset: u32_at(record, 32),
                length: u32_at(record, 36),
                raw_length: u32_at(record, 40),
                compression,
                blob_type: BlobType::Data,
            };
            entry.check_lengths()?;
            Ok(entry)
        })
        .collect()
}

/// Blobs must follow each other from the end of the header to the start of
/// the trailer with no gaps or overlaps, so every byte of a pack is accounted for.
fn check_tiling(
    entries: &[PackEntry],
    blob_start: usize,
    blob_end: usize,
) -> Result<(), FormatError> {
    let mut expected = blob_start as u64;
    for entry in entries {
        if u64::from(entry.offset) != expected {
            return Err(corrupt(format!(
                "chunk {} at offset {} but the previous blob ends at {expected}",
                entry.chunk_id, entry.offset
            )));
        }
        expected += u64::from(entry.length);
    }
    if expected != blob_end as u64 {
        return Err(corrupt(format!(
            "blobs end at {expected} but the trailer starts at {blob_end}"
        )));
    }
    Ok(())
}

/// Corruption unless `actual` bytes of chunk `entry` are the `expected` its
/// entry says; `(verb, noun)` word the count, e.g. "got 3 blob bytes".
fn check_count(
    entry: &PackEntry,
    (verb, noun): (&str, &str),
    actual: usize,
    expected: u32,
) -> Result<(), FormatError> {
    if actual == expected as usize {
        return Ok(());
    }
    Err(FormatError::Corrupt(format!(
        "chunk {}: {verb} {actual} {noun}, entry says {expected}",
        entry.chunk_id
    )))
}

/// Decompresses one blob (the `length` bytes at `offset`) and verifies that
/// its keyed hash equals `entry.chunk_id` and its length equals `raw_length`;
/// corruption is an error, never silently returned.
pub fn decode_blob(
    hasher: &ChunkHasher,
    entry: &PackEntry,
    blob: &[u8],
) -> Result<Vec<u8>, FormatError> {
    entry.check_lengths()?;
    check_count(entry, ("got", "blob bytes"), blob.len(), entry.length)?;
    let raw = match entry.compression {
        Compression::None => blob.to_vec(),
        // The capacity bound makes zstd fail rather than allocate more than
        // the entry promises.
        Compression::Zstd => {
            zstd::bulk::decompress(blob, entry.raw_length as usize).map_err(|err| {
                FormatError::Corrupt(format!("chunk {}: zstd: {err}", entry.chunk_id))
            })?
        }
    };
    check_count(entry, ("decoded", "bytes"), raw.len(), entry.raw_length)?;
    let actual = hasher.chunk_id(&raw);
    if actual != entry.chunk_id {
        return Err(FormatError::HashMismatch {
            expected: entry.chunk_id,
            actual,
        });
    }
    Ok(raw)
}

/// The blob bytes of `entry` within a whole pack, or an error if the entry
/// points outside it.
pub fn blob_slice<'a>(pack: &'a [u8], entry: &PackEntry) -> Result<&'a [u8], FormatError> {
    let start = entry.offset as usize;
    start
        .checked_add(entry.length as usize)
        .and_then(|end| pack.get(start..end))
        .ok_or_else(|| {
            corrupt(format!(
                "chunk {} at {}+{} lies outside a {}-byte pack",
                entry.chunk_id,
                entry.offset,
                entry.length,
                pack.len()
            ))
        })
}

#[cfg(test)]
mod tests;
