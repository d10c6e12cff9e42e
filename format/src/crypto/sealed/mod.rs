//! Sealed objects: index files, manifests and condemned sets in format v2.
//!
//! ```text
//! header    44 bytes  "CFSO" | version u8 (= 2) | encryption u8 | kind u8 |
//!                     log2(segment size) u8 | generation u32 LE | salt [32]
//! segments  ...       the plaintext cut into segments of `segment size`
//!                     bytes, the last one shorter (possibly empty), each
//!                     sealed and followed by its 16-byte tag
//! ```
//!
//! Segment `i` is sealed under the object's key with nonce
//! `i as 88-bit big-endian ‖ last` (`last` = 1 on the final segment, else
//! 0) and associated data `header ‖ object key` (the object key only for
//! kinds named by a run id): the STREAM construction, so a stream cut at a
//! segment boundary, reordered, extended or spliced from another object is
//! refused while reading, before any damaged byte is handed out.

use std::fmt;
use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use super::cipher::{ObjectCipher, NONCE_LEN, TAG_LEN};
use super::keys::RepositoryKeys;
use super::{Encryption, ObjectKind, Salt};
use crate::error::FormatError;

/// Magic at the start of every sealed object.
pub const SEALED_MAGIC: [u8; 4] = *b"CFSO";
/// Bytes of the header.
pub const SEALED_HEADER_LEN: usize = 44;
/// The version byte of the header.
const SEALED_VERSION: u8 = 2;
/// log2 of the segment size writers use: 1 MiB.
const DEFAULT_SEGMENT_LOG2: u8 = 20;
/// Segment sizes a reader accepts: 1 KiB to 4 MiB, so a hostile header
/// cannot make a reader buffer more than 4 MiB.
const SEGMENT_LOG2_RANGE: std::ops::RangeInclusive<u8> = 10..=22;

/// The parsed header of a sealed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    encryption: Encryption,
    kind: ObjectKind,
    segment_log2: u8,
    generation: u32,
    salt: Salt,
}

impl Header {
    fn encode(&self) -> [u8; SEALED_HEADER_LEN] {
        let mut out = [0u8; SEALED_HEADER_LEN];
        out[..4].copy_from_slice(&SEALED_MAGIC);
        out[4] = SEALED_VERSION;
        out[5] = self.encryption.to_byte();
        out[6] = self.kind.to_byte();
        out[7] = self.segment_log2;
        out[8..12].copy_from_slice(&self.generation.to_le_bytes());
        out[12..44].copy_from_slice(&self.salt);
        out
    }

    fn segment_len(&self) -> usize {
        1 << self.segment_log2
    }
}

/// The associated data of every segment: the header, then the object key
/// when the kind binds it.
fn associated_data(
    header: &[u8; SEALED_HEADER_LEN],
    kind: ObjectKind,
    object_key: &str,
) -> Vec<u8> {
    let mut aad = header.to_vec();
    if kind.binds_key() {
        aad.extend_from_slice(object_key.as_bytes());
    }
    aad
}

