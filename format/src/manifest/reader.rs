use std::cmp::Ordering;
use std::fmt;
use std::io::Read;

use serde::Deserialize;

use super::entry::{compare_paths, ManifestEntry};
use super::footer::ManifestFooter;
use super::header::ManifestHeader;
use super::subtree::{Subtree, TreeCursor, TreeSource};
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
    Subtree(Subtree),
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
    /// Where `subtree` lines are expanded from; without one they are corrupt.
    trees: Option<Box<dyn TreeSource>>,
    /// The tree blob being expanded.
    tree: Option<TreeCursor>,
}

impl<R: Read> ManifestReader<R> {
    /// Reads and validates the header, rejecting other formats and newer
    /// versions with [`FormatError::UnsupportedFormat`].
    pub fn new(reader: R) -> Result<Self, FormatError> {
        let mut lines = LineReader::new(reader, DecodeLimits::STREAMED)?;
        let header = read_header(&mut lines)?;
        Ok(ManifestReader {
            lines,
            header,
            footer: None,
            counts: ManifestFooter::default(),
            last_path: None,
            failed: false,
            trees: None,
            tree: None,
        })
    }

    /// Reads a manifest that may hold `subtree` lines (format v2), each
    /// expanded in place from the tree blob `trees` gives for it.
    pub fn with_trees(reader: R, trees: Box<dyn TreeSource>) -> Result<Self, FormatError> {
        let mut manifest = Self::new(reader)?;
        manifest.trees = Some(trees);
        Ok(manifest)
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
        loop {
            if let Some(entry) = self.next_tree_entry()? {
                return Ok(Some(entry));
            }
            let line = self.lines.next_line()?.ok_or_else(|| {
                FormatError::Corrupt("manifest: no end line (truncated)".to_owned())
            })?;
            match serde_json::from_slice(line)? {
                LineIn::Entry(entry) => {
                    self.accept(&entry)?;
                    return Ok(Some(entry));
                }
                LineIn::Subtree(subtree) => self.open_tree(subtree)?,
                LineIn::End(footer) => {
                    self.finish(footer)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Fetches the tree blob of a `subtree` line to expand it.
    fn open_tree(&mut self, subtree: Subtree) -> Result<(), FormatError> {
        let corrupt = |what: String| {
            FormatError::Corrupt(format!("manifest: subtree {}: {what}", subtree.blob))
        };
        subtree.check().map_err(corrupt)?;
        let Some(trees) = self.trees.as_mut() else {
            return Err(corrupt(
                "a subtree line where none may be (format v1)".to_owned(),
            ));
        };
        let bytes = trees.tree_blob(&subtree.blob)?;
        self.tree = Some(TreeCursor {
            subtree,
            bytes,
            position: 0,
            counts_before: self.counts,
        });
        Ok(())
    }

    /// The next entry of the tree being expanded; at its end, checks it
    /// held what its line promised.
    fn next_tree_entry(&mut self) -> Result<Option<ManifestEntry>, FormatError> {
        let Some(cursor) = self.tree.as_mut() else {
            return Ok(None);
        };
        let first = cursor.position == 0;
        let blob = cursor.subtree.blob;
        let Some(line) = cursor.next_line()? else {
            let cursor = self.tree.take().expect("checked above");
            let counts = self.counts.minus(&cursor.counts_before);
            if counts != cursor.subtree.counts()
                || self.last_path.as_deref() != Some(&cursor.subtree.last[..])
            {
                return Err(FormatError::Corrupt(format!(
                    "manifest: subtree {blob} does not hold what its line says"
                )));
            }
            return Ok(None);
        };
        let LineIn::Entry(entry) = serde_json::from_slice(line)? else {
            return Err(FormatError::Corrupt(format!(
                "manifest: subtree {blob} holds a line that is not an entry"
            )));
        };
        if first && entry.path != cursor.subtree.first {
            return Err(FormatError::Corrupt(format!(
                "manifest: subtree {blob} starts elsewhere than its line says"
            )));
        }
        self.accept(&entry)?;
        Ok(Some(entry))
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
        debug_assert!(
            self.tree.is_none(),
            "a tree is expanded before the next line is read"
        );
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

/// Reads and checks a manifest's first line.
fn read_header<R: Read>(lines: &mut LineReader<R>) -> Result<ManifestHeader, FormatError> {
    let first = lines
        .next_line()?
        .ok_or_else(|| FormatError::Corrupt("manifest: empty".to_owned()))?;
    let probe: HeaderProbe = serde_json::from_slice(first)?;
    check_format(&probe.manifest.format, probe.manifest.version)?;
    let HeaderLine { manifest: header } = serde_json::from_slice(first)?;
    header
        .check()
        .map_err(|reason| FormatError::Corrupt(format!("manifest header: {reason}")))?;
    Ok(header)
}

/// The `subtree` lines of a manifest, in order, without expanding them:
/// the tree blobs a reader must have at hand before it reads the manifest
/// with [`ManifestReader::with_trees`]. Only the header and these lines
/// are checked here; reading the manifest checks the rest (a line this
/// skips but the reader takes for a subtree finds no blob and fails).
pub fn list_subtrees<R: Read>(reader: R) -> Result<Vec<Subtree>, FormatError> {
    // The writer's own spelling: entry lines are skipped without parsing.
    const SUBTREE_PREFIX: &[u8] = b"{\"subtree\":";
    let mut lines = LineReader::new(reader, DecodeLimits::STREAMED)?;
    read_header(&mut lines)?;
    let mut subtrees = Vec::new();
    while let Some(line) = lines.next_line()? {
        if !line.starts_with(SUBTREE_PREFIX) {
            continue;
        }
        if let LineIn::Subtree(subtree) = serde_json::from_slice(line)? {
            subtrees.push(subtree);
        }
    }
    Ok(subtrees)
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
