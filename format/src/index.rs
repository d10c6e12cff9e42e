//! Index files (which chunk is where) and the in-memory [`ChunkIndex`].
//!
//! An index file lists the entries of some packs, so a writer can learn
//! what the repository already holds without downloading pack trailers. It
//! is zstd-compressed JSON lines (see [`IndexFile::encode`]):
//!
//! ```text
//! {"index":{"format":"coffer","version":1}}
//! {"pack":{"pack_id":"<hex>","pack_length":N,"entries":[{"chunk_id":"<hex>","offset":8,...}]}}
//! {"end":{"packs":P,"chunks":C}}
//! ```

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::mem::size_of;

use serde::{Deserialize, Serialize};

use crate::error::{check_any_format, check_format, FormatError};
use crate::id::{ChunkId, IndexId, PackId};
use crate::jsonl::{DecodeLimits, LineReader, LineWriter};
use std::io::Write;

use crate::crypto::{ObjectKind, RepositoryKeys, SealedReader, SealedWriter};
use crate::pack::{
    BlobType, Compression, PackEntry, PackSealing, SealedPack, PACK_HEADER_LEN, PACK_V2_HEADER_LEN,
};
use crate::version::{FORMAT_NAME, FORMAT_VERSION, FORMAT_VERSION_2};

/// zstd level for index files: they are small and written once per run.
const INDEX_COMPRESSION_LEVEL: i32 = 3;

/// The entries of one pack, as recorded in an index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's id (plain BLAKE3 of its bytes).
    pub pack_id: PackId,
    /// Size of the whole pack object in bytes.
    pub pack_length: u64,
    /// The pack's entries, in blob order.
    pub entries: Vec<PackEntry>,
    /// Format v2: the generation and salt the pack is sealed with; absent
    /// in format v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<PackSealing>,
}

impl IndexPack {
    /// The index record for a pack just sealed.
    pub fn from_sealed(pack: &SealedPack) -> Self {
        IndexPack {
            pack_id: pack.id,
            pack_length: pack.bytes.len() as u64,
            entries: pack.entries.clone(),
            sealing: pack.sealing,
        }
    }

    /// Checks every entry is plausible and lies inside the pack, and that
    /// the pack is sealed exactly when the file is of format v2.
    fn validate(&self, version: u32) -> Result<(), FormatError> {
        if self.sealing.is_some() != (version == FORMAT_VERSION_2) {
            return Err(FormatError::Corrupt(format!(
                "index: pack {} is {} in a version {version} index file",
                self.pack_id,
                if self.sealing.is_some() {
                    "sealed"
                } else {
                    "not sealed"
                }
            )));
        }
        let header_len = if self.sealing.is_some() {
            PACK_V2_HEADER_LEN
        } else {
            PACK_HEADER_LEN
        };
        for entry in &self.entries {
            if self.sealing.is_none() {
                entry.check_lengths()?;
                if entry.blob_type != BlobType::Data {
                    return Err(FormatError::Corrupt(
                        "index: a version 1 pack holds a tree blob".to_owned(),
                    ));
                }
            }
            let end = u64::from(entry.offset) + u64::from(entry.length);
            if (entry.offset as usize) < header_len || end > self.pack_length {
                return Err(FormatError::Corrupt(format!(
                    "index: chunk {} at {}+{} lies outside pack {} of {} bytes",
                    entry.chunk_id, entry.offset, entry.length, self.pack_id, self.pack_length
                )));
            }
        }
        Ok(())
    }
}

/// One index file: the entries of the packs a writer uploaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// The packs this file describes.
    pub packs: Vec<IndexPack>,
}

/// First line of an index file.
#[derive(Serialize, Deserialize)]
struct IndexHeader {
    format: String,
    version: u32,
}

