//! Restoring (part of) a snapshot to a path.
//!
//! The manifest is read once, in order, so a directory is created before
//! anything in it; symlinks are made at once, and every file is created
//! under a temporary name next to its target and planned: which blobs of
//! which packs it needs, at which offsets. Then each pack is fetched once
//! (the byte range holding the needed blobs), several at a time, and its
//! blobs are decoded, checked against their keyed hashes and written to
//! every file that uses them on blocking threads. A file is renamed into
//! place once all its chunks are written, so an interrupted restore never
//! leaves a half-written file under the real name, and damaged data is
//! reported, never restored. Runs of zeros are not written (sparse files stay
//! sparse). Modes, owners (as root), mtimes and symlinks are restored;
//! directory times last.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_format::layout;
use coffer_format::{
    decode_blob, ChunkId, ChunkLocation, EntryKind, FileAttributes, ManifestEntry, PackId,
    PERMISSION_BITS,
};
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run_attempt;
use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::repository::{IndexUse, Repository};
use crate::store::Store;

/// Packs fetched and written at once.
const PACK_PARALLELISM: usize = 4;
/// Blobs further apart than this in one pack are fetched with separate
/// range requests rather than one spanning the gap.
const MAX_RANGE_GAP: u64 = 4 << 20;

/// Everything one restore attempt needs.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The restore run.
    pub run_id: Uuid,
    /// Its lease token.
    pub lease_token: i64,
    /// The repository's store.
    pub store: Arc<Store>,
    /// Key of the snapshot's manifest.
    pub manifest_key: String,
    /// Relative paths to restore (a directory restores its subtree); empty
    /// restores everything.
    pub paths: Vec<String>,
    /// Where the snapshot's root goes.
    pub destination: PathBuf,
    /// Replace files at the destination that are newer than the snapshot's.
    pub overwrite_newer: bool,
}

/// A finished restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSummary {
    /// Files written.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Human-readable summary.
    pub details: String,
    /// Batches sent.
    pub batch_count: i64,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
}

/// Runs one restore attempt.
pub async fn run_restore<R: Reporter>(
    plan: RestorePlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<RestoreSummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

/// Whether `path` is selected by `paths` (itself or below one of them).
fn selected(path: &[u8], paths: &[String]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            let p = p.trim_matches('/').as_bytes();
            p.is_empty() || path == p || (path.starts_with(p) && path.get(p.len()) == Some(&b'/'))
        })
}

fn destination_of(root: &Path, path: &[u8]) -> PathBuf {
    if path.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(path))
    }
}

/// A file being restored.
struct FileJob {
    entry: ManifestEntry,
    temp: PathBuf,
    target: PathBuf,
    /// Chunk uses not written yet.
    remaining: usize,
    /// Why it cannot be restored, once something went wrong.
    failure: Option<String>,
}

/// One use of a blob: written to file `file` at `file_offset`.
#[derive(Clone, Copy)]
struct BlobUse {
    chunk: ChunkId,
    location: ChunkLocation,
    file: usize,
    file_offset: u64,
}

/// What writing one pack's blobs did.
struct PackOutcome {
    /// Per file: uses written.
    written: Vec<(usize, usize)>,
    /// Per file: why it failed.
    failed: Vec<(usize, String)>,
    bytes: u64,
}

