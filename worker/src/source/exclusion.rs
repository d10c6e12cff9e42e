//! What a walk leaves out, and why: the job's exclude patterns, ignore files
//! (`.gitignore` syntax, read with the `ignore` crate's matcher), cache
//! directories (`CACHEDIR.TAG`), marker files, a size limit per file and
//! other file systems.
//!
//! Ignore files, tags and markers are read beneath the walk's root like
//! every entry: opened by name relative to their directory's descriptor,
//! never through a symlink, only when they are regular files, and at most
//! [`MAX_IGNORE_FILE_BYTES`] of them. A rule can only leave paths out of the
//! backup; nothing in a tenant's tree makes the walk read anything it would
//! not read without it.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;
use rustix::fs::{Mode, OFlags};

use super::SourceError;
use crate::paths::beneath;

/// The ignore file read by default.
pub const DEFAULT_IGNORE_FILE: &str = ".cofferignore";
/// The cache directory tag's name (<https://bford.info/cachedir/>).
pub const CACHE_TAG: &str = "CACHEDIR.TAG";
/// What a cache directory tag starts with.
const CACHE_TAG_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
/// Longest ignore file read; the rest is ignored (and reported).
pub const MAX_IGNORE_FILE_BYTES: u64 = 1 << 20;

/// Why a path was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExclusionReason {
    /// A pattern of the job's `exclude` list.
    ExcludePattern,
    /// A line of an ignore file.
    IgnoreFile,
    /// Inside a directory tagged as a cache.
    CacheTag,
    /// Inside a directory holding a marker file.
    MarkerFile,
    /// A regular file above the size limit.
    SizeLimit,
    /// A directory on another file system, kept empty.
    OtherFileSystem,
}

/// One path left out of the backup, with the rule that left it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// Path relative to the root as raw bytes.
    pub path: Vec<u8>,
    /// Why.
    pub reason: ExclusionReason,
    /// The rule as written (a pattern, a marker's name, a size).
    pub rule: String,
    /// Where the rule comes from, e.g. `sub/.cofferignore:3`.
    pub source: String,
    /// Size of an excluded regular file, else 0.
    pub size: u64,
}

/// The exclusion settings of a walk.
#[derive(Debug, Clone, Default)]
pub struct ExclusionOptions {
    /// Glob patterns of paths (relative to the root) to skip, e.g. `**/*.tmp`.
    /// `*` and `?` do not match `/`; `**` matches any number of directories.
    pub exclude: Vec<String>,
    /// Name of the ignore files to read; `None`: none are read.
    pub ignore_file: Option<String>,
    /// Skip the contents of directories holding a valid `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// File names marking their directory's contents excluded.
    pub markers: Vec<String>,
    /// Skip regular files larger than this many bytes.
    pub max_file_size: Option<u64>,
}

/// The settings compiled for a walk.
#[derive(Debug)]
pub(super) struct Rules {
    patterns: Vec<String>,
    excludes: GlobSet,
    ignore_file: Option<Vec<u8>>,
    exclude_caches: bool,
    markers: Vec<Vec<u8>>,
    max_file_size: Option<u64>,
}

/// The ignore files in effect for a directory's entries, deepest first.
#[derive(Debug, Clone, Default)]
pub(super) struct IgnoreChain(Option<Arc<IgnoreNode>>);

#[derive(Debug)]
struct IgnoreNode {
    /// The directory holding the ignore file, relative to the root.
    dir: Vec<u8>,
    matcher: Gitignore,
    parent: IgnoreChain,
}

/// A directory whose contents are left out, but for one file.
pub(super) struct ExcludedContents {
    /// The tag or marker file, which is kept.
    pub(super) kept: Vec<u8>,
    reason: ExclusionReason,
    rule: String,
    source: String,
}

impl ExcludedContents {
    /// The exclusion of `child`, one of the directory's entries.
    pub(super) fn of(&self, child: Vec<u8>) -> Exclusion {
        Exclusion {
            path: child,
            reason: self.reason,
            rule: self.rule.clone(),
            source: self.source.clone(),
            size: 0,
        }
    }
}