/// Last line of an index file; the counts catch a file cut at a line break.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct IndexEnd {
    packs: u64,
    chunks: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum IndexLineOut<'a> {
    Index(IndexHeader),
    Pack(&'a IndexPack),
    End(IndexEnd),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum IndexLineIn {
    Pack(IndexPack),
    End(IndexEnd),
}

#[derive(Deserialize)]
struct IndexHeaderLine {
    index: IndexHeader,
}

impl IndexFile {
    /// Encodes the file (format v1) and returns it with its id (plain
    /// BLAKE3 of the bytes), ready to upload under [`crate::layout::index_key`].
    pub fn encode(&self) -> Result<(IndexId, Vec<u8>), FormatError> {
        let bytes = self.write_lines(Vec::new(), FORMAT_VERSION)?;
        Ok((IndexId::compute(&bytes), bytes))
    }

    /// Encodes the file as format v2: the same lines (version 2, each pack
    /// with its sealing) sealed under the current generation of `keys`.
    /// Every pack must be a v2 pack.
    pub fn encode_v2<R: rand::RngCore + rand::CryptoRng>(
        &self,
        keys: &RepositoryKeys,
        rng: &mut R,
    ) -> Result<(IndexId, Vec<u8>), FormatError> {
        if let Some(pack) = self.packs.iter().find(|pack| pack.sealing.is_none()) {
            return Err(FormatError::InvalidInput(format!(
                "pack {} is not a v2 pack",
                pack.pack_id
            )));
        }
        let sealed = SealedWriter::new(Vec::new(), keys, ObjectKind::Index, "", rng)?;
        let bytes = self.write_lines(sealed, FORMAT_VERSION_2)?.finish()?;
        Ok((IndexId::compute(&bytes), bytes))
    }

    fn write_lines<W: Write>(&self, writer: W, version: u32) -> Result<W, FormatError> {
        let mut lines = LineWriter::new(writer, INDEX_COMPRESSION_LEVEL)?;
        lines.write_line(&IndexLineOut::Index(IndexHeader {
            format: FORMAT_NAME.to_owned(),
            version,
        }))?;
        let mut chunks = 0u64;
        for pack in &self.packs {
            lines.write_line(&IndexLineOut::Pack(pack))?;
            chunks += pack.entries.len() as u64;
        }
        lines.write_line(&IndexLineOut::End(IndexEnd {
            packs: self.packs.len() as u64,
            chunks,
        }))?;
        lines.finish()
    }

    /// Decodes an index file, rejecting other formats and newer versions
    /// with [`FormatError::UnsupportedFormat`], and truncated or implausible
    /// files as corrupt. It does not check the bytes against their key:
    /// compare [`IndexId::compute`] with the key for that.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        Self::read_lines(bytes, FORMAT_VERSION, bytes.len())
    }

    /// Decodes a v2 index file stored under `object_key` (named in errors;
    /// compare [`IndexId::compute`] of the bytes with the key as well).
    /// Damage anywhere, or a file sealed under another key, is corrupt.
    pub fn decode_v2(
        keys: &RepositoryKeys,
        object_key: &str,
        bytes: &[u8],
    ) -> Result<Self, FormatError> {
        let sealed = SealedReader::new(bytes, keys, ObjectKind::Index, object_key)?;
        Self::read_lines(sealed, FORMAT_VERSION_2, bytes.len())
    }

    fn read_lines<R: std::io::Read>(
        reader: R,
        version: u32,
        stored_len: usize,
    ) -> Result<Self, FormatError> {
        let mut lines = LineReader::new(reader, index_limits(stored_len))?;
        let first = lines
            .next_line()?
            .ok_or_else(|| FormatError::Corrupt("index: empty".to_owned()))?;
        let header: IndexHeaderLine = serde_json::from_slice(first)?;
        if header.index.version == FORMAT_VERSION_2 && version == FORMAT_VERSION_2 {
            check_any_format(&header.index.format, header.index.version)?;
        } else {
            check_format(&header.index.format, header.index.version)?;
            if version != FORMAT_VERSION {
                return Err(FormatError::Corrupt(
                    "index: a sealed index file holds version 1 lines".to_owned(),
                ));
            }
        }

        let mut packs = Vec::new();
        let mut chunks = 0u64;
        let end = loop {
            let line = lines
                .next_line()?
                .ok_or_else(|| FormatError::Corrupt("index: no end line (truncated)".to_owned()))?;
            match serde_json::from_slice(line)? {
                IndexLineIn::Pack(pack) => {
                    pack.validate(version)?;
                    chunks += pack.entries.len() as u64;
                    packs.push(pack);
                }
                IndexLineIn::End(end) => break end,
            }
        };
        let counted = IndexEnd {
            packs: packs.len() as u64,
            chunks,
        };
        if end != counted {
            return Err(FormatError::Corrupt(format!(
                "index: end line says {end:?}, file holds {counted:?}"
            )));
        }
        if lines.next_line()?.is_some() {
            return Err(FormatError::Corrupt(
                "index: data after the end line".to_owned(),
            ));
        }
        Ok(IndexFile { packs })
    }
}

