//! Domain types for backed-up objects, their versions and snapshot commits.
//!
//! # Version validity
//!
//! Versions scale with change, not with size: a version row covers a range of
//! snapshots and an unchanged file costs no rows in later snapshots. Ranges
//! are half-open in run order. Run ids are UUIDv7 and therefore time-ordered,
//! so a version is valid in snapshot `R` when
//!
//! ```text
//! first_run_id <= R AND (last_run_id IS NULL OR R < last_run_id)
//! ```
//!
//! `last_run_id` is the first snapshot that no longer contains this version
//! (the snapshot that replaced it or recorded the path as deleted); `NULL`
//! marks the current version. A path that disappears gets its current version
//! closed and a `deleted` marker version starting at the same snapshot.

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use coffer_format::{EntryKind, FileAttributes};

/// The catalog's spelling of a kind (`object_versions.kind`, and the worker's
/// `FileRecord.kind`).
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "regular",
        EntryKind::Directory => "directory",
        EntryKind::Symlink => "symlink",
    }
}

/// Parses the catalog's spelling of a kind; `None` for anything else.
pub fn parse_kind(value: &str) -> Option<EntryKind> {
    match value {
        "regular" => Some(EntryKind::File),
        "directory" => Some(EntryKind::Directory),
        "symlink" => Some(EntryKind::Symlink),
        _ => None,
    }
}

/// A modification time as the catalog stores it: at microsecond precision
/// (the precision [`FileAttributes::same_version`] compares at).
pub fn mtime_of(attributes: &FileAttributes) -> DateTime<Utc> {
    let micros = attributes.mtime_ns.div_euclid(1_000);
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Nanoseconds since the epoch of a stored modification time.
pub fn mtime_ns(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros().saturating_mul(1_000)
}

/// One version of an object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectVersion {
    /// Id.
    pub id: Uuid,
    /// The object.
    pub object_id: Uuid,
    /// What the version records. A deletion marker keeps the kind of the
    /// last existing version and zeroes the rest.
    pub attributes: FileAttributes,
    /// Where the content is stored.
    pub storage_key: String,
    /// First snapshot containing this version.
    pub first_run_id: Uuid,
    /// First snapshot no longer containing it; `None` while current.
    pub last_run_id: Option<Uuid>,
    /// Marks that the path did not exist from `first_run_id` on.
    pub deleted: bool,
    /// When the version was recorded.
    pub create_time: DateTime<Utc>,
}

impl ObjectVersion {
    /// The modification time, at the catalog's precision; none for a
    /// deletion marker.
    pub fn mtime(&self) -> Option<DateTime<Utc>> {
        (!self.deleted).then(|| mtime_of(&self.attributes))
    }
}

/// One path in a repository.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupObject {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub owner_id: Uuid,
    /// Bucket holding the repository, if any.
    pub bucket_id: Option<Uuid>,
    /// Job that backed it up, if still known.
    pub job_id: Option<Uuid>,
    /// The repository (bucket and prefix, or a filesystem path).
    pub repository: String,
    /// Raw path bytes relative to the source root.
    pub path: Vec<u8>,
    /// Printable path (see [`path_text`]).
    pub path_text: String,
    /// When the object was first backed up.
    pub create_time: DateTime<Utc>,
    /// The current version, or the newest one.
    pub latest_version: Option<ObjectVersion>,
}

/// Filters of object lists; `None` leaves a filter off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectFilter {
    /// Only objects of this owner (non-admin callers).
    pub owner_id: Option<Uuid>,
    /// Only objects in this bucket.
    pub bucket_id: Option<Uuid>,
    /// Only objects of this job.
    pub job_id: Option<Uuid>,
    /// Only objects whose `path_text` starts with this (empty: all).
    pub path_prefix: String,
}

/// Filters of ListLatestVersions on top of [`ObjectFilter`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatestFilter {
    /// The object filters.
    pub objects: ObjectFilter,
    /// Only objects whose current version or the object itself carries a tag with this key.
    pub tag_key: Option<String>,
    /// ... with this value (needs `tag_key`).
    pub tag_value: Option<String>,
    /// Include objects whose current version is a deletion marker.
    pub include_deleted: bool,
}