impl Rules {
    /// Compiles `options`, refusing an invalid exclude pattern.
    pub(super) fn new(options: &ExclusionOptions) -> Result<Self, SourceError> {
        Ok(Rules {
            patterns: options.exclude.clone(),
            excludes: build_excludes(&options.exclude)?,
            ignore_file: options
                .ignore_file
                .as_ref()
                .map(|name| name.as_bytes().to_vec()),
            exclude_caches: options.exclude_caches,
            markers: options
                .markers
                .iter()
                .map(|m| m.as_bytes().to_vec())
                .collect(),
            max_file_size: options.max_file_size,
        })
    }

    /// The first exclude pattern matching `rel`, checked before the entry
    /// is looked at (patterns do not depend on its type).
    pub(super) fn pattern_exclusion(&self, rel: &[u8]) -> Option<Exclusion> {
        if self.excludes.is_empty() {
            return None;
        }
        let index = *self
            .excludes
            .matches(Path::new(OsStr::from_bytes(rel)))
            .first()?;
        Some(Exclusion {
            path: rel.to_vec(),
            reason: ExclusionReason::ExcludePattern,
            rule: self.patterns.get(index).cloned().unwrap_or_default(),
            source: format!("options.exclude[{index}]"),
            size: 0,
        })
    }

    /// Whether the ignore files or the size limit leave out the entry
    /// `rel`, once its type and size are known.
    pub(super) fn entry_exclusion(
        &self,
        rel: &[u8],
        is_dir: bool,
        regular_size: Option<u64>,
        chain: &IgnoreChain,
    ) -> Option<Exclusion> {
        if let Some(exclusion) = chain.exclusion(rel, is_dir) {
            return Some(exclusion);
        }
        let (limit, size) = self.max_file_size.zip(regular_size)?;
        (size > limit).then(|| Exclusion {
            path: rel.to_vec(),
            reason: ExclusionReason::SizeLimit,
            rule: format!("{limit} bytes"),
            source: "options.max_file_size_bytes".into(),
            size,
        })
    }

    /// Whether the directory `rel` (open as `dir`, holding `names`) is a
    /// cache or holds a marker, so that its contents but the tag or marker
    /// are left out.
    pub(super) fn contents_exclusion(
        &self,
        dir: BorrowedFd<'_>,
        rel: &[u8],
        names: &[Vec<u8>],
    ) -> Option<ExcludedContents> {
        if let Some(marker) = self.markers.iter().find(|m| names.contains(m)) {
            return Some(ExcludedContents {
                kept: marker.clone(),
                reason: ExclusionReason::MarkerFile,
                rule: String::from_utf8_lossy(marker).into_owned(),
                source: lossy(&super::join_rel(rel, marker)),
            });
        }
        let tag = CACHE_TAG.as_bytes();
        if self.exclude_caches && names.iter().any(|n| n == tag) && is_cache_tag(dir, tag) {
            return Some(ExcludedContents {
                kept: tag.to_vec(),
                reason: ExclusionReason::CacheTag,
                rule: CACHE_TAG.into(),
                source: lossy(&super::join_rel(rel, tag)),
            });
        }
        None
    }

