//! What a version of a file records about it, and when two records describe
//! different versions.
//!
//! The worker writes these attributes into manifests and reports them to the
//! control plane; the catalog stores them as a version and decides from them
//! whether a path changed. Both sides use this one type and this one rule, so
//! they cannot disagree about what counts as a change.

use serde::{Deserialize, Serialize};

/// What an entry of a tree is (as manifests and the catalog name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file; the only kind with content and chunks.
    File,
    /// A directory; its children follow it in the manifest.
    Directory,
    /// A symbolic link; its target is stored, not followed.
    Symlink,
}

impl EntryKind {
    /// The name used in the manifest: `file`, `directory` or `symlink`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
        }
    }
}

/// The attributes of one file, directory or symlink that a version records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAttributes {
    /// What the entry is.
    pub kind: EntryKind,
    /// Content length in bytes; 0 for anything that is not a regular file.
    pub size: u64,
    /// Permission bits (setuid, setgid, sticky, rwx). A manifest keeps the
    /// whole `st_mode` here, file-type bits included; only the bits of
    /// [`PERMISSION_BITS`] count as the version's.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Keyed hash of the whole content (64 hex digits); regular files only.
    pub content_hash: Option<String>,
    /// The link target as raw bytes; symlinks only.
    pub symlink_target: Option<Vec<u8>>,
}

/// The permission bits a version keeps of `st_mode`.
pub const PERMISSION_BITS: u32 = 0o7777;

/// `st_mode` bits naming the file type.
const FILE_TYPE_BITS: u32 = 0o170_000;
/// Longest symlink target Linux stores (`PATH_MAX`, the NUL excluded).
const MAX_LINK_TARGET: usize = 4095;

/// Modification times are compared at this precision: the catalog stores
/// microseconds (PostgreSQL's `timestamptz`), so a finer difference could
/// never be recorded and must not count as a change.
const MTIME_PRECISION_NS: i64 = 1_000;

impl FileAttributes {
    /// Whether `self` and `other` are the same version of a path.
    ///
    /// Everything a restore puts back counts: kind, size, permission bits,
    /// owner, modification time (to the microsecond), content and link
    /// target. An owner change is a change on purpose: a `chown` must reach
    /// the catalog, or a restore would put back the old owner.
    ///
    /// Change time, inode and device are not attributes of the version; they
    /// only tell the worker whether it must read a file again.
    pub fn same_version(&self, other: &FileAttributes) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mode & PERMISSION_BITS == other.mode & PERMISSION_BITS
            && self.uid == other.uid
            && self.gid == other.gid
            && self.mtime_ns.div_euclid(MTIME_PRECISION_NS)
                == other.mtime_ns.div_euclid(MTIME_PRECISION_NS)
            && self.content_hash == other.content_hash
            && self.symlink_target == other.symlink_target
    }

    /// Checks that the attributes fit their kind: a content hash (64
    /// lowercase hex digits) only on a regular file, a link target exactly
    /// on a symlink. The error says what is wrong, for the caller to wrap.
    pub fn check(&self) -> Result<(), String> {
        self.check_mode()?;
        if self.kind != EntryKind::File && self.size != 0 {
            return Err(format!("{} entry with a size", self.kind.as_str()));
        }
        if let Some(target) = &self.symlink_target {
            if target.is_empty() || target.contains(&0) || target.len() > MAX_LINK_TARGET {
                return Err("symlink target empty, too long or with a NUL byte".to_owned());
            }
        }
        if self.kind != EntryKind::File && self.content_hash.is_some() {
            return Err(format!("{} entry with a content hash", self.kind.as_str()));
        }
        if let Some(hash) = &self.content_hash {
            let is_hex = hash.len() == 64
                && hash
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            if !is_hex {
                return Err(format!(
                    "content hash {hash:?} is not 64 lowercase hex digits"
                ));
            }
        }
        if (self.kind == EntryKind::Symlink) != self.symlink_target.is_some() {
            return Err("symlink target present exactly when the entry is a symlink".to_owned());
        }
        Ok(())
    }
}

