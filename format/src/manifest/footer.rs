//! A manifest's last line: how many entries, files and bytes it holds.

use serde::{Deserialize, Serialize};

use super::entry::ManifestEntry;
use crate::attributes::EntryKind;

/// The last line of a manifest. Counts are computed by the writer from the
/// entries it wrote and checked by the reader against the entries it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFooter {
    /// Number of entries of every kind.
    pub entries: u64,
    /// Number of regular files.
    pub files: u64,
    /// Sum of the sizes of regular files.
    pub total_bytes: u64,
}

impl ManifestFooter {
    /// What was counted since `before`.
    pub(super) fn minus(&self, before: &ManifestFooter) -> ManifestFooter {
        ManifestFooter {
            entries: self.entries - before.entries,
            files: self.files - before.files,
            total_bytes: self.total_bytes.wrapping_sub(before.total_bytes),
        }
    }

    /// Adds what a subtree holds.
    pub(super) fn add(&mut self, other: &ManifestFooter) {
        self.entries = self.entries.saturating_add(other.entries);
        self.files = self.files.saturating_add(other.files);
        self.total_bytes = self.total_bytes.saturating_add(other.total_bytes);
    }

    pub(super) fn count(&mut self, entry: &ManifestEntry) {
        self.entries += 1;
        if entry.kind() == EntryKind::File {
            self.files += 1;
            self.total_bytes = self.total_bytes.saturating_add(entry.attributes.size);
        }
    }
}
