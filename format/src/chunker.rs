//! Content-defined chunking: FastCDC (2020 variant, normalization level 1)
//! as implemented by the `fastcdc` crate, with a gear table that is the
//! crate's own (seed 0) in format v1 and derived from the repository's
//! `dedup_key` in format v2 ([`GearTable::from_key`]), so cut points do not
//! reveal content to someone who sees only chunk sizes.
//!
//! Cut points depend only on nearby bytes, so an insertion or deletion moves
//! the boundaries around it and leaves the rest of the file's chunks (and
//! their ids) unchanged; that is what makes deduplication survive edits.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use fastcdc::v2020::{Normalization, MASKS};

use crate::config::ChunkerParams;
use crate::error::FormatError;

/// Normalization pulls chunk sizes towards `avg_size`; level 1 is the
/// crate's default and the level the format is defined with.
const NORMALIZATION: Normalization = Normalization::Level1;

/// The 256 random 64-bit values the gear hash adds per byte, and the same
/// values shifted left by one (FastCDC 2020 rolls two bytes per step).
#[derive(Clone, PartialEq, Eq)]
pub struct GearTable {
    gear: [u64; 256],
    shifted: [u64; 256],
}

impl GearTable {
    /// The `fastcdc` crate's table (seed 0): format v1's, pinned by tests.
    pub fn v1() -> Self {
        let (gear, shifted) = fastcdc::v2020::get_gear_with_seed(0);
        GearTable {
            gear: *gear,
            shifted: *shifted,
        }
    }

    /// Format v2's table: the 2048 bytes of the keyed BLAKE3 XOF of the
    /// empty input under `key`, read as 256 little-endian `u64`s.
    pub fn from_key(key: &[u8; 32]) -> Self {
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(key)
            .finalize_xof()
            .fill(&mut bytes);
        let mut gear = [0u64; 256];
        for (value, word) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            *value = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        }
        GearTable {
            shifted: gear.map(|value| value << 1),
            gear,
        }
    }

    /// The table's values, for test vectors.
    pub fn values(&self) -> &[u64; 256] {
        &self.gear
    }
}

impl fmt::Debug for GearTable {
    // The table is derived from a secret; it never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GearTable").finish_non_exhaustive()
    }
}

/// Splits byte streams into content-defined chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Arc<GearTable>,
}

impl Chunker {
    /// A format v1 chunker with the given sizes. Invalid sizes (see
    /// [`ChunkerParams::validate`]) are reported by [`Chunker::chunks`] and
    /// [`Chunker::stream`], not here.
    pub fn new(params: ChunkerParams) -> Self {
        Self::with_gear(params, Arc::new(GearTable::v1()))
    }

    /// A chunker with the given sizes and gear table (format v2:
    /// [`crate::crypto::RepositoryKeys::chunker`]).
    pub fn with_gear(params: ChunkerParams, gear: Arc<GearTable>) -> Self {
        Chunker { params, gear }
    }

    /// The sizes this chunker cuts with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Splits a reader into content-defined chunks (FastCDC 2020, normalized),
    /// yielding owned chunk bytes. [`Chunker::stream`] does the same without
    /// allocating per chunk.
    ///
    /// A stream shorter than `min_size` yields one chunk; an empty stream
    /// yields nothing. Every chunk but the last is within
    /// `min_size..=max_size`. After the first error (an I/O error, or
    /// invalid sizes) the iterator ends.
    pub fn chunks<R: Read>(&self, reader: R) -> impl Iterator<Item = Result<Vec<u8>, FormatError>> {
        let mut stream = self.stream(reader, ChunkBuffer::default());
        std::iter::from_fn(move || {
            stream
                .next_chunk()
                .map(|chunk| chunk.map(|c| c.bytes.to_vec()))
        })
    }

    /// Splits a reader into the same chunks as [`Chunker::chunks`], lending
    /// each chunk from `buffer` instead of copying it out. The buffer is
    /// meant to be reused from one stream to the next
    /// ([`ChunkStream::into_buffer`]): it grows once to twice `max_size`,
    /// and with it reused a small file costs no allocation at all.
    pub fn stream<R: Read>(&self, reader: R, buffer: ChunkBuffer) -> ChunkStream<R> {
        let (cut, error) = match self.params.validate() {
            Ok(()) => (Some(Cut::new(self.params, Arc::clone(&self.gear))), None),
            Err(err) => (None, Some(err)),
        };
        let mut bytes = buffer.bytes;
        if let Some(cut) = &cut {
            // Room for a whole window of `max_size` bytes after any
            // `start` below the compaction threshold.
            let capacity = 2 * cut.max_size;
            if bytes.len() < capacity {
                bytes.resize(capacity, 0);
            }
        }
        ChunkStream {
            reader: RetryInterrupted(reader),
            cut,
            error,
            bytes,
            start: 0,
            end: 0,
            eof: false,
            yielded: 0,
        }
    }
}

/// Memory a [`ChunkStream`] reads into, kept between streams.
#[derive(Debug, Default)]
pub struct ChunkBuffer {
    bytes: Vec<u8>,
}