impl FileAttributes {
    /// A mode holds nothing above `st_mode`'s 16 bits, and its file-type
    /// bits (when recorded) agree with the kind.
    fn check_mode(&self) -> Result<(), String> {
        if self.mode > 0o177_777 {
            return Err(format!("mode {:o} has bits above st_mode's", self.mode));
        }
        let file_type = self.mode & FILE_TYPE_BITS;
        let expected = match self.kind {
            EntryKind::File => 0o100_000,
            EntryKind::Directory => 0o040_000,
            EntryKind::Symlink => 0o120_000,
        };
        if file_type != 0 && file_type != expected {
            return Err(format!(
                "{} entry with the file-type bits {file_type:o} of another kind",
                self.kind.as_str()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileAttributes {
        FileAttributes {
            kind: EntryKind::File,
            size: 12,
            mode: 0o100644,
            uid: 1000,
            gid: 1000,
            mtime_ns: 1_700_000_000_123_456_789,
            content_hash: Some("ab".repeat(32)),
            symlink_target: None,
        }
    }

    #[test]
    fn each_recorded_attribute_is_a_change() {
        type Edit = fn(&mut FileAttributes);
        let edits: [(&str, Edit); 8] = [
            ("kind", |a| a.kind = EntryKind::Directory),
            ("size", |a| a.size += 1),
            ("mode", |a| a.mode = 0o100600),
            ("uid", |a| a.uid = 0),
            ("gid", |a| a.gid = 0),
            ("mtime", |a| a.mtime_ns += 1_000),
            ("content", |a| a.content_hash = Some("cd".repeat(32))),
            ("link target", |a| a.symlink_target = Some(b"x".to_vec())),
        ];
        for (what, edit) in edits {
            let mut changed = file();
            edit(&mut changed);
            assert!(!file().same_version(&changed), "{what} change not seen");
            assert!(
                !changed.same_version(&file()),
                "{what} change not symmetric"
            );
        }
    }

    #[test]
    fn what_a_version_cannot_record_is_not_a_change() {
        let mut other = file();
        // File-type bits above the permission bits, and sub-microsecond time.
        other.mode = 0o644;
        other.mtime_ns += 210;
        assert!(file().same_version(&other));
    }

    #[test]
    fn attributes_must_fit_their_kind() {
        assert_eq!(file().check(), Ok(()));
        let mut directory = file();
        directory.kind = EntryKind::Directory;
        assert!(directory.check().is_err(), "directory with a content hash");
        let mut short_hash = file();
        short_hash.content_hash = Some("ab".to_owned());
        assert!(short_hash.check().is_err());
        let mut link = file();
        link.kind = EntryKind::Symlink;
        link.content_hash = None;
        link.size = 0;
        link.mode = 0o120777;
        assert!(link.check().is_err(), "symlink without a target");
        link.symlink_target = Some(b"target".to_vec());
        assert_eq!(link.check(), Ok(()));
        for bad in [&b""[..], b"a\0b", &[b'x'; 4096]] {
            link.symlink_target = Some(bad.to_vec());
            assert!(link.check().is_err(), "link target {bad:?}");
        }
    }

    #[test]
    fn modes_and_sizes_must_fit_the_kind() {
        let mut wrong_type = file();
        wrong_type.mode = 0o040755;
        assert!(
            wrong_type.check().is_err(),
            "a file with a directory's type bits"
        );
        let mut too_wide = file();
        too_wide.mode = 0o1_000_644;
        assert!(too_wide.check().is_err(), "bits above st_mode");
        let mut bare = file();
        bare.mode = 0o4755;
        assert_eq!(bare.check(), Ok(()), "type bits may be left out");
        let mut directory = file();
        directory.kind = EntryKind::Directory;
        directory.content_hash = None;
        directory.mode = 0o040755;
        assert!(directory.check().is_err(), "a directory with a size");
        directory.size = 0;
        assert_eq!(directory.check(), Ok(()));
    }

    #[test]
    fn times_before_the_epoch_round_the_same_way() {
        let mut a = file();
        let mut b = file();
        a.mtime_ns = -1;
        b.mtime_ns = -999;
        assert!(a.same_version(&b));
        b.mtime_ns = -1_001;
        assert!(!a.same_version(&b));
    }
}