/// Index files are decoded whole into memory, so what one may decode to is
/// bounded by its stored size: chunk ids are random hex, which zstd shrinks
/// to about half, so a real index file never comes near this ratio.
const MAX_INDEX_EXPANSION: u64 = 32;
/// Decoded bytes any index file may have, however small it is stored.
const MIN_INDEX_DECODE_LIMIT: u64 = 16 << 20;

fn index_limits(stored_len: usize) -> DecodeLimits {
    DecodeLimits {
        max_line: crate::jsonl::MAX_LINE_BYTES,
        max_total: (stored_len as u64)
            .saturating_mul(MAX_INDEX_EXPANSION)
            .max(MIN_INDEX_DECODE_LIMIT),
    }
}

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack holding the chunk.
    pub pack_id: PackId,
    /// Offset of the blob from the start of the pack.
    pub offset: u32,
    /// Stored length of the blob.
    pub length: u32,
    /// Length after decompression.
    pub raw_length: u32,
    /// How the blob is stored.
    pub compression: Compression,
    /// What the blob holds.
    pub blob_type: BlobType,
    /// Format v2: what [`crate::pack::open_blob`] needs besides the entry.
    pub sealing: Option<PackSealing>,
}

impl ChunkLocation {
    /// The pack entry this location describes, for [`crate::decode_blob`]
    /// or [`crate::pack::open_blob`].
    pub fn entry(&self, chunk_id: ChunkId) -> PackEntry {
        PackEntry {
            chunk_id,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            compression: self.compression,
            blob_type: self.blob_type,
        }
    }
}

/// A chunk's location with the pack interned as a number: 16 bytes instead
/// of 45 (and the pack's generation and salt kept once per pack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedLocation {
    /// Index into `ChunkIndex::packs`, with [`ZSTD_FLAG`] set for zstd
    /// blobs and [`TREE_FLAG`] for tree blobs.
    pack: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

/// High bit of `PackedLocation::pack`; pack numbers stay below both flags.
const ZSTD_FLAG: u32 = 1 << 31;
/// Second-highest bit of `PackedLocation::pack`.
const TREE_FLAG: u32 = 1 << 30;
const PACK_NUMBER_MASK: u32 = !(ZSTD_FLAG | TREE_FLAG);

/// Marks an empty slot in the open-addressing table.
const EMPTY_SLOT: u32 = u32::MAX;

/// In-memory chunk → location map built from many index files.
///
/// Sized for about a million chunks in a small process: each chunk costs its
/// 32-byte id, a 16-byte location (pack ids are interned as `u32` numbers)
/// and two to four 4-byte hash slots: about 65 MiB for a million chunks,
/// where a `HashMap<ChunkId, ChunkLocation>` would take about 170 MiB
/// (80-byte buckets, up to twice as many as items). Entries live in
/// one vector that grows by a quarter at a time; an open-addressing table
/// of `u32` entry numbers, at most half full, finds them. Chunks are never
/// removed (a prune rebuilds the index).
///
/// When a chunk appears in several packs the first location added wins.
#[derive(Clone)]
pub struct ChunkIndex {
    /// Chunk ids and their locations, in insertion order.
    entries: Vec<(ChunkId, PackedLocation)>,
    /// `slots[hash & mask]`, probed linearly: the position in `entries`, or
    /// [`EMPTY_SLOT`]. Its length is a power of two at least twice `entries.len()`.
    slots: Vec<u32>,
    /// Pack number → (id, length in bytes).
    packs: Vec<(PackId, u64)>,
    /// Pack number → its sealing (format v2): 36 bytes per pack, not per chunk.
    sealings: Vec<Option<PackSealing>>,
    pack_numbers: HashMap<PackId, u32>,
    /// Keyed hashing, so crafted ids in a damaged index cannot pile up in one
    /// probe run.
    hash_state: RandomState,
}

/// Capacity the entry vector grows by at least, so small indexes do not
/// reallocate for every pack.
const MIN_ENTRY_GROWTH: usize = 1024;

impl ChunkIndex {
    /// An empty index.
    pub fn new() -> Self {
        ChunkIndex {
            entries: Vec::new(),
            slots: Vec::new(),
            packs: Vec::new(),
            sealings: Vec::new(),
            pack_numbers: HashMap::new(),
            hash_state: RandomState::new(),
        }
    }

    /// Adds every pack of an index file.
    pub fn add_file(&mut self, file: &IndexFile) {
        let chunks = file.packs.iter().map(|pack| pack.entries.len()).sum();
        self.reserve(chunks);
        for pack in &file.packs {
            self.add_pack(pack);
        }
    }

