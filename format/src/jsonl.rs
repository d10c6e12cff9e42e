//! Zstd-compressed JSON lines: the encoding of index files and manifests.
//!
//! One JSON object per line inside a single zstd frame with a content
//! checksum, so `zstd -dc | jq` reads it, it can be written and read as a
//! stream, and damage anywhere in the frame is detected by zstd itself.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::Serialize;

use crate::error::FormatError;

/// The longest line a reader accepts and a writer produces: a manifest
/// entry of a file with about 1.9 million chunks (about 2 TiB at the
/// chunker's average size) still fits. Stored data is untrusted, so a
/// longer line (a decompression bomb without newlines) is an error before
/// it is an allocation.
pub const MAX_LINE_BYTES: u64 = 128 << 20;

/// Bounds on what one zstd frame of JSON lines may decode to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeLimits {
    /// Longest line, newline excluded.
    pub(crate) max_line: u64,
    /// Most bytes the whole frame may decode to (`u64::MAX`: no bound, for
    /// streams read one line at a time).
    pub(crate) max_total: u64,
}

impl DecodeLimits {
    /// Lines of at most [`MAX_LINE_BYTES`], any number of them.
    pub(crate) const STREAMED: DecodeLimits = DecodeLimits {
        max_line: MAX_LINE_BYTES,
        max_total: u64::MAX,
    };
}

/// Writes JSON lines into a zstd frame.
pub(crate) struct LineWriter<W: Write> {
    encoder: zstd::stream::write::Encoder<'static, W>,
    /// Reused for every line so each line reaches zstd as one write.
    line: Vec<u8>,
}

impl<W: Write> LineWriter<W> {
    pub(crate) fn new(writer: W, compression_level: i32) -> Result<Self, FormatError> {
        let mut encoder = zstd::stream::write::Encoder::new(writer, compression_level)?;
        encoder.include_checksum(true)?;
        Ok(LineWriter {
            encoder,
            line: Vec::new(),
        })
    }

    pub(crate) fn write_line<T: Serialize>(&mut self, value: &T) -> Result<(), FormatError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)?;
        if self.line.len() as u64 > MAX_LINE_BYTES {
            return Err(FormatError::InvalidInput(format!(
                "a line of {} bytes is longer than the {MAX_LINE_BYTES}-byte limit readers enforce",
                self.line.len()
            )));
        }
        // Compact serde_json output never contains a raw newline: strings
        // escape it, so the newline below is always the line end.
        self.line.push(b'\n');
        self.encoder.write_all(&self.line)?;
        Ok(())
    }

    /// Ends the zstd frame and flushes; without this the output is truncated.
    pub(crate) fn finish(self) -> Result<W, FormatError> {
        let mut writer = self.encoder.finish()?;
        writer.flush()?;
        Ok(writer)
    }
}

/// Reads JSON lines from a zstd frame, telling damaged data apart from
/// failures of the underlying reader.
pub(crate) struct LineReader<R: Read> {
    lines: BufReader<zstd::stream::read::Decoder<'static, BufReader<SourceReader<R>>>>,
    line: Vec<u8>,
    limits: DecodeLimits,
    /// Bytes decoded so far.
    total: u64,
}

impl<R: Read> LineReader<R> {
    pub(crate) fn new(reader: R, limits: DecodeLimits) -> Result<Self, FormatError> {
        let source = SourceReader {
            inner: reader,
            failed: false,
        };
        let decoder = zstd::stream::read::Decoder::new(source)?;
        Ok(LineReader {
            lines: BufReader::new(decoder),
            line: Vec::new(),
            limits,
            total: 0,
        })
    }

    /// The next line without its newline, or `None` at a clean end of the
    /// frame. A final line without a newline means the stream was cut; a
    /// line or a frame longer than the limits is corrupt, found after
    /// decoding at most one byte more than the limit.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, FormatError> {
        self.line.clear();
        let budget = self.limits.max_line.saturating_add(1).min(
            self.limits
                .max_total
                .saturating_sub(self.total)
                .saturating_add(1),
        );
        let read = match (&mut self.lines)
            .take(budget)
            .read_until(b'\n', &mut self.line)
        {
            Ok(read) => read,
            Err(err) => return Err(self.classify(err)),
        };
        if read == 0 {
            return Ok(None);
        }
        self.total = self.total.saturating_add(read as u64);
        if self.total > self.limits.max_total {
            return Err(FormatError::Corrupt(format!(
                "decodes to more than {} bytes (a decompression bomb?)",
                self.limits.max_total
            )));
        }
        let content = self.line.len() as u64 - u64::from(self.line.last() == Some(&b'\n'));
        if content > self.limits.max_line {
            return Err(FormatError::Corrupt(format!(
                "a line longer than {} bytes (a decompression bomb?)",
                self.limits.max_line
            )));
        }
        if self.line.pop() != Some(b'\n') {
            return Err(FormatError::Corrupt(
                "stream ends in the middle of a line (truncated)".to_owned(),
            ));
        }
        Ok(Some(&self.line))
    }

    /// A failure of the caller's reader is I/O; anything else came from the
    /// zstd decoder and means the bytes are damaged or cut short.
    fn classify(&self, err: io::Error) -> FormatError {
        if self.lines.get_ref().get_ref().get_ref().failed {
            // A sealed object's reader reports damage as an I/O error
            // carrying it; it is corruption, not a failed read.
            crate::crypto::sealed::from_io(err)
        } else {
            FormatError::Corrupt(format!("zstd stream: {err}"))
        }
    }
}

/// Wraps the caller's reader to remember whether it, rather than the
/// decoder, produced an error.
struct SourceReader<R> {
    inner: R,
    failed: bool,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if let Err(err) = &result {
            if err.kind() != io::ErrorKind::Interrupted {
                self.failed = true;
            }
        }
        result
    }
}
