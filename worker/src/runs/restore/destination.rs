//! The restore's side of the filesystem: every entry is created beneath the
//! destination's directory descriptor without following a symlink in any
//! component ([`crate::paths::beneath`]), files are written under a
//! temporary name and renamed into place beneath the same directory, and
//! modes and owners are set only on what this restore created (or anywhere
//! under an in-place grant), with the special bits and owners only where
//! the grant allows them.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use coffer_format::{FileAttributes, PERMISSION_BITS};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::paths::beneath::{self, split_parent};
use crate::paths::grant::AllowedPath;
use crate::paths::{join_relative, relative_to};

/// Mode of directories created on the way, before their recorded mode is
/// applied (and of the destination and parents that are not in the
/// snapshot): as `mkdir -p`, the umask applies.
const NEW_DIRECTORY_MODE: u32 = 0o777;
/// Mode of a temporary file until its recorded mode is applied.
const TEMP_FILE_MODE: u32 = 0o600;
/// Setuid, setgid and sticky.
const SPECIAL_BITS: u32 = 0o7000;

/// The destination of one restore, open as a directory.
pub(super) struct Destination {
    root: OwnedFd,
    /// The destination's path, for messages.
    path: PathBuf,
    /// The destination directory was made by this restore.
    created_root: bool,
    skip: Vec<Vec<u8>>,
    in_place: bool,
    set_owners: bool,
    mode_mask: u32,
}

/// What is at a name in the destination already.
pub(super) enum Existing {
    /// Nothing.
    Nothing,
    /// A directory.
    Directory,
    /// A regular file modified at this time (nanoseconds since the epoch).
    File { mtime_ns: i64 },
    /// Something else (a symlink, a device, ...), replaced by a restore.
    Other,
}

