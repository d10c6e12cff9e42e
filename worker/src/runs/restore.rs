//! Restoring (part of) a snapshot to a path.
//!
//! The manifest is read once, in order, so a directory is created before
//! anything in it; symlinks are made at once, and every file is created
//! under a temporary name next to its target and planned: which blobs of
//! which packs it needs, at which offsets. Files are planned a window at a
//! time ([`WINDOW_FILES`] files or [`WINDOW_CHUNK_USES`] chunk uses), so
//! memory does not grow with the tree: for each window the byte ranges of
//! every pack holding needed blobs are fetched (at most [`RANGE_MAX`] per
//! request, [`FETCHES_IN_FLIGHT`] requests at once across packs, so the
//! bytes in flight are bounded and one pack is read by several requests),
//! and each range's blobs are decoded, checked against their keyed hashes
//! and written to every file that uses them on blocking threads. A file is
//! renamed into place once all its chunks are written, so an interrupted
//! restore never leaves a half-written file under the real name, and
//! damaged data is reported, never restored. Runs of zeros are not written
//! (sparse files stay sparse).
//!
//! Every entry is created beneath the destination's directory descriptor
//! without following symlinks ([`destination`]): a symlink in the
//! destination, or one the snapshot itself restored, is refused as a
//! parent, never followed. Modes, owners and times are set only on what the
//! restore created, unless the grant is in-place; owners and setuid, setgid
//! and sticky bits only where the grant allows them. Directory times last.

mod destination;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use coffer_format::layout;
use coffer_format::{ChunkId, ChunkIndex, ChunkLocation, EntryKind, ManifestEntry, PackId};
use coffer_proto::v1::RunPhase;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::destination::{lossy, Destination, Existing};
use super::run_attempt;
use crate::paths::grant::AllowedPath;
use crate::report::{human_bytes, to_i64, Batcher, LiveProgress, Reporter, RunFailure};
use crate::repository::{BlobOpener, IndexUse, Repository, RepositoryAccess};
use crate::store::Store;

/// Ranged reads in flight at once, across all the window's packs: with
/// [`RANGE_MAX`] this bounds the fetched bytes a restore holds (about 32
/// MiB), and several reads of one pack run side by side.
const FETCHES_IN_FLIGHT: usize = 8;
/// The most one ranged read asks for, unless a single blob is larger.
const RANGE_MAX: u64 = 4 << 20;
/// Blobs further apart than this in one pack are fetched with separate
/// range requests rather than one spanning the gap.
const MAX_RANGE_GAP: u64 = 1 << 20;
/// Files planned and written together; with [`WINDOW_CHUNK_USES`] this
/// bounds the restore's plan, whatever the size of the tree. A pack whose
/// chunks several windows need is fetched once per window (only the ranges
/// each needs).
const WINDOW_FILES: usize = 4096;
/// Chunk uses planned at most in one window.
const WINDOW_CHUNK_USES: usize = 65_536;

/// Everything one restore attempt needs.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The restore run.
    pub run_id: Uuid,
    /// Its lease token.
    pub lease_token: i64,
    /// The repository's store.
    pub store: Arc<Store>,
    /// The repository as the lease describes it.
    pub repository: RepositoryAccess,
    /// Key of the snapshot's manifest.
    pub manifest_key: String,
    /// Relative paths to restore (a directory restores its subtree); empty
    /// restores everything.
    pub paths: Vec<String>,
    /// Where the snapshot's root goes.
    pub destination: PathBuf,
    /// Replace files at the destination that are newer than the snapshot's.
    pub overwrite_newer: bool,
    /// What the destination's grant allows (checked by the executor). `None`
    /// for a trusted in-process caller: the destination is resolved beneath
    /// its parent and modes, owners and special bits are restored as
    /// recorded, existing directories included.
    pub access: Option<AllowedPath>,
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

