//! What changed between two snapshots of a repository (`DiffSnapshots`).

use super::object::{mtime_of, ObjectVersion};

/// How a path differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Only in the newer snapshot.
    Added,
    /// Only in the older snapshot.
    Removed,
    /// Kind, size or content hash differ.
    Content,
    /// Only mode, owner, mtime or symlink target differ.
    Metadata,
}

impl ChangeKind {
    /// Every kind, in the order summaries list them.
    pub const ALL: [ChangeKind; 4] = [
        ChangeKind::Added,
        ChangeKind::Removed,
        ChangeKind::Content,
        ChangeKind::Metadata,
    ];

    /// The catalog query's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Content => "content",
            ChangeKind::Metadata => "metadata",
        }
    }

    /// Parses the catalog query's spelling; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == value)
    }
}

/// Which part of a diff to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffFilter {
    /// Only paths whose printable text starts with this (empty: all).
    pub path_prefix: String,
    /// Only these kinds of change (empty: all).
    pub kinds: Vec<ChangeKind>,
}

impl DiffFilter {
    /// Whether changes of `kind` are listed.
    pub fn includes(&self, kind: ChangeKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// One path that differs.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotChange {
    /// Printable path.
    pub path_text: String,
    /// How it differs.
    pub kind: ChangeKind,
    /// Its version in the older snapshot (none when added).
    pub from: Option<ObjectVersion>,
    /// Its version in the newer snapshot (none when removed).
    pub to: Option<ObjectVersion>,
}

impl SnapshotChange {
    /// The attributes that differ between both versions (empty unless the
    /// path is in both).
    pub fn changed_fields(&self) -> Vec<&'static str> {
        let (Some(from), Some(to)) = (&self.from, &self.to) else {
            return Vec::new();
        };
        let (a, b) = (&from.attributes, &to.attributes);
        [
            ("kind", a.kind != b.kind),
            ("size", a.size != b.size),
            ("content", a.content_hash != b.content_hash),
            ("mode", a.mode != b.mode),
            ("uid", a.uid != b.uid),
            ("gid", a.gid != b.gid),
            // At the catalog's precision, as the diff's query compares.
            ("mtime", mtime_of(a) != mtime_of(b)),
            ("symlink_target", a.symlink_target != b.symlink_target),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect()
    }
}

/// Counts and sizes of a whole diff beneath a prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct DiffSummary {
    /// Added paths.
    pub added_count: i64,
    /// Removed paths.
    pub removed_count: i64,
    /// Paths whose content changed.
    pub content_changed_count: i64,
    /// Paths whose metadata alone changed.
    pub metadata_changed_count: i64,
    /// Size of the added paths.
    pub added_bytes: i64,
    /// Size of the removed paths.
    pub removed_bytes: i64,
    /// Size in the newer snapshot of the paths whose content changed.
    pub changed_bytes: i64,
}
