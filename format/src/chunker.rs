//! Content-defined chunking: FastCDC (2020 variant, normalization level 1,
//! gear seed 0) as implemented by the `fastcdc` crate.
//!
//! Cut points depend only on nearby bytes, so an insertion or deletion moves
//! the boundaries around it and leaves the rest of the file's chunks (and
//! their ids) unchanged; that is what makes deduplication survive edits.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::config::ChunkerParams;
use crate::FormatError;

/// Normalization pulls chunk sizes towards `avg_size`; level 1 is the
/// crate's default and the level the format is defined with.
const NORMALIZATION: Normalization = Normalization::Level1;

/// Splits byte streams into content-defined chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunker {
    params: ChunkerParams,
}

impl Chunker {
    /// A chunker with the given sizes. Invalid sizes (see
    /// [`ChunkerParams::validate`]) are reported by [`Chunker::chunks`], not here.
    pub fn new(params: ChunkerParams) -> Self {
        Chunker { params }
    }

    /// The sizes this chunker cuts with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Splits a reader into content-defined chunks (FastCDC 2020, normalized),
    /// yielding owned chunk bytes.
    ///
    /// A stream shorter than `min_size` yields one chunk; an empty stream
    /// yields nothing. Every chunk but the last is within
    /// `min_size..=max_size`. At most `max_size` bytes are buffered. After
    /// the first error (an I/O error, or invalid sizes) the iterator ends.
    pub fn chunks<R: Read>(&self, reader: R) -> impl Iterator<Item = Result<Vec<u8>, FormatError>> {
        let state = match self.params.validate() {
            Ok(()) => ChunksState::Cutting(StreamCDC::with_level(
                RetryInterrupted(reader),
                self.params.min_size,
                self.params.avg_size,
                self.params.max_size,
                NORMALIZATION,
            )),
            Err(err) => ChunksState::Failed(Some(err)),
        };
        Chunks { state }
    }
}

/// Iterator returned by [`Chunker::chunks`].
struct Chunks<R: Read> {
    state: ChunksState<R>,
}

enum ChunksState<R: Read> {
    Cutting(StreamCDC<RetryInterrupted<R>>),
    /// Holds the error still to be reported, then `None`.
    Failed(Option<FormatError>),
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = Result<Vec<u8>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let cdc = match &mut self.state {
            ChunksState::Failed(pending) => return pending.take().map(Err),
            ChunksState::Cutting(cdc) => cdc,
        };
        match cdc.next()? {
            Ok(chunk) => Some(Ok(chunk.data)),
            Err(err) => {
                // StreamCDC's state after a failed read is unspecified, so
                // stop rather than risk yielding misaligned chunks.
                self.state = ChunksState::Failed(None);
                Some(Err(FormatError::Io(io::Error::from(err))))
            }
        }
    }
}

/// Retries reads interrupted by signals, which `StreamCDC` would otherwise
/// report as errors.
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
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let chunker = Chunker::new(small_params());
        let data = pseudo_random_bytes(3, 300 * 1024);
        let whole = cut(&chunker, &data);
        let trickled = chunker
            .chunks(Trickle(&data))
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