#[allow(clippy::too_many_lines)]
async fn execute<R: Reporter>(
    plan: &RestorePlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, RunFailure> {
    let repository = Repository::open(Arc::clone(&plan.store), cancel).await?;
    let mut manifest = repository.read_manifest(&plan.manifest_key, cancel).await?;
    let index = repository.load_index(IndexUse::Read, cancel).await?;
    let is_root = nix_is_root();

    let mut directories: Vec<ManifestEntry> = Vec::new();
    let mut jobs: Vec<FileJob> = Vec::new();
    let mut by_pack: HashMap<PackId, Vec<BlobUse>> = HashMap::new();
    let mut matched = 0u64;
    let mut kept = 0u64;
    let temp_suffix = format!(".coffer-restore-{}", plan.run_id);
    while let Some(mut entry) = manifest.next_entry().map_err(|e| {
        RunFailure::permanent(format!("reading manifest {}: {e}", plan.manifest_key))
    })? {
        if cancel.is_cancelled() {
            return Err(RunFailure::cancelled());
        }
        if !selected(&entry.path, &plan.paths) {
            continue;
        }
        matched += 1;
        batcher.progress.files_seen += 1;
        let target = destination_of(&plan.destination, &entry.path);
        match entry.kind() {
            EntryKind::Directory => match fs::create_dir_all(&target) {
                Ok(()) => directories.push(entry),
                Err(e) => {
                    batcher
                        .error(
                            &entry.path,
                            format!("cannot create directory {}: {e}", target.display()),
                        )
                        .await?;
                }
            },
            EntryKind::Symlink => {
                if let Err(message) = restore_symlink(&entry.attributes, &target) {
                    batcher.error(&entry.path, message).await?;
                }
            }
            EntryKind::File => {
                batcher.progress.bytes_seen += to_i64(entry.attributes.size);
                match prepare_file(
                    &entry.attributes,
                    &target,
                    plan.overwrite_newer,
                    &temp_suffix,
                ) {
                    Ok(None) => {
                        kept += 1;
                        batcher.progress.files_done += 1;
                        batcher
                            .error(&entry.path, "kept: the file at the destination is newer than the snapshot's (set overwrite_newer to replace it)".into())
                            .await?;
                    }
                    Ok(Some(temp)) => {
                        let file = jobs.len();
                        let mut failure = None;
                        let mut offset = 0u64;
                        let chunks = std::mem::take(&mut entry.chunks);
                        for chunk in &chunks {
                            let Some(location) = index.get(chunk) else {
                                failure = Some(format!(
                                    "chunk {chunk} is not in the repository's index (missing data)"
                                ));
                                break;
                            };
                            by_pack.entry(location.pack_id).or_default().push(BlobUse {
                                chunk: *chunk,
                                location,
                                file,
                                file_offset: offset,
                            });
                            offset += u64::from(location.raw_length);
                        }
                        if failure.is_none() && offset != entry.attributes.size {
                            failure = Some(format!(
                                "the snapshot's chunks hold {offset} bytes but the file had {}",
                                entry.attributes.size
                            ));
                        }
                        jobs.push(FileJob {
                            remaining: chunks.len(),
                            entry,
                            temp,
                            target,
                            failure,
                        });
                    }
                    Err(message) => batcher.error(&entry.path, message).await?,
                }
            }
        }
        batcher.report_progress(false);
    }
    drop(index);

    // Files without chunks (empty) are done already; failed ones wait for
    // the end so that their temporary files are removed once.
    let mut files = 0u64;
    let mut bytes = 0u64;
    for job in jobs
        .iter_mut()
        .filter(|j| j.remaining == 0 && j.failure.is_none())
    {
        finish_file(job, is_root, batcher, &mut files).await?;
    }

    let jobs_paths: Arc<Vec<PathBuf>> = Arc::new(jobs.iter().map(|j| j.temp.clone()).collect());
    let mut packs = stream::iter(by_pack)
        .map(|(pack_id, uses)| {
            let repository = repository.clone();
            let paths = Arc::clone(&jobs_paths);
            let cancel = cancel.clone();
            async move { restore_pack(&repository, pack_id, uses, paths, &cancel).await }
        })
        .buffer_unordered(PACK_PARALLELISM);
    while let Some(outcome) = packs.next().await {
        if cancel.is_cancelled() {
            return Err(RunFailure::cancelled());
        }
        let outcome = outcome?;
        bytes += outcome.bytes;
        batcher.progress.bytes_done += to_i64(outcome.bytes);
        for (file, message) in outcome.failed {
            jobs[file].failure.get_or_insert(message);
        }
        for (file, count) in outcome.written {
            let job = &mut jobs[file];
            job.remaining = job.remaining.saturating_sub(count);
            if job.remaining == 0 && job.failure.is_none() {
                finish_file(job, is_root, batcher, &mut files).await?;
            }
        }
        batcher.report_progress(false);
    }
    drop(packs);
    for job in jobs
        .iter()
        .filter(|j| j.failure.is_some() || j.remaining > 0)
    {
        let _ = fs::remove_file(&job.temp);
        let message = job
            .failure
            .clone()
            .unwrap_or_else(|| "not every chunk could be written".into());
        batcher.progress.files_done += 1;
        batcher.error(&job.entry.path, message).await?;
    }

    // Deepest first, so that setting a directory's time is not undone by
    // restoring into it.
    for directory in directories.iter().rev() {
        let target = destination_of(&plan.destination, &directory.path);
        if let Err(message) = apply_metadata(&target, &directory.attributes, is_root) {
            batcher.error(&directory.path, message).await?;
        }
    }
    if matched == 0 && !plan.paths.is_empty() {
        return Err(RunFailure::permanent(format!(
            "none of the paths {:?} is in the snapshot",
            plan.paths
        )));
    }
    batcher.flush().await?;
    let failed = batcher.error_total - kept;
    if failed > 0 {
        return Err(RunFailure::permanent(format!(
            "{failed} entr{} could not be restored; see the run's errors",
            if failed == 1 { "y" } else { "ies" }
        )));
    }
    batcher.progress.current_path.clear();
    Ok(RestoreSummary {
        files,
        bytes,
        details: format!(
            "restored {files} files ({}) and {} directories to {}; {kept} newer files kept",
            human_bytes(bytes),
            directories.len(),
            plan.destination.display()
        ),
        batch_count: batcher.batch_count(),
        progress: batcher.progress_now(),
    })
}

/// Sizes, stamps and renames a fully written file into place.
async fn finish_file<R: Reporter>(
    job: &mut FileJob,
    is_root: bool,
    batcher: &mut Batcher<'_, R>,
    files: &mut u64,
) -> Result<(), RunFailure> {
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&job.temp)
            .map_err(|e| format!("cannot open {}: {e}", job.temp.display()))?;
        file.set_len(job.entry.attributes.size)
            .map_err(|e| format!("cannot size {}: {e}", job.temp.display()))?;
        drop(file);
        apply_metadata(&job.temp, &job.entry.attributes, is_root)?;
        fs::rename(&job.temp, &job.target)
            .map_err(|e| format!("cannot move into place {}: {e}", job.target.display()))
    })();
    batcher.progress.files_done += 1;
    match result {
        Ok(()) => *files += 1,
        Err(message) => {
            let _ = fs::remove_file(&job.temp);
            batcher.error(&job.entry.path, message).await?;
        }
    }
    // Marks it finished either way, so it is not reported again.
    job.remaining = 0;
    job.failure = None;
    Ok(())
}