/// One chunk lent by [`ChunkStream::next_chunk`].
#[derive(Debug)]
pub struct StreamChunk<'a> {
    /// The chunk's bytes.
    pub bytes: &'a [u8],
    /// When true, this chunk is the whole stream (the first chunk and the
    /// last), so its id equals the stream's content hash. (A stream of
    /// exactly one full `max_size` chunk may still say false.)
    pub whole: bool,
}

/// Content-defined chunks of one reader, lent one at a time from a reused
/// buffer. Made by [`Chunker::stream`].
///
/// The buffer holds a window of unconsumed bytes `start..end`. A cut is
/// made only when the window holds at least `max_size` bytes or the reader
/// is exhausted, so cut points are exactly those of FastCDC over the whole
/// stream, whatever the reader's read sizes. When the window's start passes
/// the middle of the buffer, the (less than `max_size`) unconsumed bytes are
/// moved to the front: each byte is moved at most once.
pub struct ChunkStream<R> {
    reader: RetryInterrupted<R>,
    /// `None` once the stream has failed (or its sizes were invalid).
    cut: Option<Cut>,
    /// Invalid sizes, reported by the first call.
    error: Option<FormatError>,
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    yielded: u64,
}

impl<R: Read> ChunkStream<R> {
    /// The next chunk, `None` at the end of the stream or after an error
    /// (which is returned once: the state after a failed read is unknown,
    /// so the stream stops rather than yield misaligned chunks).
    pub fn next_chunk(&mut self) -> Option<Result<StreamChunk<'_>, FormatError>> {
        if let Some(err) = self.error.take() {
            return Some(Err(err));
        }
        let max_size = self.cut.as_ref()?.max_size;
        if let Err(err) = self.fill(max_size) {
            self.cut = None;
            return Some(Err(FormatError::Io(err)));
        }
        if self.start == self.end {
            return None;
        }
        let window = &self.bytes[self.start..self.end];
        let length = self.cut.as_ref()?.cut(window);
        debug_assert!(length > 0 && length <= window.len());
        let chunk_start = self.start;
        self.start += length;
        self.yielded += 1;
        let whole = self.yielded == 1 && self.eof && self.start == self.end;
        Some(Ok(StreamChunk {
            bytes: &self.bytes[chunk_start..chunk_start + length],
            whole,
        }))
    }

    /// Gives the buffer back for the next stream.
    pub fn into_buffer(self) -> ChunkBuffer {
        ChunkBuffer { bytes: self.bytes }
    }

    /// Reads until the window holds `max_size` bytes or the reader is
    /// exhausted, moving the window to the front of the buffer first when
    /// it would not fit behind its start.
    fn fill(&mut self, max_size: usize) -> io::Result<()> {
        if self.eof || self.end - self.start >= max_size {
            return Ok(());
        }
        if self.start + max_size > self.bytes.len() {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end - self.start < max_size {
            let read = self.reader.read(&mut self.bytes[self.end..])?;
            if read == 0 {
                self.eof = true;
            } else {
                self.end += read;
            }
        }
        Ok(())
    }
}

/// FastCDC 2020's cut-point search with the format's sizes, normalization
/// and gear table.
#[derive(Debug, Clone)]
struct Cut {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Arc<GearTable>,
}

impl Cut {
    /// The masks as `fastcdc::v2020::FastCDC::with_level` derives them.
    fn new(params: ChunkerParams, gear: Arc<GearTable>) -> Self {
        let bits = fastcdc::v2020::logarithm2(params.avg_size);
        let normalization = NORMALIZATION.bits();
        Cut {
            min_size: params.min_size as usize,
            avg_size: params.avg_size as usize,
            max_size: params.max_size as usize,
            mask_s: MASKS[(bits + normalization) as usize],
            mask_l: MASKS[(bits - normalization) as usize],
            gear,
        }
    }

    /// Length of the chunk at the start of `window`, which holds at least
    /// `max_size` bytes unless it is the end of the stream.
    fn cut(&self, window: &[u8]) -> usize {
        let (_, length) = fastcdc::v2020::cut_gear(
            window,
            self.min_size,
            self.avg_size,
            self.max_size,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear.gear,
            &self.gear.shifted,
        );
        length
    }
}

/// Retries reads interrupted by signals.
struct RetryInterrupted<R>(R);

