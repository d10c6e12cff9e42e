//! Opening and creating entries beneath a directory without ever following
//! a symlink, in any component.
//!
//! Every lookup goes through `openat2(2)` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the kernel resolves the
//! whole relative path in one call and refuses (`ELOOP`/`EXDEV`) a symlink
//! or a `..` anywhere in it, so a directory swapped for a symlink between
//! our check and our use is refused rather than followed. This is `rustix`
//! (already a dependency) rather than `cap-std`: the restore needs
//! `mkdirat`, `symlinkat`, `renameat`, `fchownat`-style calls on the same
//! descriptors, which `rustix` offers directly, and `cap-std` would be a
//! second abstraction over the same system calls.
//!
//! Kernels before 5.6 lack `openat2` (`ENOSYS`). There the same rule is kept
//! by walking the path one component at a time, each opened with `openat`
//! and `O_NOFOLLOW` (intermediate components also `O_DIRECTORY`) from the
//! previous one's descriptor; relative paths are checked first to hold no
//! `..`, so the walk cannot leave the directory either. It costs one system
//! call per component instead of one per path.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::check_relative;

/// Set once `openat2` turned out to be missing, so later lookups go
/// straight to the component walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// `openat2` fails with `EAGAIN` when a rename raced the lookup; it is retried
/// this many times.
const RACE_RETRIES: usize = 8;

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Opens `rel` (relative, `/`-separated, no `.`/`..`/empty components; empty
/// means `dir` itself) beneath `dir` with `flags`, never following a
/// symlink. `O_NOFOLLOW` and `O_CLOEXEC` are always added, so with `O_PATH`
/// a trailing symlink is opened as the link itself, and otherwise refused.
pub fn open(dir: BorrowedFd<'_>, rel: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if rel.is_empty() {
        return Ok(rustix::fs::openat(dir, c".", flags, mode)?);
    }
    check_relative(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let mut attempts = 0;
        loop {
            match rustix::fs::openat2(dir, rel, flags, mode, resolve_flags()) {
                Ok(fd) => return Ok(fd),
                Err(rustix::io::Errno::AGAIN) if attempts < RACE_RETRIES => attempts += 1,
                Err(rustix::io::Errno::NOSYS) => {
                    tracing::warn!(
                        "openat2 is not available; resolving paths one component at a time"
                    );
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }
    open_by_components(dir, rel, flags, mode)
}

/// The fallback for kernels without `openat2`: one `openat` per component.
fn open_by_components(
    dir: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let mut components = rel.split(|byte| *byte == b'/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(component) = components.next() {
        let at = current.as_ref().map_or(dir, AsFd::as_fd);
        if components.peek().is_none() {
            return Ok(rustix::fs::openat(at, component, flags, mode)?);
        }
        let next = rustix::fs::openat(
            at,
            component,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        current = Some(next);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

/// Opens directory `rel` beneath `dir` for reading and as the base of
/// further `*at` calls.
pub fn open_dir(dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open(dir, rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// Opens directory `rel` beneath `dir`, creating missing components with
/// `mode` (before the umask) on the way; returns it and whether its last
/// component was created by this call. An existing symlink or
/// non-directory in the way is an error, never followed or replaced.
pub fn create_dirs(dir: BorrowedFd<'_>, rel: &[u8], mode: Mode) -> io::Result<(OwnedFd, bool)> {
    match open_dir(dir, rel) {
        Ok(fd) => return Ok((fd, false)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut current = open_dir(dir, b"")?;
    let mut created = false;
    for component in rel.split(|byte| *byte == b'/') {
        created = match rustix::fs::mkdirat(&current, component, mode) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(errno) => return Err(errno.into()),
        };
        current = open_dir(current.as_fd(), component)?;
    }
    Ok((current, created))
}

/// Splits a relative path into its parent (empty for a top-level name) and
/// its last component.
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|byte| *byte == b'/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => (&[], rel),
    }
}

/// Whether an error means "a symlink (or something not a directory) is in
/// the way", as `openat2` and `O_NOFOLLOW` report it.
pub fn is_symlink_refusal(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn root(dir: &std::path::Path) -> OwnedFd {
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open root")
    }

    #[test]
    fn symlinks_in_any_component_are_refused() {
        let base = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        fs::write(outside.path().join("secret"), b"x").expect("write");
        fs::create_dir(base.path().join("real")).expect("mkdir");
        fs::write(base.path().join("real/file"), b"y").expect("write");
        symlink(outside.path(), base.path().join("link")).expect("symlink");
        symlink(outside.path().join("secret"), base.path().join("real/last")).expect("symlink");
        let fd = root(base.path());
        for fallback in [false, true] {
            NO_OPENAT2.store(fallback, Ordering::Relaxed);
            assert!(open(fd.as_fd(), b"real/file", OFlags::RDONLY, Mode::empty()).is_ok());
            let through = open(fd.as_fd(), b"link/secret", OFlags::RDONLY, Mode::empty())
                .expect_err("through a symlinked directory");
            assert!(is_symlink_refusal(&through), "{through}");
            let last = open(fd.as_fd(), b"real/last", OFlags::RDONLY, Mode::empty())
                .expect_err("a symlink as the last component");
            assert!(is_symlink_refusal(&last), "{last}");
            assert!(open(fd.as_fd(), b"../x", OFlags::RDONLY, Mode::empty()).is_err());
            let link = open(fd.as_fd(), b"real/last", OFlags::PATH, Mode::empty())
                .expect("O_PATH opens the link itself");
            let stat = rustix::fs::fstat(&link).expect("fstat");
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(stat.st_mode),
                rustix::fs::FileType::Symlink
            );
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }

    #[test]
    fn create_dirs_makes_what_is_missing_and_never_follows_a_link() {
        let base = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        let fd = root(base.path());
        let (_, created) =
            create_dirs(fd.as_fd(), b"a/b/c", Mode::from_raw_mode(0o755)).expect("create");
        assert!(created);
        assert!(base.path().join("a/b/c").is_dir());
        let (_, again) =
            create_dirs(fd.as_fd(), b"a/b/c", Mode::from_raw_mode(0o755)).expect("open");
        assert!(!again);
        symlink(outside.path(), base.path().join("a/evil")).expect("symlink");
        let error = create_dirs(fd.as_fd(), b"a/evil/x", Mode::from_raw_mode(0o755))
            .expect_err("through a symlink");
        assert!(is_symlink_refusal(&error), "{error}");
        assert_eq!(fs::read_dir(outside.path()).expect("list").count(), 0);
    }

    #[test]
    fn parents_split_at_the_last_slash() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