/// Checks the destination and creates the temporary file; `Ok(None)` when
/// a newer file there is kept.
fn prepare_file(
    attributes: &FileAttributes,
    target: &Path,
    overwrite_newer: bool,
    temp_suffix: &str,
) -> Result<Option<PathBuf>, String> {
    if let Ok(existing) = fs::symlink_metadata(target) {
        if existing.is_dir() {
            return Err(format!("{} exists and is a directory", target.display()));
        }
        let existing_mtime = existing.mtime() * 1_000_000_000 + existing.mtime_nsec();
        if !overwrite_newer && existing.is_file() && existing_mtime > attributes.mtime_ns {
            return Ok(None);
        }
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let name = target
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let mut temp_name = b".".to_vec();
    temp_name.extend_from_slice(&name);
    temp_name.extend_from_slice(temp_suffix.as_bytes());
    let temp = parent.join(OsStr::from_bytes(&temp_name));
    File::create(&temp).map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    Ok(Some(temp))
}

/// Fetches the needed blobs of one pack (in ranges that skip large gaps),
/// checks them and writes each to every file that uses it.
async fn restore_pack(
    repository: &Repository,
    pack_id: PackId,
    mut uses: Vec<BlobUse>,
    paths: Arc<Vec<PathBuf>>,
    cancel: &CancellationToken,
) -> Result<PackOutcome, RunFailure> {
    uses.sort_by_key(|u| (u.location.offset, u.file, u.file_offset));
    let key = layout::pack_key(&pack_id);
    // Group the uses into ranges of nearby blobs.
    let mut ranges: Vec<(u64, u64, Vec<BlobUse>)> = Vec::new();
    for blob_use in uses {
        let start = u64::from(blob_use.location.offset);
        let end = start + u64::from(blob_use.location.length);
        match ranges.last_mut() {
            Some((_, range_end, members)) if start <= *range_end + MAX_RANGE_GAP => {
                *range_end = (*range_end).max(end);
                members.push(blob_use);
            }
            _ => ranges.push((start, end, vec![blob_use])),
        }
    }
    let mut outcome = PackOutcome {
        written: Vec::new(),
        failed: Vec::new(),
        bytes: 0,
    };
    for (start, end, members) in ranges {
        let data = match repository
            .store()
            .get_range(&key, start, end - start, cancel)
            .await
        {
            Ok(data) => data,
            Err(crate::store::StoreError::NotFound { .. }) => {
                for member in members {
                    outcome.failed.push((
                        member.file,
                        format!("pack {pack_id} holding chunk {} is missing", member.chunk),
                    ));
                }
                continue;
            }
            Err(other) => return Err(other.into()),
        };
        let hasher = repository.hasher().clone();
        let paths = Arc::clone(&paths);
        let part = tokio::task::spawn_blocking(move || {
            write_blobs(&hasher, pack_id, start, &data, &members, &paths)
        })
        .await
        .map_err(|e| RunFailure::retryable(format!("restore task failed: {e}")))?;
        outcome.written.extend(part.written);
        outcome.failed.extend(part.failed);
        outcome.bytes += part.bytes;
    }
    Ok(outcome)
}

/// Decodes each blob once and writes it to every use (skipping zeros).
fn write_blobs(
    hasher: &coffer_format::ChunkHasher,
    pack_id: PackId,
    start: u64,
    data: &[u8],
    members: &[BlobUse],
    paths: &[PathBuf],
) -> PackOutcome {
    let mut outcome = PackOutcome {
        written: Vec::new(),
        failed: Vec::new(),
        bytes: 0,
    };
    let mut open = OpenFiles::default();
    let mut decoded: Option<(ChunkId, Result<Vec<u8>, String>)> = None;
    let mut written: HashMap<usize, usize> = HashMap::new();
    for member in members {
        if decoded.as_ref().is_none_or(|(id, _)| *id != member.chunk) {
            let entry = member.location.entry(member.chunk);
            let from =
                usize::try_from(u64::from(member.location.offset) - start).unwrap_or(usize::MAX);
            let to = from.saturating_add(member.location.length as usize);
            let result = match data.get(from..to) {
                Some(blob) => decode_blob(hasher, &entry, blob).map_err(|e| {
                    format!(
                        "damaged data: chunk {} in pack {pack_id}: {e}",
                        member.chunk
                    )
                }),
                None => Err(format!("pack {pack_id} is shorter than its index says")),
            };
            decoded = Some((member.chunk, result));
        }
        let Some((_, result)) = &decoded else {
            continue;
        };
        let chunk = match result {
            Ok(chunk) => chunk,
            Err(message) => {
                outcome.failed.push((member.file, message.clone()));
                continue;
            }
        };
        if !chunk.iter().all(|b| *b == 0) {
            let file = match open.get(member.file, &paths[member.file]) {
                Ok(file) => file,
                Err(error) => {
                    outcome.failed.push((
                        member.file,
                        format!("cannot open {}: {error}", paths[member.file].display()),
                    ));
                    continue;
                }
            };
            if let Err(error) = file.write_all_at(chunk, member.file_offset) {
                outcome
                    .failed
                    .push((member.file, format!("write failed: {error}")));
                continue;
            }
        }
        outcome.bytes += chunk.len() as u64;
        *written.entry(member.file).or_default() += 1;
    }
    outcome.written = written.into_iter().collect();
    outcome
}

/// The files one pack's blobs are being written to, at most
/// [`OPEN_FILES_PER_PACK`] open at a time.
///
/// A pack of small files, or of chunks many files share, names thousands of
/// files; holding them all open ran a real restore (118k files, many of them
/// identical) out of descriptors. Blobs are written in pack order, so the
/// uses of one file are mostly adjacent and a small cache, evicting the file
/// used least recently, keeps reopening rare.
#[derive(Default)]
struct OpenFiles {
    /// Most recently used last.
    files: Vec<(usize, File)>,
}

/// With [`PACK_PARALLELISM`] packs at once, a restore holds at most this
/// many times that many files open for writing.
const OPEN_FILES_PER_PACK: usize = 32;

impl OpenFiles {
    /// The open file number `index` (opened for writing at `path` if needed).
    fn get(&mut self, index: usize, path: &Path) -> std::io::Result<&File> {
        if let Some(at) = self.files.iter().position(|(open, _)| *open == index) {
            let used = self.files.remove(at);
            self.files.push(used);
        } else {
            if self.files.len() >= OPEN_FILES_PER_PACK {
                self.files.remove(0);
            }
            let file = fs::OpenOptions::new().write(true).open(path)?;
            self.files.push((index, file));
        }
        let (_, file) = self.files.last().expect("just pushed");
        Ok(file)
    }
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn system_time(nanos: i64) -> SystemTime {
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
    }
}

fn restore_symlink(attributes: &FileAttributes, target: &Path) -> Result<(), String> {
    let Some(link) = &attributes.symlink_target else {
        return Err("symlink without a target in the manifest".into());
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match fs::symlink_metadata(target) {
        Ok(existing) if existing.is_dir() => {
            return Err(format!("{} exists and is a directory", target.display()))
        }
        Ok(_) => fs::remove_file(target)
            .map_err(|e| format!("cannot replace {}: {e}", target.display()))?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(link), target)
        .map_err(|e| format!("cannot create symlink {}: {e}", target.display()))
}

/// Mode, owner (as root) and times of a restored file or directory.
fn apply_metadata(target: &Path, attributes: &FileAttributes, is_root: bool) -> Result<(), String> {
    if is_root {
        std::os::unix::fs::chown(target, Some(attributes.uid), Some(attributes.gid))
            .map_err(|e| format!("cannot set the owner of {}: {e}", target.display()))?;
    }
    fs::set_permissions(
        target,
        fs::Permissions::from_mode(attributes.mode & PERMISSION_BITS),
    )
    .map_err(|e| format!("cannot set the mode of {}: {e}", target.display()))?;
    let file = File::open(target).map_err(|e| format!("cannot open {}: {e}", target.display()))?;
    file.set_times(FileTimes::new().set_modified(system_time(attributes.mtime_ns)))
        .map_err(|e| format!("cannot set the times of {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_takes_whole_components() {
        let paths = vec!["docs".to_string()];
        assert!(selected(b"docs", &paths));
        assert!(selected(b"docs/a.txt", &paths));
        assert!(!selected(b"docs2/a.txt", &paths));
        assert!(!selected(b"other", &paths));
        assert!(selected(b"anything", &[]));
    }
}