    /// Adds the chunks of one pack. Chunks already known keep their first
    /// location.
    pub fn add_pack(&mut self, pack: &IndexPack) {
        self.reserve(pack.entries.len());
        let pack_number = self.intern_pack(pack.pack_id, pack.pack_length, pack.sealing);
        for entry in &pack.entries {
            let zstd = match entry.compression {
                Compression::None => 0,
                Compression::Zstd => ZSTD_FLAG,
            };
            let tree = match entry.blob_type {
                BlobType::Data => 0,
                BlobType::Tree => TREE_FLAG,
            };
            let flag = zstd | tree;
            self.insert(
                entry.chunk_id,
                PackedLocation {
                    pack: pack_number | flag,
                    offset: entry.offset,
                    length: entry.length,
                    raw_length: entry.raw_length,
                },
            );
        }
    }

    /// True when the chunk is stored in some known pack.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.find(id).is_some()
    }

    /// Where the chunk is stored, if anywhere.
    pub fn get(&self, id: &ChunkId) -> Option<ChunkLocation> {
        let position = self.find(id)?;
        let (_, location) = self.entries[position];
        let number = (location.pack & PACK_NUMBER_MASK) as usize;
        let (pack_id, _) = self.packs[number];
        let compression = if location.pack & ZSTD_FLAG != 0 {
            Compression::Zstd
        } else {
            Compression::None
        };
        let blob_type = if location.pack & TREE_FLAG != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        };
        Some(ChunkLocation {
            pack_id,
            offset: location.offset,
            length: location.length,
            raw_length: location.raw_length,
            compression,
            blob_type,
            sealing: self.sealings[number],
        })
    }

    /// Number of distinct chunks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every distinct pack added, with its length in bytes, in the order
    /// first added.
    pub fn packs(&self) -> impl Iterator<Item = (PackId, u64)> + '_ {
        self.packs.iter().copied()
    }

    /// Approximate heap bytes held, computed from capacities.
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<(ChunkId, PackedLocation)>()
            + self.slots.capacity() * size_of::<u32>()
            + self.packs.capacity() * size_of::<(PackId, u64)>()
            + self.sealings.capacity() * size_of::<Option<PackSealing>>()
            // hashbrown: one control byte per bucket, about 8/7 buckets per item.
            + self.pack_numbers.capacity() * (size_of::<(PackId, u32)>() + 1) * 8 / 7
    }

    /// Makes room for `additional` more chunks, growing the entry vector by
    /// at least a quarter so repeated small additions stay amortized O(1)
    /// without the up-to-2x slack of doubling.
    fn reserve(&mut self, additional: usize) {
        let free = self.entries.capacity() - self.entries.len();
        if additional > free {
            let growth = additional.max(self.entries.len() / 4).max(MIN_ENTRY_GROWTH);
            self.entries.reserve_exact(growth);
        }
        let needed_slots = (self.entries.len() + additional)
            .saturating_mul(2)
            .next_power_of_two();
        if needed_slots > self.slots.len() {
            self.rebuild_slots(needed_slots);
        }
    }

    fn intern_pack(
        &mut self,
        pack_id: PackId,
        pack_length: u64,
        sealing: Option<PackSealing>,
    ) -> u32 {
        if let Some(number) = self.pack_numbers.get(&pack_id) {
            return *number;
        }
        let number = u32::try_from(self.packs.len())
            .ok()
            .filter(|number| number & !PACK_NUMBER_MASK == 0)
            .expect("fewer than 2^30 packs: that would be 16 PiB of 16 MiB packs");
        self.packs.push((pack_id, pack_length));
        self.sealings.push(sealing);
        self.pack_numbers.insert(pack_id, number);
        number
    }

    fn home_slot(&self, id: &ChunkId) -> usize {
        // Truncating the 64-bit hash is intended: the mask keeps low bits.
        self.hash_state.hash_one(id) as usize & (self.slots.len() - 1)
    }

    fn find(&self, id: &ChunkId) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut slot = self.home_slot(id);
        // The table is never more than half full, so an empty slot ends the probe.
        loop {
            let position = self.slots[slot];
            if position == EMPTY_SLOT {
                return None;
            }
            if self.entries[position as usize].0 == *id {
                return Some(position as usize);
            }
            slot = (slot + 1) & mask;
        }
    }

    fn insert(&mut self, id: ChunkId, location: PackedLocation) {
        debug_assert!(self.slots.len() >= (self.entries.len() + 1) * 2);
        let mask = self.slots.len() - 1;
        let mut slot = self.home_slot(&id);
        loop {
            let position = self.slots[slot];
            if position == EMPTY_SLOT {
                break;
            }
            if self.entries[position as usize].0 == id {
                return;
            }
            slot = (slot + 1) & mask;
        }
        let position = u32::try_from(self.entries.len())
            .ok()
            .filter(|position| *position != EMPTY_SLOT)
            .expect("fewer than 2^32 - 1 chunks: that would be 4 PiB of 1 MiB chunks");
        self.slots[slot] = position;
        self.entries.push((id, location));
    }

    /// Replaces the slot table with an empty one of `len` slots and
    /// re-inserts every entry.
    fn rebuild_slots(&mut self, len: usize) {
        debug_assert!(len.is_power_of_two());
        self.slots = vec![EMPTY_SLOT; len];
        let mask = len - 1;
        for (position, (id, _)) in self.entries.iter().enumerate() {
            let mut slot = self.hash_state.hash_one(id) as usize & mask;
            while self.slots[slot] != EMPTY_SLOT {
                slot = (slot + 1) & mask;
            }
            // Entry positions fit in u32: `insert` refuses any that do not.
            self.slots[slot] = position as u32;
        }
    }
}