impl<R: Read> Read for RetryInterrupted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::hash::ChunkHasher;
    use crate::test_data::pseudo_random_bytes;

    const MIB: usize = 1024 * 1024;

    fn cut(chunker: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        chunker
            .chunks(data)
            .collect::<Result<Vec<_>, _>>()
            .expect("reading a slice cannot fail")
    }

    fn small_params() -> ChunkerParams {
        ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        }
    }

    #[test]
    fn chunks_concatenate_to_the_input_and_respect_size_limits() {
        let params = ChunkerParams::default();
        let data = pseudo_random_bytes(1, 20 * MIB);
        let chunks = cut(&Chunker::new(params), &data);
        assert!(chunks.len() > 5, "only {} chunks", chunks.len());
        assert_eq!(chunks.concat(), data);
        let (last, rest) = chunks.split_last().expect("non-empty");
        for chunk in rest {
            let len = chunk.len() as u32;
            assert!((params.min_size..=params.max_size).contains(&len), "{len}");
        }
        assert!(!last.is_empty() && last.len() as u32 <= params.max_size);
    }

    #[test]
    fn boundaries_are_deterministic_and_pinned() {
        let chunker = Chunker::new(small_params());
        let data = pseudo_random_bytes(2, 512 * 1024);
        let first: Vec<usize> = cut(&chunker, &data).iter().map(Vec::len).collect();
        let second: Vec<usize> = cut(&chunker, &data).iter().map(Vec::len).collect();
        assert_eq!(first, second);
        // Pinned so that an upgrade of the chunking library that moves
        // boundaries (and so breaks deduplication against existing
        // repositories) fails here rather than in the field.
        assert_eq!(&first[..8], PINNED_SMALL_BOUNDARIES);
    }

    const PINNED_SMALL_BOUNDARIES: &[usize] =
        &[43549, 16544, 39461, 18474, 17124, 5989, 20240, 16452];

    #[test]
    fn reading_in_small_pieces_gives_the_same_chunks() {
        let chunker = Chunker::new(small_params());
        let data = pseudo_random_bytes(3, 300 * 1024);
        let whole = cut(&chunker, &data);
        let trickled = chunker
            .chunks(Trickle {
                data: &data,
                limit: 1000,
            })
            .collect::<Result<Vec<_>, _>>()
            .expect("no errors");
        assert_eq!(whole, trickled);
    }

    #[test]
    fn insertion_in_the_middle_keeps_most_chunks() {
        let chunker = Chunker::new(ChunkerParams::default());
        let hasher = ChunkHasher::new([9u8; 32]);
        let original = pseudo_random_bytes(4, 20 * MIB);
        let mut edited = original.clone();
        let middle = edited.len() / 2;
        edited.splice(middle..middle, *b"inserted!");

        let ids = |data: &[u8]| -> Vec<_> {
            cut(&chunker, data)
                .iter()
                .map(|chunk| hasher.chunk_id(chunk))
                .collect()
        };
        let before = ids(&original);
        let after = ids(&edited);
        let before_set: HashSet<_> = before.iter().collect();
        let shared = after.iter().filter(|id| before_set.contains(id)).count();
        println!(
            "{} of {} chunks shared after a 9-byte insertion",
            shared,
            after.len()
        );
        assert!(
            shared * 100 >= after.len() * 80,
            "only {shared} of {} shared",
            after.len()
        );
        assert!(shared < after.len(), "the edited chunk must change");
    }

    /// Reads at most `limit` bytes per call, like a pipe or a slow disk.
    struct Trickle<'a> {
        data: &'a [u8],
        limit: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.data.len()).min(self.limit);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn stream_cuts_exactly_where_fastcdc_does() {
        let params = small_params();
        let chunker = Chunker::new(params);
        let mut buffer = ChunkBuffer::default();
        // Lengths around the window and buffer sizes, and many chunks.
        for (seed, len) in [
            (10, 0),
            (11, 100),
            (12, 65536),
            (13, 65537),
            (14, 131_072),
            (15, 2_000_000),
        ] {
            let data = pseudo_random_bytes(seed, len);
            let expected: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level(
                &data[..],
                params.min_size,
                params.avg_size,
                params.max_size,
                NORMALIZATION,
            )
            .map(|c| c.expect("reading a slice cannot fail").data)
            .collect();
            for limit in [1000, 65536, usize::MAX] {
                let mut stream = chunker.stream(Trickle { data: &data, limit }, buffer);
                let mut got = Vec::new();
                let mut wholes = 0;
                while let Some(chunk) = stream.next_chunk() {
                    let chunk = chunk.expect("no errors");
                    wholes += usize::from(chunk.whole);
                    got.push(chunk.bytes.to_vec());
                }
                buffer = stream.into_buffer();
                assert_eq!(got, expected, "length {len}, reads of at most {limit}");
                assert_eq!(wholes, usize::from(got.len() == 1 && len < 65536));
            }
        }
    }

    #[test]
    fn empty_input_yields_no_chunks() {
        assert!(cut(&Chunker::new(ChunkerParams::default()), b"").is_empty());
    }

    #[test]
    fn input_shorter_than_min_size_is_one_chunk() {
        let data = pseudo_random_bytes(5, 1000);
        let chunks = cut(&Chunker::new(ChunkerParams::default()), &data);
        assert_eq!(chunks, vec![data]);
    }

    #[test]
    fn invalid_sizes_are_an_error_not_a_panic() {
        let chunker = Chunker::new(ChunkerParams {
            min_size: 10,
            avg_size: 5,
            max_size: 1,
        });
        let results: Vec<_> = chunker.chunks(&b"data"[..]).collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(results[0], Err(FormatError::InvalidInput(_))));
    }

    #[test]
    fn read_errors_are_reported_once() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let results: Vec<_> = Chunker::new(small_params()).chunks(Broken).collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(results[0], Err(FormatError::Io(_))));
    }
}