/// A file as it was in one snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFile {
    /// Printable path.
    pub path_text: String,
    /// The version valid in the snapshot.
    pub version: ObjectVersion,
}

/// Filters of ListDuplicates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DuplicateFilter {
    /// Only objects of this owner (non-admin callers).
    pub owner_id: Option<Uuid>,
    /// Only objects in this bucket.
    pub bucket_id: Option<Uuid>,
    /// Only objects of this job.
    pub job_id: Option<Uuid>,
    /// Ignore files smaller than this.
    pub min_size_bytes: i64,
}

/// Current files sharing one content hash.
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateGroup {
    /// The shared hash.
    pub content_hash: String,
    /// Size of one copy.
    pub size_bytes: i64,
    /// Bytes saved by storing the content once: `size * (copies - 1)`.
    pub saved_bytes: i64,
    /// The holders of the content.
    pub files: Vec<DuplicateFile>,
}

/// One holder of duplicated content.
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateFile {
    /// Object id.
    pub object_id: Uuid,
    /// Printable path.
    pub path_text: String,
    /// Its job.
    pub job_id: Option<Uuid>,
}

/// One entry of a new snapshot as a worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotEntry {
    /// Raw path bytes relative to the source root.
    pub path: Vec<u8>,
    /// What the version records.
    pub attributes: FileAttributes,
    /// Where the content is stored.
    pub storage_key: String,
}

impl SnapshotEntry {
    /// Whether this entry is the same version as `version`, by the one rule
    /// of [`FileAttributes::same_version`] (an owner change is a change).
    /// Deletion markers never match; the storage key does not count.
    pub fn same_version(&self, version: &ObjectVersion) -> bool {
        !version.deleted && self.attributes.same_version(&version.attributes)
    }
}

/// A complete new snapshot of one repository, to record in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotCommit {
    /// The run that took the snapshot. Must be newer (a later UUIDv7) than
    /// every snapshot already recorded for the repository.
    pub run_id: Uuid,
    /// Owner of the objects.
    pub owner_id: Uuid,
    /// Bucket holding the repository, if any.
    pub bucket_id: Option<Uuid>,
    /// The repository's id (`Catalog::ensure_repository` resolves a
    /// location to it).
    pub repository_id: Uuid,
    /// The job, if any. Objects are keyed by (repository id, job, path).
    pub job_id: Option<Uuid>,
    /// Every entry of the snapshot (or, for an incremental, every new or
    /// changed entry); paths must be unique.
    pub entries: Vec<SnapshotEntry>,
    /// `None`: `entries` is the whole tree, and a path missing from it was
    /// removed. `Some`: an incremental against the repository's current
    /// versions; `entries` holds what changed, these paths were removed,
    /// and everything else is unchanged (and costs no row).
    pub removed: Option<Vec<Vec<u8>>>,
}

/// What [`SnapshotCommit`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Paths seen for the first time.
    pub new_objects: u64,
    /// Versions inserted (including deletion markers).
    pub new_versions: u64,
    /// Current versions closed (changed or deleted paths).
    pub closed_versions: u64,
    /// Entries identical to their current version; they wrote nothing.
    pub unchanged: u64,
    /// Paths recorded as deleted.
    pub deleted: u64,
}

/// Renders raw path bytes as text: valid UTF-8 is kept, every byte of an
/// invalid sequence becomes `\xNN` (two lowercase hex digits).
pub fn path_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_text_escapes_invalid_bytes_only() {
        assert_eq!(path_text(b"dir/file.txt"), "dir/file.txt");
        assert_eq!(path_text("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(path_text(b"a\xffb\xc3"), "a\\xffb\\xc3");
    }

    #[test]
    fn file_kinds_round_trip() {
        for kind in [EntryKind::File, EntryKind::Directory, EntryKind::Symlink] {
            assert_eq!(parse_kind(kind_name(kind)), Some(kind));
        }
        assert_eq!(parse_kind("deleted"), None);
    }

    #[test]
    fn stored_mtimes_keep_microseconds() {
        let attributes = FileAttributes {
            kind: EntryKind::File,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: -1_500,
            content_hash: None,
            symlink_target: None,
        };
        assert_eq!(mtime_ns(mtime_of(&attributes)), -2_000);
    }
}