impl Default for ChunkIndex {
    fn default() -> Self {
        ChunkIndex::new()
    }
}

impl fmt::Debug for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkIndex")
            .field("chunks", &self.entries.len())
            .field("packs", &self.packs.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::ChunkHasher;
    use crate::pack::PackBuilder;
    use crate::test_data::pseudo_random_bytes;

    fn sealed_pack(seed: u64, chunks: usize) -> SealedPack {
        let hasher = ChunkHasher::new([5u8; 32]);
        let mut builder = PackBuilder::new(3);
        for i in 0..chunks {
            let mut chunk = pseudo_random_bytes(seed * 1000 + i as u64, 3000);
            // Half compressible, half not.
            if i % 2 == 0 {
                chunk.extend_from_slice(&[b'z'; 5000]);
            }
            builder
                .add(hasher.chunk_id(&chunk), &chunk)
                .expect("chunk fits");
        }
        builder.finish().expect("pack fits")
    }

    fn synthetic_id(n: u64) -> ChunkId {
        ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn index_file_round_trips() {
        let file = IndexFile {
            packs: vec![
                IndexPack::from_sealed(&sealed_pack(1, 5)),
                IndexPack::from_sealed(&sealed_pack(2, 3)),
            ],
        };
        let (id, bytes) = file.encode().expect("encodes");
        assert_eq!(id, IndexId::compute(&bytes));
        assert_eq!(IndexFile::decode(&bytes).expect("decodes"), file);

        let text = zstd::decode_all(bytes.as_slice()).expect("plain zstd");
        let text = String::from_utf8(text).expect("utf-8");
        let first = text.lines().next().expect("a line");
        assert_eq!(first, r#"{"index":{"format":"coffer","version":1}}"#);
        assert!(text
            .lines()
            .last()
            .expect("a line")
            .starts_with(r#"{"end":"#));
    }

    #[test]
    fn empty_index_file_round_trips() {
        let (_, bytes) = IndexFile::default().encode().expect("encodes");
        assert!(IndexFile::decode(&bytes).expect("decodes").packs.is_empty());
    }

    #[test]
    fn truncated_or_damaged_index_file_is_rejected() {
        let file = IndexFile {
            packs: vec![IndexPack::from_sealed(&sealed_pack(3, 4))],
        };
        let (_, bytes) = file.encode().expect("encodes");
        for cut in [1, 4, bytes.len() / 2] {
            let err = IndexFile::decode(&bytes[..bytes.len() - cut]).expect_err("truncated");
            assert!(err.is_corruption(), "cut {cut}: {err}");
        }
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x10;
        assert!(IndexFile::decode(&damaged).is_err());
    }

    #[test]
    fn index_file_with_newer_version_is_unsupported() {
        let mut lines = LineWriter::new(Vec::new(), 3).expect("encoder");
        lines
            .write_line(&serde_json::json!({"index": {"format": "coffer", "version": 2}}))
            .expect("writes");
        let bytes = lines.finish().expect("finishes");
        assert!(matches!(
            IndexFile::decode(&bytes),
            Err(FormatError::UnsupportedFormat { version: 2, .. })
        ));
    }

    #[test]
    fn entry_outside_its_pack_is_rejected() {
        let mut pack = IndexPack::from_sealed(&sealed_pack(4, 2));
        pack.pack_length = 10;
        let (_, bytes) = IndexFile { packs: vec![pack] }.encode().expect("encodes");
        let err = IndexFile::decode(&bytes).expect_err("implausible");
        assert!(matches!(err, FormatError::Corrupt(_)), "{err}");
    }

    #[test]
    fn chunk_index_finds_every_chunk_of_every_pack() {
        let first = sealed_pack(5, 6);
        let second = sealed_pack(6, 4);
        let mut index = ChunkIndex::new();
        index.add_file(&IndexFile {
            packs: vec![IndexPack::from_sealed(&first)],
        });
        index.add_pack(&IndexPack::from_sealed(&second));
        assert_eq!(index.len(), 10);
        for (pack, entry) in first
            .entries
            .iter()
            .map(|entry| (&first, entry))
            .chain(second.entries.iter().map(|entry| (&second, entry)))
        {
            let location = index.get(&entry.chunk_id).expect("known chunk");
            assert_eq!(location.pack_id, pack.id);
            assert_eq!(location.entry(entry.chunk_id), *entry);
            assert!(index.contains(&entry.chunk_id));
        }
        assert!(!index.contains(&synthetic_id(1)));
        assert_eq!(index.get(&synthetic_id(2)), None);
        let packs: Vec<_> = index.packs().collect();
        assert_eq!(
            packs,
            vec![
                (first.id, first.bytes.len() as u64),
                (second.id, second.bytes.len() as u64)
            ]
        );
    }

    #[test]
    fn chunk_stored_twice_keeps_its_first_location() {
        let pack = IndexPack::from_sealed(&sealed_pack(7, 2));
        let mut copy = pack.clone();
        copy.pack_id = PackId([9u8; 32]);
        let mut index = ChunkIndex::new();
        index.add_pack(&pack);
        index.add_pack(&copy);
        index.add_pack(&pack);
        assert_eq!(index.len(), 2);
        assert_eq!(index.packs().count(), 2);
        let location = index.get(&pack.entries[0].chunk_id).expect("known");
        assert_eq!(location.pack_id, pack.pack_id);
    }

    #[test]
    fn empty_chunk_index_finds_nothing() {
        let index = ChunkIndex::default();
        assert!(index.is_empty());
        assert!(!index.contains(&synthetic_id(0)));
        assert_eq!(index.packs().count(), 0);
    }

    #[test]
    fn million_chunk_index_stays_compact() {
        const CHUNKS: u64 = 1_000_000;
        const PER_PACK: u64 = 16;
        let mut index = ChunkIndex::new();
        let mut pack = IndexPack {
            pack_id: PackId([0; 32]),
            pack_length: 16 << 20,
            entries: Vec::with_capacity(PER_PACK as usize),
            sealing: None,
        };
        for n in 0..CHUNKS {
            let slot = (n % PER_PACK) as u32;
            pack.entries.push(PackEntry {
                chunk_id: synthetic_id(n),
                offset: PACK_HEADER_LEN as u32 + slot * (1 << 20),
                length: 1 << 20,
                raw_length: 1 << 20,
                compression: if n % 3 == 0 {
                    Compression::None
                } else {
                    Compression::Zstd
                },
                blob_type: BlobType::Data,
            });
            if pack.entries.len() as u64 == PER_PACK {
                pack.pack_id = PackId(*blake3::hash(&n.to_be_bytes()).as_bytes());
                index.add_pack(&pack);
                pack.entries.clear();
            }
        }
        assert_eq!(index.len() as u64, CHUNKS);
        assert_eq!(index.packs().count() as u64, CHUNKS / PER_PACK);
        for n in [0, 1, 2, 499_999, 999_999] {
            let location = index.get(&synthetic_id(n)).expect("known");
            let expected = if n % 3 == 0 {
                Compression::None
            } else {
                Compression::Zstd
            };
            assert_eq!(location.compression, expected);
            assert_eq!(location.offset, 8 + (n % PER_PACK) as u32 * (1 << 20));
        }
        assert!(!index.contains(&synthetic_id(CHUNKS)));

        let bytes = index.memory_bytes();
        println!(
            "ChunkIndex with {CHUNKS} chunks in {} packs: ~{:.1} MiB ({} bytes per chunk)",
            index.packs().count(),
            bytes as f64 / (1024.0 * 1024.0),
            bytes as u64 / CHUNKS
        );
        assert!(bytes < 100 << 20, "{bytes} bytes");
    }
}