/// STREAM nonce of segment `counter`.
fn segment_nonce(counter: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Streams a sealed object into a writer: header at once, then one sealed
/// segment per `segment size` bytes written, and the final segment on
/// [`SealedWriter::finish`]. Memory is one segment, whatever the object's
/// size. Dropping it unfinished leaves an object every reader refuses.
pub struct SealedWriter<W: Write> {
    inner: W,
    cipher: ObjectCipher,
    aad: Vec<u8>,
    segment_len: usize,
    buffer: Zeroizing<Vec<u8>>,
    counter: u64,
}

impl<W: Write> SealedWriter<W> {
    /// Starts an object of `kind` stored under `object_key`, sealed under
    /// the current generation of `keys` with a fresh salt from `rng`.
    pub fn new<R: rand::RngCore + rand::CryptoRng>(
        inner: W,
        keys: &RepositoryKeys,
        kind: ObjectKind,
        object_key: &str,
        rng: &mut R,
    ) -> Result<Self, FormatError> {
        Self::with_segment_log2(inner, keys, kind, object_key, rng, DEFAULT_SEGMENT_LOG2)
    }

    pub(crate) fn with_segment_log2<R: rand::RngCore + rand::CryptoRng>(
        mut inner: W,
        keys: &RepositoryKeys,
        kind: ObjectKind,
        object_key: &str,
        rng: &mut R,
        segment_log2: u8,
    ) -> Result<Self, FormatError> {
        debug_assert!(SEGMENT_LOG2_RANGE.contains(&segment_log2));
        let generation = keys.current();
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        let header = Header {
            encryption: keys.encryption(),
            kind,
            segment_log2,
            generation: generation.generation(),
            salt,
        };
        let encoded = header.encode();
        inner.write_all(&encoded)?;
        let segment_len = header.segment_len();
        Ok(SealedWriter {
            inner,
            cipher: generation.cipher(kind, &salt),
            aad: associated_data(&encoded, kind, object_key),
            segment_len,
            buffer: Zeroizing::new(Vec::with_capacity(segment_len + TAG_LEN)),
            counter: 0,
        })
    }

    fn seal_segment(&mut self, last: bool) -> io::Result<()> {
        let nonce = segment_nonce(self.counter, last);
        let tag = self.cipher.seal(&nonce, &self.aad, &mut self.buffer);
        self.buffer.extend_from_slice(&tag);
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        self.counter += 1;
        Ok(())
    }

    /// Seals the final segment, flushes, and returns the inner writer.
    pub fn finish(mut self) -> Result<W, FormatError> {
        self.seal_segment(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.segment_len - self.buffer.len();
        let taken = room.min(data.len());
        self.buffer.extend_from_slice(&data[..taken]);
        // A full segment is never the last one (the last is shorter), so
        // it can be sealed as soon as it fills.
        if self.buffer.len() == self.segment_len {
            self.seal_segment(false)?;
        }
        Ok(taken)
    }

    /// Flushes what is sealed; the open segment stays buffered until it
    /// fills or the object is finished.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedWriter")
            .field("segments", &self.counter)
            .finish_non_exhaustive()
    }
}

/// A sealed object's damage, carried through `io::Error` (kind
/// `InvalidData`) so the line readers above can report it as corruption
/// rather than as an I/O failure.
#[derive(Debug)]
pub(crate) struct SealedCorruption(pub(crate) String);

impl fmt::Display for SealedCorruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SealedCorruption {}

/// Turns an I/O error from a [`SealedReader`] back into the format error
/// it stands for.
pub(crate) fn from_io(err: io::Error) -> FormatError {
    if let Some(corruption) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<SealedCorruption>())
    {
        return FormatError::Corrupt(corruption.0.clone());
    }
    FormatError::Io(err)
}

/// Streams a sealed object back: [`Read`] hands out plaintext one
/// authenticated segment at a time. Any damage (a flipped bit, a cut,
/// appended or reordered segments, another object's bytes) is an
/// `InvalidData` error naming the object; reading ends cleanly only after
/// the final segment authenticated.
pub struct SealedReader<R: Read> {
    inner: R,
    cipher: ObjectCipher,
    aad: Vec<u8>,
    segment_len: usize,
    name: String,
    /// Plaintext of the current segment, `position..` not yet handed out.
    plain: Zeroizing<Vec<u8>>,
    position: usize,
    counter: u64,
    done: bool,
    failed: bool,
}

impl<R: Read> SealedReader<R> {
    /// Reads the header of an object of `kind` stored under `object_key`
    /// and picks its generation's key. A header naming another kind, the
    /// other encryption or an unknown layout is corrupt; a generation this
    /// key set cannot open is [`FormatError::KeyRejected`].
    pub fn new(
        mut inner: R,
        keys: &RepositoryKeys,
        kind: ObjectKind,
        object_key: &str,
    ) -> Result<Self, FormatError> {
        let name = format!("{} {object_key}", kind.name());
        let mut encoded = [0u8; SEALED_HEADER_LEN];
        read_full(&mut inner, &mut encoded)
            .map_err(FormatError::Io)
            .and_then(|read| {
                if read < SEALED_HEADER_LEN {
                    Err(FormatError::Corrupt(format!(
                        "{name}: shorter than its header"
                    )))
                } else {
                    Ok(())
                }
            })?;
        let header = parse_header(&encoded, keys.encryption(), kind)
            .map_err(|reason| FormatError::Corrupt(format!("{name}: {reason}")))?;
        let generation = keys
            .generation(header.generation)
            .map_err(|err| match err {
                FormatError::KeyRejected(reason) => {
                    FormatError::KeyRejected(format!("{name}: {reason}"))
                }
                other => other,
            })?;
        Ok(SealedReader {
            cipher: generation.cipher(kind, &header.salt),
            aad: associated_data(&encoded, kind, object_key),
            segment_len: header.segment_len(),
            name,
            plain: Zeroizing::new(Vec::with_capacity(header.segment_len() + TAG_LEN)),
            position: 0,
            counter: 0,
            done: false,
            failed: false,
            inner,
        })
    }