    /// The chain for the entries of directory `rel` (open as `dir`, holding
    /// `names`): `parent` with the directory's own ignore file added, if it
    /// has one. Lines that cannot be used are returned as errors; the rest
    /// still apply.
    pub(super) fn enter(
        &self,
        dir: BorrowedFd<'_>,
        rel: &[u8],
        names: &[Vec<u8>],
        parent: &IgnoreChain,
    ) -> (IgnoreChain, Vec<(Vec<u8>, String)>) {
        let Some(name) = self.ignore_file.as_ref().filter(|n| names.contains(n)) else {
            return (parent.clone(), Vec::new());
        };
        let file_rel = super::join_rel(rel, name);
        let text = match read_regular(dir, name, MAX_IGNORE_FILE_BYTES + 1) {
            Ok(Some(text)) => text,
            Ok(None) => {
                let message = "ignore file is not a regular file; not used".to_string();
                return (parent.clone(), vec![(file_rel, message)]);
            }
            Err(e) => {
                let message = format!("cannot read ignore file: {e}");
                return (parent.clone(), vec![(file_rel, message)]);
            }
        };
        let mut errors = Vec::new();
        if text.len() as u64 > MAX_IGNORE_FILE_BYTES {
            errors.push((
                file_rel.clone(),
                format!(
                    "ignore file longer than {MAX_IGNORE_FILE_BYTES} bytes; the rest is not used"
                ),
            ));
        }
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_IGNORE_FILE_BYTES as usize)]);
        // Paths are matched relative to the ignore file's directory, so the
        // builder's root is `.` (nothing stripped).
        let mut builder = GitignoreBuilder::new(".");
        let label = lossy(&file_rel);
        for (index, line) in text.lines().enumerate() {
            let from = PathBuf::from(format!("{label}:{}", index + 1));
            if let Err(e) = builder.add_line(Some(from), line) {
                errors.push((file_rel.clone(), format!("line {}: {e}", index + 1)));
            }
        }
        match builder.build() {
            Ok(matcher) if matcher.is_empty() => (parent.clone(), errors),
            Ok(matcher) => {
                let node = IgnoreNode {
                    dir: rel.to_vec(),
                    matcher,
                    parent: parent.clone(),
                };
                (IgnoreChain(Some(Arc::new(node))), errors)
            }
            Err(e) => {
                errors.push((file_rel, format!("ignore file not used: {e}")));
                (parent.clone(), errors)
            }
        }
    }
}

impl IgnoreChain {
    /// As in git, the deepest ignore file with a matching line decides, and
    /// within one file the last matching line.
    fn exclusion(&self, rel: &[u8], is_dir: bool) -> Option<Exclusion> {
        let mut current = self.0.as_ref();
        while let Some(node) = current {
            let inside = relative_to_dir(rel, &node.dir)?;
            match node
                .matcher
                .matched(Path::new(OsStr::from_bytes(inside)), is_dir)
            {
                Match::Ignore(glob) => {
                    return Some(Exclusion {
                        path: rel.to_vec(),
                        reason: ExclusionReason::IgnoreFile,
                        rule: glob.original().to_owned(),
                        source: glob
                            .from()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        size: 0,
                    })
                }
                Match::Whitelist(_) => return None,
                Match::None => current = node.parent.0.as_ref(),
            }
        }
        None
    }
}

/// `rel` relative to the directory `dir` (both relative to the root).
fn relative_to_dir<'a>(rel: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    if dir.is_empty() {
        return Some(rel);
    }
    rel.strip_prefix(dir)?.strip_prefix(b"/")
}

/// Whether `name` in `dir` is a regular file starting with the cache tag's
/// signature.
fn is_cache_tag(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    let length = CACHE_TAG_SIGNATURE.len() as u64;
    matches!(read_regular(dir, name, length), Ok(Some(head)) if head == CACHE_TAG_SIGNATURE)
}

/// Up to `limit` bytes of the entry `name` of `dir`, if it is a regular
/// file; never through a symlink, and without blocking on a FIFO.
fn read_regular(dir: BorrowedFd<'_>, name: &[u8], limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    // Looked at before it is opened for reading: opening a device can have
    // effects of its own.
    let path = File::from(beneath::open(
        dir.as_fd(),
        name,
        OFlags::PATH,
        Mode::empty(),
    )?);
    if !path.metadata()?.is_file() {
        return Ok(None);
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let file = File::from(beneath::open(dir.as_fd(), name, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut content = Vec::new();
    file.take(limit).read_to_end(&mut content)?;
    Ok(Some(content))
}

fn build_excludes(patterns: &[String]) -> Result<GlobSet, SourceError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| SourceError::InvalidExclude {
                pattern: pattern.clone(),
                message: e.kind().to_string(),
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| SourceError::InvalidExclude {
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
