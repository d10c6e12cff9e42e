//! Zstd-compressed JSON lines: the encoding of index files and manifests.
//!
//! One JSON object per line inside a single zstd frame with a content
//! checksum, so `zstd -dc | jq` reads it, it can be written and read as a
//! stream, and damage anywhere in the frame is detected by zstd itself.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::Serialize;

use crate::error::FormatError;

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
}

impl<R: Read> LineReader<R> {
    pub(crate) fn new(reader: R) -> Result<Self, FormatError> {
        let source = SourceReader {
            inner: reader,
            failed: false,
        };
        let decoder = zstd::stream::read::Decoder::new(source)?;
        Ok(LineReader {
            lines: BufReader::new(decoder),
            line: Vec::new(),
        })
    }

    /// The next line without its newline, or `None` at a clean end of the
    /// frame. A final line without a newline means the stream was cut.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, FormatError> {
        self.line.clear();
        let read = match self.lines.read_until(b'\n', &mut self.line) {
            Ok(read) => read,
            Err(err) => return Err(self.classify(err)),
        };
        if read == 0 {
            return Ok(None);
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
            FormatError::Io(err)
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
