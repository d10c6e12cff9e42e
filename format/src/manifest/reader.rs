use std::cmp::Ordering;
use std::fmt;
use std::io::Read;

use serde::Deserialize;

use super::entry::{compare_paths, ManifestEntry};
use super::footer::ManifestFooter;
use super::header::ManifestHeader;
use crate::error::{check_format, FormatError};
use crate::jsonl::{DecodeLimits, LineReader};

/// Just enough of the first line to check the format before parsing the
/// rest, so a newer manifest is reported as unsupported, not as bad JSON.
#[derive(Deserialize)]
struct HeaderProbe {
    manifest: FormatProbe,
}

#[derive(Deserialize)]
struct FormatProbe {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct HeaderLine {
    manifest: ManifestHeader,
}

/// One line after the header, as read.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum LineIn {
    Entry(ManifestEntry),
    End(ManifestFooter),
}

/// Streams a manifest back: the header on construction, then entries one
/// at a time.
///
/// The reader never ends quietly on damaged input: a manifest that is cut
/// short, out of order, fails zstd's checksum, or whose end line disagrees
/// with the entries read is an error, and [`ManifestReader::next_entry`]
/// returns `Ok(None)` only after a valid end line. Entries are handed out
/// as they are read, before zstd's whole-frame checksum is checked at the
/// end, so a consumer must treat the snapshot as verified only once it
/// has seen `Ok(None)`.
pub struct ManifestReader<R: Read> {
    lines: LineReader<R>,
    header: ManifestHeader,
    footer: Option<ManifestFooter>,
    /// Counts of the entries read so far, checked against the end line.
    counts: ManifestFooter,
    last_path: Option<Vec<u8>>,
    /// Set after any error, so a caller that ignores one cannot read on
    /// past the damage.
    failed: bool,
}

impl<R: Read> ManifestReader<R> {
    /// Reads and validates the header, rejecting other formats and newer
    /// versions with [`FormatError::UnsupportedFormat`].
    pub fn new(reader: R) -> Result<Self, FormatError> {
        let mut lines = LineReader::new(reader, DecodeLimits::STREAMED)?;
        let first = lines
            .next_line()?
            .ok_or_else(|| FormatError::Corrupt("manifest: empty".to_owned()))?;
        let probe: HeaderProbe = serde_json::from_slice(first)?;
        check_format(&probe.manifest.format, probe.manifest.version)?;
        let HeaderLine { manifest: header } = serde_json::from_slice(first)?;
        header
            .check()
            .map_err(|reason| FormatError::Corrupt(format!("manifest header: {reason}")))?;
        Ok(ManifestReader {
            lines,
            header,
            footer: None,
            counts: ManifestFooter::default(),
            last_path: None,
            failed: false,
        })
    }

    /// The manifest's header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    /// The next entry, or `Ok(None)` once the end line has been read and
    /// its counts match. A manifest without an end line is an error.
    pub fn next_entry(&mut self) -> Result<Option<ManifestEntry>, FormatError> {
        if self.failed {
            return Err(FormatError::InvalidInput(
                "manifest reader used after an error".to_owned(),
            ));
        }
        if self.footer.is_some() {
            return Ok(None);
        }
        let result = self.read_entry();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The end line, once [`ManifestReader::next_entry`] has returned `Ok(None)`.
    pub fn footer(&self) -> Option<&ManifestFooter> {
        self.footer.as_ref()
    }

    fn read_entry(&mut self) -> Result<Option<ManifestEntry>, FormatError> {
        let line = self
            .lines
            .next_line()?
            .ok_or_else(|| FormatError::Corrupt("manifest: no end line (truncated)".to_owned()))?;
        match serde_json::from_slice(line)? {
            LineIn::Entry(entry) => {
                self.accept(&entry)?;
                Ok(Some(entry))
            }
            LineIn::End(footer) => {
                self.finish(footer)?;
                Ok(None)
            }
        }
    }

    fn accept(&mut self, entry: &ManifestEntry) -> Result<(), FormatError> {
        entry
            .check()
            .map_err(|reason| FormatError::Corrupt(format!("manifest entry: {reason}")))?;
        if let Some(last) = &self.last_path {
            if compare_paths(last, &entry.path) != Ordering::Less {
                return Err(FormatError::Corrupt(format!(
                    "manifest entry {:?} is out of order after {:?}",
                    String::from_utf8_lossy(&entry.path),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.counts.count(entry);
        let last = self.last_path.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&entry.path);
        Ok(())
    }

    fn finish(&mut self, footer: ManifestFooter) -> Result<(), FormatError> {
        if footer != self.counts {
            return Err(FormatError::Corrupt(format!(
                "manifest: end line says {footer:?} but {:?} were read",
                self.counts
            )));
        }
        // Reading to the end also makes zstd verify the frame checksum.
        if self.lines.next_line()?.is_some() {
            return Err(FormatError::Corrupt(
                "manifest: data after the end line".to_owned(),
            ));
        }
        self.footer = Some(footer);
        Ok(())
    }
}

impl<R: Read> fmt::Debug for ManifestReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestReader")
            .field("run_id", &self.header.run_id)
            .field("read", &self.counts)
            .field("footer", &self.footer)
            .finish_non_exhaustive()
    }
}
