//! What a backup records of each walked entry: the version's
//! [`FileAttributes`] (from the entry's `lstat` result), the manifest entry
//! holding them, and the control plane's [`FileRecord`]; and the two
//! questions an incremental asks of the parent's entry: may the file be
//! carried over unread, and must the control plane hear of it.

use coffer_format::{EntryKind as ManifestKind, FileAttributes, ManifestEntry, PERMISSION_BITS};
use coffer_proto::v1::FileRecord;

use super::reader::FileContent;
use crate::report::to_i64;
use crate::source::{Entry, EntryKind, EntryMetadata, FileTime};

/// The attributes a version records of a walked entry whose `lstat` result
/// is `metadata`: the size only for a regular file, the whole `st_mode`, the
/// symlink's target as the walk read it.
pub(super) fn attributes(
    entry: &Entry,
    metadata: &EntryMetadata,
    content_hash: Option<String>,
) -> FileAttributes {
    FileAttributes {
        kind: manifest_kind(entry.kind),
        size: if entry.kind == EntryKind::Regular {
            metadata.size
        } else {
            0
        },
        mode: metadata.mode,
        uid: metadata.uid,
        gid: metadata.gid,
        mtime_ns: nanos(metadata.mtime),
        content_hash,
        symlink_target: entry.symlink_target.clone(),
    }
}

/// The manifest entry of a walked directory, symlink or regular file;
/// `content` is what reading the file found (or what the parent recorded
/// for a file carried over), whose metadata then wins over the walk's.
pub(super) fn manifest_entry(entry: &Entry, content: Option<FileContent>) -> ManifestEntry {
    let metadata = content.as_ref().map_or(entry.metadata, |c| c.metadata);
    let (content_hash, chunks) = match content {
        Some(content) => (Some(content.content_hash), content.chunks),
        None => (None, Vec::new()),
    };
    ManifestEntry {
        path: entry.path.clone(),
        attributes: attributes(entry, &metadata, content_hash),
        ctime_ns: nanos(metadata.ctime),
        inode: metadata.inode,
        dev: metadata.dev,
        chunks,
    }
}

/// Whether a regular file may be unchanged since `previous` and is carried
/// over without being read: the same size, modification and status-change
/// times and inode. Any change to the file's attributes or content moves
/// its status-change time, so a file that fails this is read again; whether
/// its version changed is then [`catalog_view_changed`]'s question.
pub(super) fn may_be_unchanged(previous: &ManifestEntry, now: &EntryMetadata) -> bool {
    previous.kind() == ManifestKind::File
        && previous.attributes.size == now.size
        && previous.attributes.mtime_ns == nanos(now.mtime)
        && previous.ctime_ns == nanos(now.ctime)
        && previous.inode == now.inode
}

/// Whether the catalog's view of an entry changed since the parent's entry
/// `previous` (none: the entry is new): a new version by
/// [`FileAttributes::same_version`], so an owner change is reported too.
pub(super) fn catalog_view_changed(previous: Option<&ManifestEntry>, now: &ManifestEntry) -> bool {
    previous.is_none_or(|previous| !previous.attributes.same_version(&now.attributes))
}

/// The control plane's record of a manifest entry.
pub(crate) fn file_record(entry: &ManifestEntry) -> FileRecord {
    let attributes = &entry.attributes;
    FileRecord {
        path: entry.path.clone(),
        kind: match attributes.kind {
            ManifestKind::File => "regular",
            ManifestKind::Directory => "directory",
            ManifestKind::Symlink => "symlink",
        }
        .into(),
        size_bytes: to_i64(attributes.size),
        mode: attributes.mode & PERMISSION_BITS,
        uid: attributes.uid,
        gid: attributes.gid,
        mtime: Some(prost_types::Timestamp {
            seconds: attributes.mtime_ns.div_euclid(1_000_000_000),
            nanos: i32::try_from(attributes.mtime_ns.rem_euclid(1_000_000_000)).unwrap_or(0),
        }),
        content_hash: attributes.content_hash.clone().unwrap_or_default(),
        symlink_target: attributes.symlink_target.clone().unwrap_or_default(),
        storage_key: String::new(),
    }
}

/// The control plane's record that the parent's entry at `path` is gone.
pub(super) fn removed_record(path: &[u8]) -> FileRecord {
    FileRecord {
        path: path.to_vec(),
        kind: "deleted".into(),
        ..Default::default()
    }
}

fn manifest_kind(kind: EntryKind) -> ManifestKind {
    match kind {
        EntryKind::Directory => ManifestKind::Directory,
        EntryKind::Symlink => ManifestKind::Symlink,
        _ => ManifestKind::File,
    }
}

fn nanos(time: FileTime) -> i64 {
    time.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(time.nanos))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn walked(metadata: EntryMetadata) -> Entry {
        Entry {
            path: b"docs/report.txt".to_vec(),
            abs_path: PathBuf::from("/srv/docs/report.txt"),
            kind: EntryKind::Regular,
            metadata,
            symlink_target: None,
        }
    }

    fn stat() -> EntryMetadata {
        EntryMetadata {
            size: 12,
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
            mtime: FileTime {
                seconds: 1_700_000_000,
                nanos: 5,
            },
            ctime: FileTime {
                seconds: 1_700_000_001,
                nanos: 7,
            },
            inode: 42,
            dev: 3,
        }
    }

    /// The parent's entry of a file backed up with metadata [`stat`].
    fn parent_entry() -> ManifestEntry {
        let content = FileContent {
            content_hash: "ab".repeat(32),
            chunks: Vec::new(),
            metadata: stat(),
        };
        manifest_entry(&walked(stat()), Some(content))
    }

    /// The entry of the same file walked again with `now`, its content read
    /// again and found the same.
    fn read_again(now: EntryMetadata) -> ManifestEntry {
        let content = FileContent {
            content_hash: "ab".repeat(32),
            chunks: Vec::new(),
            metadata: now,
        };
        manifest_entry(&walked(now), Some(content))
    }

    #[test]
    fn an_unchanged_file_is_carried_over_and_not_reported() {
        let parent = parent_entry();
        assert!(may_be_unchanged(&parent, &stat()));
        assert!(!catalog_view_changed(Some(&parent), &read_again(stat())));
    }

    #[test]
    fn a_chowned_file_is_read_again_and_reported() {
        let parent = parent_entry();
        let mut now = stat();
        now.uid = 0;
        now.ctime.seconds += 60;
        assert!(!may_be_unchanged(&parent, &now));
        assert!(catalog_view_changed(Some(&parent), &read_again(now)));
        assert_eq!(file_record(&read_again(now)).uid, 0);
    }

    #[test]
    fn a_status_change_alone_is_read_again_but_not_reported() {
        let parent = parent_entry();
        let mut now = stat();
        now.ctime.seconds += 60;
        assert!(!may_be_unchanged(&parent, &now));
        assert!(!catalog_view_changed(Some(&parent), &read_again(now)));
    }

    #[test]
    fn a_new_entry_is_reported() {
        assert!(catalog_view_changed(None, &parent_entry()));
    }

    #[test]
    fn records_keep_the_permission_bits_and_split_the_mtime() {
        let record = file_record(&parent_entry());
        assert_eq!(record.kind, "regular");
        assert_eq!(record.mode, 0o644);
        assert_eq!(record.size_bytes, 12);
        let mtime = record.mtime.expect("always set");
        assert_eq!((mtime.seconds, mtime.nanos), (1_700_000_000, 5));
        assert_eq!(record.content_hash, "ab".repeat(32));
    }
}