impl Destination {
    /// Opens (creating it beneath `access.anchor` if needed) the
    /// destination. Without `access` (a trusted in-process caller) the
    /// destination is resolved beneath its parent and everything is restored
    /// as recorded.
    pub(super) fn open(given: &Path, access: Option<&AllowedPath>) -> io::Result<Self> {
        // A relative destination (only from in-process callers; assignments
        // are normalised) is taken from the working directory.
        let destination = &std::path::absolute(given)?;
        let anchor = access
            .map(|a| a.anchor.clone())
            .or_else(|| destination.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| destination.to_path_buf());
        let rel = relative_to(destination, &anchor).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination outside its anchor",
            )
        })?;
        if !anchor.exists() {
            std::fs::create_dir_all(&anchor)?;
        }
        let anchor_fd = rustix::fs::open(
            &anchor,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let (root, created_root) = beneath::create_dirs(
            anchor_fd.as_fd(),
            &rel,
            Mode::from_raw_mode(NEW_DIRECTORY_MODE),
        )?;
        let is_root = rustix::process::geteuid().is_root();
        let (in_place, owners, special) = access.map_or((true, true, true), |a| {
            (a.in_place, a.restore_ownership, a.restore_special_bits)
        });
        Ok(Destination {
            root,
            path: destination.to_path_buf(),
            created_root,
            skip: access.map(|a| a.skip.clone()).unwrap_or_default(),
            in_place,
            set_owners: is_root && owners,
            mode_mask: if special {
                PERMISSION_BITS
            } else {
                PERMISSION_BITS & !SPECIAL_BITS
            },
        })
    }

    /// The absolute path of `rel`, for messages.
    pub(super) fn display(&self, rel: &[u8]) -> PathBuf {
        join_relative(&self.path, rel)
    }

    /// Whether `rel` is inside a protected path the restore must not write.
    pub(super) fn is_protected(&self, rel: &[u8]) -> bool {
        self.skip.iter().any(|skip| {
            rel == skip.as_slice()
                || (rel.starts_with(skip) && rel.get(skip.len()) == Some(&b'/'))
                || skip.is_empty()
        })
    }

    /// Creates directory `rel` (and missing parents); returns whether this
    /// call created it, which decides whether its metadata may be set.
    pub(super) fn create_directory(&self, rel: &[u8]) -> io::Result<bool> {
        if rel.is_empty() {
            return Ok(self.created_root);
        }
        let (_, created) = beneath::create_dirs(
            self.root.as_fd(),
            rel,
            Mode::from_raw_mode(NEW_DIRECTORY_MODE),
        )?;
        Ok(created)
    }

    fn parent_of(&self, rel: &[u8]) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (parent, name) = split_parent(rel);
        let (fd, _) = beneath::create_dirs(
            self.root.as_fd(),
            parent,
            Mode::from_raw_mode(NEW_DIRECTORY_MODE),
        )?;
        Ok((fd, name.to_vec()))
    }

    /// What is at `rel` now (its last component not followed).
    pub(super) fn existing(&self, rel: &[u8]) -> io::Result<Existing> {
        let (parent, name) = self.parent_of(rel)?;
        let stat = match rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(Existing::Nothing),
            Err(errno) => return Err(errno.into()),
        };
        Ok(match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Existing::Directory,
            FileType::RegularFile => Existing::File {
                mtime_ns: stat.st_mtime * 1_000_000_000
                    + i64::try_from(stat.st_mtime_nsec).unwrap_or(0),
            },
            _ => Existing::Other,
        })
    }

    /// Replaces whatever non-directory is at `rel` with a symlink to `link`.
    pub(super) fn symlink(&self, rel: &[u8], link: &[u8]) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        match rustix::fs::unlinkat(&parent, name.as_slice(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(errno) => return Err(errno.into()),
        }
        Ok(rustix::fs::symlinkat(link, &parent, name.as_slice())?)
    }

    /// Creates the empty temporary file for `rel` (replacing one a previous
    /// attempt of the same run left); it is never a link followed.
    pub(super) fn create_temp(&self, rel: &[u8], suffix: &str) -> io::Result<()> {
        let (parent, name) = self.parent_of(rel)?;
        let temp = temp_name(&name, suffix);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(TEMP_FILE_MODE);
        match rustix::fs::openat(&parent, temp.as_slice(), flags, mode) {
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::unlinkat(&parent, temp.as_slice(), AtFlags::empty())?;
                rustix::fs::openat(&parent, temp.as_slice(), flags, mode)?;
                Ok(())
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Opens the temporary file of `rel` for writing.
    pub(super) fn open_temp(&self, rel: &[u8], suffix: &str) -> io::Result<File> {
        let fd = beneath::open(
            self.root.as_fd(),
            &temp_path(rel, suffix),
            OFlags::WRONLY,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Removes the temporary file of `rel`, if any.
    pub(super) fn remove_temp(&self, rel: &[u8], suffix: &str) {
        if let Ok((parent, name)) = self.parent_of(rel) {
            let _ = rustix::fs::unlinkat(
                &parent,
                temp_name(&name, suffix).as_slice(),
                AtFlags::empty(),
            );
        }
    }

    /// Sizes and stamps the temporary file of `rel` and renames it over
    /// `rel` beneath the same directory (an existing file or link there is
    /// replaced, never written through).
    pub(super) fn finish_file(
        &self,
        rel: &[u8],
        suffix: &str,
        attributes: &FileAttributes,
    ) -> io::Result<()> {
        let file = self.open_temp(rel, suffix)?;
        file.set_len(attributes.size)?;
        self.apply_metadata(file.as_fd(), attributes)?;
        drop(file);
        let (parent, name) = self.parent_of(rel)?;
        rustix::fs::renameat(
            &parent,
            temp_name(&name, suffix).as_slice(),
            &parent,
            name.as_slice(),
        )?;
        Ok(())
    }

    /// Sets a restored directory's metadata, if this restore created it or
    /// the grant is in-place; `Ok(false)` when it was left alone.
    pub(super) fn finish_directory(
        &self,
        rel: &[u8],
        created: bool,
        attributes: &FileAttributes,
    ) -> io::Result<bool> {
        if !created && !self.in_place {
            return Ok(false);
        }
        let fd = beneath::open_dir(self.root.as_fd(), rel)?;
        self.apply_metadata(fd.as_fd(), attributes)?;
        Ok(true)
    }

    /// Owner (when allowed and running as root), mode (special bits only
    /// when allowed) and modification time, all through the descriptor.
    fn apply_metadata(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        attributes: &FileAttributes,
    ) -> io::Result<()> {
        if self.set_owners {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(attributes.uid)),
                Some(rustix::fs::Gid::from_raw(attributes.gid)),
            )?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(attributes.mode & self.mode_mask))?;
        let mtime = Timespec {
            tv_sec: attributes.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: attributes.mtime_ns.rem_euclid(1_000_000_000),
        };
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: mtime,
        };
        Ok(rustix::fs::futimens(fd, &times)?)
    }
}

/// `.name<suffix>`, the temporary name of `name`.
fn temp_name(name: &[u8], suffix: &str) -> Vec<u8> {
    let mut temp = Vec::with_capacity(name.len() + suffix.len() + 1);
    temp.push(b'.');
    temp.extend_from_slice(name);
    temp.extend_from_slice(suffix.as_bytes());
    temp
}

/// The temporary file's path relative to the destination.
fn temp_path(rel: &[u8], suffix: &str) -> Vec<u8> {
    let (parent, name) = split_parent(rel);
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(&temp_name(name, suffix));
    path
}

/// `rel` as text for messages.
pub(super) fn lossy(rel: &[u8]) -> std::borrow::Cow<'_, str> {
    OsStr::from_bytes(rel).to_string_lossy()
}
