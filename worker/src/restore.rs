//! Restoring (part of) a snapshot to a path.
//!
//! Entries come from the snapshot's manifest in order, so a directory is
//! created before anything in it. Files are restored several at a time, and
//! the chunks of a large file are fetched in parallel and written at their
//! offsets; every chunk is checked against its keyed hash before it is
//! written, so damaged data is reported, never restored. A file is written
//! under a temporary name and renamed into place, so an interrupted restore
//! never leaves a half-written file under the real name. Runs of zeros are
//! not written (sparse files stay sparse). Modes, owners (when running as
//! root), mtimes and symlinks are restored; directory times last.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_format::{ChunkId, ChunkIndex, EntryKind, ManifestEntry};
use futures::stream::{self, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::repository::{Repository, RepositoryError};
use crate::store::Store;

/// Files restored at once.
const FILE_PARALLELISM: usize = 8;
/// Chunks of one file fetched at once.
const CHUNK_PARALLELISM: usize = 4;

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
    let attempt = i32::try_from(plan.lease_token).unwrap_or(i32::MAX);
    let mut batcher = Batcher::new(reporter, attempt);
    let result = execute(&plan, &mut batcher, &cancel).await;
    batcher.report_progress(true);
    match result {
        Err(_) if cancel.is_cancelled() => Err(RunFailure::cancelled()),
        other => other,
    }
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

/// What happened to one file.
enum Restored {
    /// Written, with its size.
    Written(u64),
    /// Left alone because the file at the destination is newer (reported,
    /// not an error).
    Kept(String),
}

/// A per-file problem: reported, and the restore goes on.
struct FileError {
    path: Vec<u8>,
    message: String,
}

#[allow(clippy::too_many_lines)]
async fn execute<R: Reporter>(
    plan: &RestorePlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, RunFailure> {
    let repository = Repository::open(Arc::clone(&plan.store), cancel).await?;
    let mut manifest = repository.read_manifest(&plan.manifest_key, cancel).await?;
    let index = Arc::new(repository.load_index(cancel).await?);
    let is_root = nix_is_root();

    let mut directories: Vec<ManifestEntry> = Vec::new();
    let mut tasks: JoinSet<Result<Restored, FileError>> = JoinSet::new();
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut matched = 0u64;
    let mut kept = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(RunFailure::cancelled());
        }
        let entry = manifest.next_entry().map_err(|e| {
            RunFailure::permanent(format!("reading manifest {}: {e}", plan.manifest_key))
        })?;
        let Some(entry) = entry else { break };
        if !selected(&entry.path, &plan.paths) {
            continue;
        }
        matched += 1;
        batcher.progress.files_seen += 1;
        let target = destination_of(&plan.destination, &entry.path);
        match entry.kind {
            EntryKind::Directory => {
                if let Err(e) = fs::create_dir_all(&target) {
                    batcher
                        .error(
                            &entry.path,
                            format!("cannot create directory {}: {e}", target.display()),
                        )
                        .await?;
                    continue;
                }
                directories.push(entry);
            }
            EntryKind::Symlink => {
                if let Err(message) = restore_symlink(&entry, &target) {
                    batcher.error(&entry.path, message).await?;
                }
            }
            EntryKind::File => {
                batcher.progress.bytes_seen += to_i64(entry.size);
                while tasks.len() >= FILE_PARALLELISM {
                    collect(&mut tasks, batcher, &mut files, &mut bytes, &mut kept).await?;
                }
                let repository = repository.clone();
                let index = Arc::clone(&index);
                let cancel = cancel.clone();
                let overwrite_newer = plan.overwrite_newer;
                let run_id = plan.run_id;
                tasks.spawn(async move {
                    restore_file(
                        &repository,
                        &index,
                        &entry,
                        &target,
                        overwrite_newer,
                        is_root,
                        run_id,
                        &cancel,
                    )
                    .await
                    .map_err(|message| FileError {
                        path: entry.path.clone(),
                        message,
                    })
                });
            }
        }
        batcher.report_progress(false);
    }
    while !tasks.is_empty() {
        collect(&mut tasks, batcher, &mut files, &mut bytes, &mut kept).await?;
    }
    if cancel.is_cancelled() {
        return Err(RunFailure::cancelled());
    }
    // Deepest first, so that setting a directory's time is not undone by
    // restoring into it.
    for directory in directories.iter().rev() {
        let target = destination_of(&plan.destination, &directory.path);
        if let Err(message) = apply_metadata(&target, directory, is_root) {
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

async fn collect<R: Reporter>(
    tasks: &mut JoinSet<Result<Restored, FileError>>,
    batcher: &mut Batcher<'_, R>,
    files: &mut u64,
    bytes: &mut u64,
    kept: &mut u64,
) -> Result<(), RunFailure> {
    let Some(joined) = tasks.join_next().await else {
        return Ok(());
    };
    match joined.map_err(|e| RunFailure::retryable(format!("restore task failed: {e}")))? {
        Ok(Restored::Written(written)) => {
            *files += 1;
            *bytes += written;
            batcher.progress.files_done += 1;
            batcher.progress.bytes_done += to_i64(written);
        }
        Ok(Restored::Kept(path)) => {
            batcher.progress.files_done += 1;
            *kept += 1;
            batcher.error(path.as_bytes(), "kept: the file at the destination is newer than the snapshot's (set overwrite_newer to replace it)".into()).await?;
        }
        Err(error) => batcher.error(&error.path, error.message).await?,
    }
    batcher.report_progress(false);
    Ok(())
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

fn restore_symlink(entry: &ManifestEntry, target: &Path) -> Result<(), String> {
    let Some(link) = &entry.symlink_target else {
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
fn apply_metadata(target: &Path, entry: &ManifestEntry, is_root: bool) -> Result<(), String> {
    if is_root {
        std::os::unix::fs::chown(target, Some(entry.uid), Some(entry.gid))
            .map_err(|e| format!("cannot set the owner of {}: {e}", target.display()))?;
    }
    fs::set_permissions(target, fs::Permissions::from_mode(entry.mode & 0o7777))
        .map_err(|e| format!("cannot set the mode of {}: {e}", target.display()))?;
    let file = File::open(target).map_err(|e| format!("cannot open {}: {e}", target.display()))?;
    file.set_times(FileTimes::new().set_modified(system_time(entry.mtime_ns)))
        .map_err(|e| format!("cannot set the times of {}: {e}", target.display()))
}

/// Restores one file, unless the file at the destination is newer.
#[allow(clippy::too_many_arguments)]
async fn restore_file(
    repository: &Repository,
    index: &ChunkIndex,
    entry: &ManifestEntry,
    target: &Path,
    overwrite_newer: bool,
    is_root: bool,
    run_id: Uuid,
    cancel: &CancellationToken,
) -> Result<Restored, String> {
    if let Ok(existing) = fs::symlink_metadata(target) {
        if existing.is_dir() {
            return Err(format!("{} exists and is a directory", target.display()));
        }
        let existing_mtime = existing.mtime() * 1_000_000_000 + existing.mtime_nsec();
        if !overwrite_newer && existing.is_file() && existing_mtime > entry.mtime_ns {
            return Ok(Restored::Kept(
                String::from_utf8_lossy(&entry.path).into_owned(),
            ));
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
    temp_name.extend_from_slice(format!(".coffer-restore-{run_id}").as_bytes());
    let temp = parent.join(OsStr::from_bytes(&temp_name));
    let file = File::create(&temp).map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let result = write_chunks(repository, index, entry, &file, cancel).await;
    let finished = result.and_then(|()| {
        file.set_len(entry.size)
            .map_err(|e| format!("cannot size {}: {e}", temp.display()))?;
        drop(file);
        apply_metadata(&temp, entry, is_root)?;
        fs::rename(&temp, target)
            .map_err(|e| format!("cannot move into place {}: {e}", target.display()))
    });
    if let Err(message) = finished {
        let _ = fs::remove_file(&temp);
        return Err(message);
    }
    Ok(Restored::Written(entry.size))
}

/// Fetches, verifies and writes every chunk at its offset.
async fn write_chunks(
    repository: &Repository,
    index: &ChunkIndex,
    entry: &ManifestEntry,
    file: &File,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let mut offsets = Vec::with_capacity(entry.chunks.len());
    let mut offset = 0u64;
    for id in &entry.chunks {
        let location = index
            .get(id)
            .ok_or_else(|| format!("chunk {id} is not in the repository's index (missing data)"))?;
        offsets.push((*id, location, offset));
        offset += u64::from(location.raw_length);
    }
    if offset != entry.size {
        return Err(format!(
            "the snapshot's chunks hold {offset} bytes but the file had {}",
            entry.size
        ));
    }
    let mut fetched = stream::iter(offsets)
        .map(|(id, location, offset)| async move {
            let data = repository
                .read_chunk(id, location, cancel)
                .await
                .map_err(|e| damaged(id, &e))?;
            Ok::<_, String>((offset, data))
        })
        .buffer_unordered(CHUNK_PARALLELISM);
    while let Some(result) = fetched.next().await {
        let (offset, data) = result?;
        if data.iter().all(|b| *b == 0) {
            continue;
        }
        write_all_at(file, &data, offset).map_err(|e| format!("write failed: {e}"))?;
    }
    Ok(())
}

fn damaged(id: ChunkId, error: &RepositoryError) -> String {
    match error {
        RepositoryError::Format { .. } => format!("damaged data: {error}"),
        other => format!("cannot read chunk {id}: {other}"),
    }
}

fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(data, offset)
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