    fn corrupt(&mut self, what: &str) -> io::Error {
        self.failed = true;
        io::Error::new(
            io::ErrorKind::InvalidData,
            SealedCorruption(format!("{}: {what}", self.name)),
        )
    }

    /// Reads and opens the next segment into `plain`.
    fn next_segment(&mut self) -> io::Result<()> {
        let full = self.segment_len + TAG_LEN;
        self.plain.resize(full, 0);
        let read = read_full(&mut self.inner, &mut self.plain)?;
        // Only the final segment is shorter than a full one.
        let last = read < full;
        if read < TAG_LEN {
            self.plain.clear();
            return Err(self.corrupt(&format!("cut short after segment {}", self.counter)));
        }
        let (body_len, nonce) = (read - TAG_LEN, segment_nonce(self.counter, last));
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&self.plain[body_len..read]);
        self.plain.truncate(body_len);
        if !self.cipher.open(&nonce, &self.aad, &mut self.plain, &tag) {
            self.plain.clear();
            let what = format!(
                "segment {} does not authenticate (damaged, cut, extended, reordered or sealed under another key)",
                self.counter
            );
            return Err(self.corrupt(&what));
        }
        self.position = 0;
        self.counter += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(self.corrupt("read again after an error"));
        }
        while self.position == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let available = &self.plain[self.position..];
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.position += n;
        Ok(n)
    }
}

impl<R: Read> fmt::Debug for SealedReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedReader")
            .field("name", &self.name)
            .field("segments", &self.counter)
            .finish_non_exhaustive()
    }
}

fn parse_header(
    encoded: &[u8; SEALED_HEADER_LEN],
    encryption: Encryption,
    kind: ObjectKind,
) -> Result<Header, String> {
    if encoded[..4] != SEALED_MAGIC {
        return Err("not a sealed object (bad magic)".to_owned());
    }
    if encoded[4] != SEALED_VERSION {
        return Err(format!("unknown sealed-object version {}", encoded[4]));
    }
    if Encryption::from_byte(encoded[5]) != Some(encryption) {
        return Err(format!(
            "encryption byte {} is not the repository's",
            encoded[5]
        ));
    }
    if encoded[6] != kind.to_byte() {
        return Err(format!("kind byte {} is not a {}", encoded[6], kind.name()));
    }
    if !SEGMENT_LOG2_RANGE.contains(&encoded[7]) {
        return Err(format!("segment size 2^{} is out of bounds", encoded[7]));
    }
    let mut generation = [0u8; 4];
    generation.copy_from_slice(&encoded[8..12]);
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&encoded[12..44]);
    Ok(Header {
        encryption,
        kind,
        segment_log2: encoded[7],
        generation: u32::from_le_bytes(generation),
        salt,
    })
}

/// Reads until `buffer` is full or the reader ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Seals a small object (a condemned set) whole.
pub fn seal_object<R: rand::RngCore + rand::CryptoRng>(
    keys: &RepositoryKeys,
    kind: ObjectKind,
    object_key: &str,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, FormatError> {
    let mut writer = SealedWriter::new(Vec::new(), keys, kind, object_key, rng)?;
    writer.write_all(plaintext)?;
    writer.finish()
}

/// Opens a small object whole; the plaintext is never longer than the
/// stored bytes, so this allocates no more than the caller already holds.
pub fn open_object(
    keys: &RepositoryKeys,
    kind: ObjectKind,
    object_key: &str,
    stored: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut reader = SealedReader::new(stored, keys, kind, object_key)?;
    let mut plain = Vec::with_capacity(stored.len());
    reader.read_to_end(&mut plain).map_err(from_io)?;
    Ok(plain)
}

#[cfg(test)]
mod tests;
