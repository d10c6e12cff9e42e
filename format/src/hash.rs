//! Keyed hashing of chunk and file contents.
//!
//! Ids are keyed BLAKE3 under the repository's `chunk_key` rather than plain
//! hashes, so an id seen outside the repository (a log line, the control
//! plane's database) cannot be used to confirm that someone holds a given
//! file, and ids from two repositories never line up.

use std::fmt;

use crate::id::{to_hex, ChunkId};

/// Computes chunk ids and file content hashes under one repository's key.
#[derive(Clone)]
pub struct ChunkHasher {
    key: [u8; 32],
}

impl ChunkHasher {
    /// A hasher for the repository whose config holds `key`.
    pub fn new(key: [u8; 32]) -> Self {
        ChunkHasher { key }
    }

    /// The id of a chunk: `blake3::keyed_hash(chunk_key, data)` over the
    /// uncompressed bytes, so the id does not depend on compression.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.key, data).as_bytes())
    }

    /// Starts a keyed hash over a whole file's content, fed piece by piece
    /// as the file is read (it may be far larger than memory).
    pub fn content_hasher(&self) -> ContentHasher {
        ContentHasher {
            inner: blake3::Hasher::new_keyed(&self.key),
        }
    }
}

impl fmt::Debug for ChunkHasher {
    // The key never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkHasher")
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Incremental keyed hash over a file's whole content.
///
/// Same key and function as [`ChunkHasher::chunk_id`], so the content hash
/// of a file that is a single chunk equals that chunk's id.
#[derive(Clone)]
pub struct ContentHasher {
    inner: blake3::Hasher,
}

impl ContentHasher {
    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The hash of everything fed so far, as 64 lowercase hex digits.
    pub fn finalize(self) -> String {
        to_hex(self.inner.finalize().as_bytes())
    }
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentHasher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_is_keyed_blake3_and_depends_on_the_key() {
        let hasher = ChunkHasher::new([7u8; 32]);
        let id = hasher.chunk_id(b"hello");
        assert_eq!(id.0, *blake3::keyed_hash(&[7u8; 32], b"hello").as_bytes());
        assert_ne!(id, ChunkHasher::new([8u8; 32]).chunk_id(b"hello"));
        assert_ne!(id.0, *blake3::hash(b"hello").as_bytes());
    }

    #[test]
    fn content_hash_fed_in_pieces_equals_hash_of_the_whole() {
        let hasher = ChunkHasher::new([1u8; 32]);
        let mut content = hasher.content_hasher();
        content.update(b"hello ");
        content.update(b"world");
        assert_eq!(content.finalize(), hasher.chunk_id(b"hello world").to_hex());
        assert!(!format!("{hasher:?}").contains("1, 1"));
    }
}