/// A file being restored (its chunk list moved into the window's plan).
struct FileJob {
    entry: ManifestEntry,
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

/// What writing the blobs of one ranged read did.
struct RangeOutcome {
    /// Per file: uses written.
    written: Vec<(usize, usize)>,
    /// Per file: why it failed.
    failed: Vec<(usize, String)>,
    bytes: u64,
}

/// The files planned together and the blobs they need, per pack.
#[derive(Default)]
struct Window {
    jobs: Vec<FileJob>,
    by_pack: HashMap<PackId, Vec<BlobUse>>,
    uses: usize,
}

impl Window {
    fn is_full(&self) -> bool {
        self.jobs.len() >= WINDOW_FILES || self.uses >= WINDOW_CHUNK_USES
    }

    /// Plans `entry`'s chunks: where each one is and at which offset of the
    /// file it goes.
    fn plan(&mut self, mut entry: ManifestEntry, index: &ChunkIndex) {
        let file = self.jobs.len();
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
            self.by_pack
                .entry(location.pack_id)
                .or_default()
                .push(BlobUse {
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
        self.uses += chunks.len();
        self.jobs.push(FileJob {
            remaining: chunks.len(),
            entry,
            failure,
        });
    }
}

/// The restore's running totals.
struct Totals {
    files: u64,
    bytes: u64,
    kept: u64,
}

#[allow(clippy::too_many_lines)]
async fn execute<R: Reporter>(
    plan: &RestorePlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, RunFailure> {
    batcher.set_phase(RunPhase::Preparing);
    let repository = Repository::open(Arc::clone(&plan.store), &plan.repository, cancel).await?;
    let index = repository.load_index(IndexUse::Read, cancel).await?;
    let mut manifest = repository
        .read_manifest(&plan.manifest_key, Some(&index), cancel)
        .await?;
    let destination = Destination::open(&plan.destination, plan.access.as_ref()).map_err(|e| {
        RunFailure::permanent(format!(
            "cannot open the destination {}: {e}",
            plan.destination.display()
        ))
    })?;
    let destination = Arc::new(destination);
    let suffix: Arc<str> = format!(".coffer-restore-{}", plan.run_id).into();

    let live = Arc::clone(batcher.live());
    let context = WindowContext {
        repository: &repository,
        destination: &destination,
        suffix: &suffix,
        live: &live,
        cancel,
    };
    batcher.set_phase(RunPhase::Transferring);
    let mut directories: Vec<(ManifestEntry, bool)> = Vec::new();
    let mut window = Window::default();
    let mut totals = Totals {
        files: 0,
        bytes: 0,
        kept: 0,
    };
    let mut matched = 0u64;
    while let Some(entry) = manifest.next_entry().map_err(|e| {
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
        if destination.is_protected(&entry.path) {
            batcher
                .error(
                    &entry.path,
                    "refused: the path is inside a path this worker protects".into(),
                )
                .await?;
            continue;
        }
        let target = destination.display(&entry.path);
        match entry.kind() {
            EntryKind::Directory => match destination.create_directory(&entry.path) {
                Ok(created) => directories.push((entry, created)),
                Err(e) => {
                    let message = format!("cannot create directory {}: {e}", target.display());
                    batcher.error(&entry.path, message).await?;
                }
            },
            EntryKind::Symlink => {
                if let Err(message) = restore_symlink(&destination, &entry) {
                    batcher.error(&entry.path, message).await?;
                }
            }
            EntryKind::File => {
                batcher.progress.bytes_seen += to_i64(entry.attributes.size);
                match prepare_file(&destination, &entry, plan.overwrite_newer, &suffix) {
                    Ok(false) => {
                        totals.kept += 1;
                        batcher.progress.files_done += 1;
                        batcher
                            .error(&entry.path, "kept: the file at the destination is newer than the snapshot's (set overwrite_newer to replace it)".into())
                            .await?;
                    }
                    Ok(true) => {
                        window.plan(entry, &index);
                        if window.is_full() {
                            let full = std::mem::take(&mut window);
                            context.restore(full, batcher, &mut totals).await?;
                        }
                    }
                    Err(message) => batcher.error(&entry.path, message).await?,
                }
            }
        }
        batcher.report_progress(false);
    }
    batcher.totals_known();
    context.restore(window, batcher, &mut totals).await?;
    drop(index);
    batcher.set_phase(RunPhase::Finishing);

    // Deepest first, so that setting a directory's time is not undone by
    // restoring into it.
    for (directory, created) in directories.iter().rev() {
        if let Err(e) =
            destination.finish_directory(&directory.path, *created, &directory.attributes)
        {
            let message = format!(
                "cannot set the metadata of {}: {e}",
                destination.display(&directory.path).display()
            );
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
    let failed = batcher.error_total - totals.kept;
    if failed > 0 {
        return Err(RunFailure::permanent(format!(
            "{failed} entr{} could not be restored; see the run's errors",
            if failed == 1 { "y" } else { "ies" }
        )));
    }
    batcher.progress.current_path.clear();
    let Totals { files, bytes, kept } = totals;
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

/// What restoring a window needs besides the window.
struct WindowContext<'a> {
    repository: &'a Repository,
    destination: &'a Arc<Destination>,
    suffix: &'a Arc<str>,
    /// Bytes downloaded and written, counted range by range within packs.
    live: &'a LiveProgress,
    cancel: &'a CancellationToken,
}

impl WindowContext<'_> {
    /// Fetches the window's packs, writes their blobs and finishes (or
    /// reports) every file of the window.
    async fn restore<R: Reporter>(
        &self,
        mut window: Window,
        batcher: &mut Batcher<'_, R>,
        totals: &mut Totals,
    ) -> Result<(), RunFailure> {
        // Files without chunks (empty) are done already; failed ones wait
        // for the end so that their temporary files are removed once.
        for job in window
            .jobs
            .iter_mut()
            .filter(|j| j.remaining == 0 && j.failure.is_none())
        {
            self.finish_file(job, batcher, &mut totals.files).await?;
        }
        let files = Arc::new(WindowFiles {
            destination: Arc::clone(self.destination),
            paths: window.jobs.iter().map(|j| j.entry.path.clone()).collect(),
            suffix: Arc::clone(self.suffix),
        });
        let mut reads: Vec<RangeRead> = std::mem::take(&mut window.by_pack)
            .into_iter()
            .flat_map(|(pack_id, uses)| range_reads(pack_id, uses))
            .collect();
        // Pack by pack, in order within each: a server reads on where the
        // previous request stopped.
        reads.sort_by_key(|read| (read.pack_id, read.start));
        let mut packs =
            stream::iter(reads)
                .map(|read| {
                    let files = Arc::clone(&files);
                    async move {
                        restore_range(self.repository, read, files, self.live, self.cancel).await
                    }
                })
                .buffer_unordered(FETCHES_IN_FLIGHT);
        while let Some(outcome) = packs.next().await {
            if self.cancel.is_cancelled() {
                return Err(RunFailure::cancelled());
            }
            let outcome = outcome?;
            totals.bytes += outcome.bytes;
            for (file, message) in outcome.failed {
                window.jobs[file].failure.get_or_insert(message);
            }
            for (file, count) in outcome.written {
                let job = &mut window.jobs[file];
                job.remaining = job.remaining.saturating_sub(count);
                if job.remaining == 0 && job.failure.is_none() {
                    self.finish_file(job, batcher, &mut totals.files).await?;
                }
            }
            batcher.report_progress(false);
        }
        drop(packs);
        for job in window
            .jobs
            .iter()
            .filter(|j| j.failure.is_some() || j.remaining > 0)
        {
            self.destination.remove_temp(&job.entry.path, self.suffix);
            let message = job
                .failure
                .clone()
                .unwrap_or_else(|| "not every chunk could be written".into());
            batcher.progress.files_done += 1;
            batcher.error(&job.entry.path, message).await?;
        }
        Ok(())
    }

    /// Sizes, stamps and renames a fully written file into place.
    async fn finish_file<R: Reporter>(
        &self,
        job: &mut FileJob,
        batcher: &mut Batcher<'_, R>,
        files: &mut u64,
    ) -> Result<(), RunFailure> {
        let result =
            self.destination
                .finish_file(&job.entry.path, self.suffix, &job.entry.attributes);
        batcher.progress.files_done += 1;
        match result {
            Ok(()) => *files += 1,
            Err(e) => {
                self.destination.remove_temp(&job.entry.path, self.suffix);
                let message = format!(
                    "cannot move into place {}: {e}",
                    self.destination.display(&job.entry.path).display()
                );
                batcher.error(&job.entry.path, message).await?;
            }
        }
        // Marks it finished either way, so it is not reported again.
        job.remaining = 0;
        job.failure = None;
        Ok(())
    }
}

/// Checks the destination and creates the temporary file; `Ok(false)` when
/// a newer file there is kept.
fn prepare_file(
    destination: &Destination,
    entry: &ManifestEntry,
    overwrite_newer: bool,
    suffix: &str,
) -> Result<bool, String> {
    let target = destination.display(&entry.path);
    match destination.existing(&entry.path) {
        Ok(Existing::Directory) => {
            return Err(format!("{} exists and is a directory", target.display()))
        }
        Ok(Existing::File { mtime_ns })
            if !overwrite_newer && mtime_ns > entry.attributes.mtime_ns =>
        {
            return Ok(false)
        }
        Ok(_) => {}
        Err(e) => return Err(format!("cannot restore {}: {e}", target.display())),
    }
    destination.create_temp(&entry.path, suffix).map_err(|e| {
        format!(
            "cannot create a temporary file for {}: {e}",
            target.display()
        )
    })?;
    Ok(true)
}

fn restore_symlink(destination: &Destination, entry: &ManifestEntry) -> Result<(), String> {
    let Some(link) = &entry.attributes.symlink_target else {
        return Err("symlink without a target in the manifest".into());
    };
    let target = destination.display(&entry.path);
    match destination.existing(&entry.path) {
        Ok(Existing::Directory) => Err(format!("{} exists and is a directory", target.display())),
        Ok(_) => destination
            .symlink(&entry.path, link)
            .map_err(|e| format!("cannot create symlink {}: {e}", target.display())),
        Err(e) => Err(format!(
            "cannot restore {} ({}): {e}",
            target.display(),
            lossy(link)
        )),
    }
}

/// Where the blobs go: the window's files, by index.
struct WindowFiles {
    destination: Arc<Destination>,
    paths: Vec<Vec<u8>>,
    suffix: Arc<str>,
}

/// One ranged read of a pack and the blob uses it serves.
struct RangeRead {
    pack_id: PackId,
    start: u64,
    end: u64,
    members: Vec<BlobUse>,
}

/// Groups the uses of one pack into ranged reads of nearby blobs, each at
/// most [`RANGE_MAX`] long (a larger blob is read alone), so one pack is
/// read by several requests at once and no read holds a whole pack.
fn range_reads(pack_id: PackId, mut uses: Vec<BlobUse>) -> Vec<RangeRead> {
    uses.sort_by_key(|u| (u.location.offset, u.file, u.file_offset));
    let mut reads: Vec<RangeRead> = Vec::new();
    for blob_use in uses {
        let start = u64::from(blob_use.location.offset);
        let end = start + u64::from(blob_use.location.length);
        match reads.last_mut() {
            Some(read)
                if start <= read.end + MAX_RANGE_GAP
                    && end.max(read.end) - read.start <= RANGE_MAX =>
            {
                read.end = read.end.max(end);
                read.members.push(blob_use);
            }
            _ => reads.push(RangeRead {
                pack_id,
                start,
                end,
                members: vec![blob_use],
            }),
        }
    }
    reads
}

/// Fetches one ranged read, checks its blobs and writes each to every file
/// that uses it.
async fn restore_range(
    repository: &Repository,
    read: RangeRead,
    files: Arc<WindowFiles>,
    live: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<RangeOutcome, RunFailure> {
    let RangeRead {
        pack_id,
        start,
        end,
        members,
    } = read;
    let key = layout::pack_key(&pack_id);
    let data = match repository
        .store()
        .get_range(&key, start, end - start, cancel)
        .await
    {
        Ok(data) => data,
        Err(crate::store::StoreError::NotFound { .. }) => {
            let failed = members
                .iter()
                .map(|member| {
                    (
                        member.file,
                        format!("pack {pack_id} holding chunk {} is missing", member.chunk),
                    )
                })
                .collect();
            return Ok(RangeOutcome {
                written: Vec::new(),
                failed,
                bytes: 0,
            });
        }
        Err(other) => return Err(other.into()),
    };
    LiveProgress::add(&live.bytes_read, data.len() as u64);
    let opener = repository.blob_opener();
    let outcome = tokio::task::spawn_blocking(move || {
        write_blobs(&opener, pack_id, start, &data, &members, &files)
    })
    .await
    .map_err(|e| RunFailure::retryable(format!("restore task failed: {e}")))?;
    LiveProgress::add(&live.bytes_done, outcome.bytes);
    Ok(outcome)
}

/// Decodes each blob once and writes it to every use (skipping zeros).
fn write_blobs(
    opener: &BlobOpener,
    pack_id: PackId,
    start: u64,
    data: &[u8],
    members: &[BlobUse],
    files: &WindowFiles,
) -> RangeOutcome {
    let mut outcome = RangeOutcome {
        written: Vec::new(),
        failed: Vec::new(),
        bytes: 0,
    };
    let mut open = OpenFiles::default();
    let mut decoded: Option<(ChunkId, Result<Vec<u8>, String>)> = None;
    let mut written: HashMap<usize, usize> = HashMap::new();
    for member in members {
        if decoded.as_ref().is_none_or(|(id, _)| *id != member.chunk) {
            let from =
                usize::try_from(u64::from(member.location.offset) - start).unwrap_or(usize::MAX);
            let to = from.saturating_add(member.location.length as usize);
            let result = match data.get(from..to) {
                Some(blob) => opener
                    .open(member.chunk, &member.location, blob)
                    .map_err(|e| {
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
            let file = match open.get(member.file, files) {
                Ok(file) => file,
                Err(error) => {
                    let path = files.destination.display(&files.paths[member.file]);
                    outcome.failed.push((
                        member.file,
                        format!(
                            "cannot open the temporary file of {}: {error}",
                            path.display()
                        ),
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

/// The files one ranged read's blobs are being written to, at most
/// [`OPEN_FILES_PER_READ`] open at a time.
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

/// With [`FETCHES_IN_FLIGHT`] reads at once, a restore holds at most this
/// many times that many files open for writing.
const OPEN_FILES_PER_READ: usize = 32;

impl OpenFiles {
    /// The open temporary file of file number `index` (opened for writing
    /// beneath the destination if needed).
    fn get(&mut self, index: usize, files: &WindowFiles) -> std::io::Result<&File> {
        if let Some(at) = self.files.iter().position(|(open, _)| *open == index) {
            let used = self.files.remove(at);
            self.files.push(used);
        } else {
            if self.files.len() >= OPEN_FILES_PER_READ {
                self.files.remove(0);
            }
            let file = files
                .destination
                .open_temp(&files.paths[index], &files.suffix)?;
            self.files.push((index, file));
        }
        let (_, file) = self.files.last().expect("just pushed");
        Ok(file)
    }
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
