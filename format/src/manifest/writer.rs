use std::cmp::Ordering;
use std::fmt;
use std::io::Write;

use serde::Serialize;

use super::entry::{compare_paths, ManifestEntry};
use super::footer::ManifestFooter;
use super::header::ManifestHeader;
use super::subtree::Subtree;
use crate::error::FormatError;
use crate::jsonl::LineWriter;
use crate::version::{FORMAT_NAME, FORMAT_VERSION};

/// One line of a manifest, as written.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum LineOut<'a> {
    Manifest(&'a ManifestHeader),
    Entry(&'a ManifestEntry),
    Subtree(&'a Subtree),
    End(&'a ManifestFooter),
}

/// Streams a manifest into a writer: header now, entries one at a time,
/// footer on [`ManifestWriter::finish`].
///
/// Dropping the writer without `finish` leaves a manifest with no end line,
/// which every reader rejects, so an interrupted run can never be mistaken
/// for a complete snapshot.
pub struct ManifestWriter<W: Write> {
    lines: LineWriter<W>,
    footer: ManifestFooter,
    /// Path of the last entry, to enforce [`compare_paths`] order.
    last_path: Option<Vec<u8>>,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts a manifest and writes its header. The header must name this
    /// format version: this writer cannot produce any other.
    pub fn new(
        writer: W,
        header: &ManifestHeader,
        compression_level: i32,
    ) -> Result<Self, FormatError> {
        if header.format != FORMAT_NAME || header.version != FORMAT_VERSION {
            return Err(FormatError::InvalidInput(format!(
                "this writer writes {FORMAT_NAME:?} version {FORMAT_VERSION}, \
                 not {:?} version {}",
                header.format, header.version
            )));
        }
        header
            .chunker
            .validate()
            .map_err(|err| FormatError::InvalidInput(format!("manifest header: {err}")))?;
        let mut lines = LineWriter::new(writer, compression_level)?;
        lines.write_line(&LineOut::Manifest(header))?;
        Ok(ManifestWriter {
            lines,
            footer: ManifestFooter::default(),
            last_path: None,
        })
    }

    /// Appends one entry. Entries must come in strictly increasing
    /// [`compare_paths`] order and satisfy the entry invariants (chunks and
    /// content hash only on files, a target exactly on symlinks, no empty,
    /// `.` or `..` path components); otherwise this is
    /// [`FormatError::InvalidInput`] and nothing is written.
    pub fn add(&mut self, entry: &ManifestEntry) -> Result<(), FormatError> {
        entry
            .check()
            .map_err(|reason| FormatError::InvalidInput(format!("manifest entry: {reason}")))?;
        if let Some(last) = &self.last_path {
            if compare_paths(last, &entry.path) != Ordering::Less {
                return Err(FormatError::InvalidInput(format!(
                    "manifest entry {:?} does not sort after {:?}",
                    String::from_utf8_lossy(&entry.path),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.lines.write_line(&LineOut::Entry(entry))?;
        self.footer.count(entry);
        let last = self.last_path.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&entry.path);
        Ok(())
    }

    /// Appends a reference to a tree blob (see [`super::encode_tree`])
    /// holding a run of entries that sorts after every entry so far; only
    /// readers given a tree source ([`super::ManifestReader::with_trees`],
    /// format v2) read it.
    pub fn add_subtree(&mut self, subtree: &Subtree) -> Result<(), FormatError> {
        subtree
            .check()
            .map_err(|reason| FormatError::InvalidInput(format!("manifest {reason}")))?;
        if let Some(last) = &self.last_path {
            if compare_paths(last, &subtree.first) != Ordering::Less {
                return Err(FormatError::InvalidInput(format!(
                    "subtree from {:?} does not sort after {:?}",
                    String::from_utf8_lossy(&subtree.first),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.lines.write_line(&LineOut::Subtree(subtree))?;
        self.footer.add(&subtree.counts());
        let last = self.last_path.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&subtree.last);
        Ok(())
    }

    /// The counts the footer will hold if no more entries are added.
    pub fn counts(&self) -> ManifestFooter {
        self.footer
    }

    /// Writes the footer with counts computed from the added entries, ends
    /// the zstd frame, flushes, and returns the writer.
    pub fn finish(mut self) -> Result<W, FormatError> {
        let footer = self.footer;
        self.lines.write_line(&LineOut::End(&footer))?;
        self.lines.finish()
    }
}

impl<W: Write> fmt::Debug for ManifestWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestWriter")
            .field("counts", &self.footer)
            .finish_non_exhaustive()
    }
}
