//! One backup attempt in repository format v1 (see `format/README.md`).
//!
//! The walk yields entries in manifest order. Each regular file is either
//! carried over from the parent snapshot unread — its size, mtime, ctime and
//! inode are unchanged — or read on a blocking thread that chunks it
//! (FastCDC), hashes every chunk with the repository key and compresses the
//! chunks the repository does not hold yet. Files are processed several at
//! a time on all cores while one packer task fills packs of about 16 MiB and
//! uploads them in the background, so reading overlaps with uploading.
//! Results are consumed in walk order: each entry goes into the streamed
//! manifest and, when it changed since the parent, into a file record for
//! the control plane. Index files name uploaded packs every few packs (so a
//! retry after a crash reuses them); the last index file and then the
//! manifest are written last, so a manifest never names a chunk that is not
//! stored and indexed.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use coffer_format::layout;
use coffer_format::{
    encode_chunk, new_compressor, ChunkBuffer, ChunkHasher, ChunkId, ChunkIndex, ChunkStream,
    Chunker, Compressor, EncodedChunk, EntryKind as ManifestKind, IndexFile, IndexPack,
    ManifestEntry, ManifestHeader, PackBuilder,
};
use coffer_proto::v1::{FileRecord, JobOptions};
use futures::future::Either;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cpu_pool::CpuPool;
use crate::manifests::{open_parent, ManifestSink};
use crate::report::{human_bytes, to_i64, Batcher, RunFailure};
pub use crate::report::{
    RecordBatch, ReportError, Reporter, RunFailure as BackupFailure, MAX_BATCH_RECORDS,
};
use crate::repository::{IndexUse, Repository};
use crate::source::{self, Entry, EntryKind, EntryMetadata, WalkItem, WalkOptions};
use crate::store::Store;

/// A file that keeps changing while it is read is re-read this many times
/// before it is reported as a per-file error.
pub const MAX_REREADS: u32 = 3;
/// Entries between the walk and the manifest at once (most are cheap).
const ENTRY_WINDOW: usize = 256;
/// Encoded chunks queued for the packer.
const PACKER_QUEUE: usize = 16;
/// Regular files opened and being read ahead by the kernel at once.
const PREFETCH_FILES: usize = 32;
/// Bytes of each file the kernel is asked to read ahead when it is opened.
const PREFETCH_BYTES: u64 = 4 << 20;
/// Packs uploaded at once.
const UPLOAD_PARALLELISM: usize = 3;
/// Packs named by one index file (the last one of a run may name fewer).
const INDEX_FLUSH_PACKS: usize = 4;

/// The snapshot an incremental is taken against.
#[derive(Debug, Clone)]
pub struct ParentSnapshot {
    /// Its run.
    pub run_id: Uuid,
    /// Storage key of its manifest.
    pub manifest_key: String,
}

/// Everything one backup attempt needs.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    /// The run being executed.
    pub run_id: Uuid,
    /// The job, if any (recorded in the manifest).
    pub job_id: Option<Uuid>,
    /// The lease token (attempt number) the run was leased with.
    pub lease_token: i64,
    /// Absolute path of the source tree (or single file).
    pub source: PathBuf,
    /// How the source is read.
    pub options: JobOptions,
    /// The repository's store.
    pub store: Arc<Store>,
    /// Chunk key for a repository created by this run.
    pub repository_key: Vec<u8>,
    /// The previous snapshot of the same job in the repository, if any.
    pub parent: Option<ParentSnapshot>,
}

/// A successful backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// Total size of the regular files in the snapshot.
    pub size_bytes: i64,
    /// Entries in the snapshot.
    pub file_count: i64,
    /// Batches sent to the reporter.
    pub batch_count: i64,
    /// Key of the snapshot manifest.
    pub manifest_key: String,
    /// The parent the records are relative to (`None`: they list the whole tree).
    pub parent_run_id: Option<Uuid>,
    /// Human-readable summary for the run's metadata.
    pub details: String,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
    /// Bytes of packs uploaded (after deduplication and compression).
    pub bytes_uploaded: u64,
    /// Regular files read (not carried over from the parent).
    pub files_read: u64,
}

/// Runs one backup attempt of `plan`.
///
/// Per-file problems (unreadable, vanished, constantly changing files) are
/// reported and skipped; they fail the run only with
/// `options.fail_on_file_errors`. Storage errors and reporter errors fail it.
/// When `cancel` fires the backup stops promptly with the failure
/// `cancelled`; packs already uploaded stay (unreferenced until a later
/// backup reuses them or garbage collection removes them) but no manifest
/// is written.
pub async fn run_backup<R: Reporter>(
    plan: BackupPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<BackupSummary, BackupFailure> {
    let attempt = i32::try_from(plan.lease_token).unwrap_or(i32::MAX);
    let mut batcher = Batcher::new(reporter, attempt);
    let result = execute(&plan, &mut batcher, &cancel).await;
    batcher.report_progress(true);
    match result {
        Err(_) if cancel.is_cancelled() => Err(RunFailure::cancelled()),
        other => other,
    }
}

/// Chunks the repository holds or this run has queued, shared by file tasks
/// so that each new chunk is packed once.
struct ChunkSet {
    index: ChunkIndex,
    queued: Mutex<QueuedIds>,
}

impl ChunkSet {
    /// Claims `id` for packing; false when it is stored or already claimed.
    fn claim(&self, id: ChunkId) -> bool {
        if self.index.contains(&id) {
            return false;
        }
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id)
    }
}

/// Recent claims in a hash set, older ones in one sorted vector.
///
/// A run over a million tiny files claims a million ids. In one `HashSet`
/// they cost about 66 bytes each (power-of-two tables at most 7/8 full),
/// and twice that while the table grows; sorted, they cost their 32 bytes.
/// The set is merged into the vector whenever it reaches a quarter of it,
/// so each id is sorted a handful of times over a run.
#[derive(Default)]
struct QueuedIds {
    sorted: Vec<ChunkId>,
    recent: HashSet<ChunkId>,
}

impl QueuedIds {
    /// Recent ids are merged once there are at least this many.
    const MIN_RECENT: usize = 1 << 14;

    /// Adds `id`; false when it was already there.
    fn insert(&mut self, id: ChunkId) -> bool {
        if self.sorted.binary_search(&id).is_ok() || !self.recent.insert(id) {
            return false;
        }
        if self.recent.len() >= Self::MIN_RECENT.max(self.sorted.len() / 4) {
            self.sorted.reserve_exact(self.recent.len());
            self.sorted.extend(self.recent.drain());
            self.sorted.sort_unstable();
            self.recent = HashSet::new();
        }
        true
    }
}

/// Shared by the file tasks.
struct FileContext {
    chunker: Chunker,
    hasher: ChunkHasher,
    compression_level: i32,
    chunks: ChunkSet,
    packer: mpsc::Sender<EncodedChunk>,
    cpu: CpuPool,
    prefetch: Semaphore,
    tools: Mutex<Vec<FileTools>>,
    cancel: CancellationToken,
    bytes_read: AtomicU64,
}

/// What happened to one regular file.
struct FileContent {
    content_hash: String,
    chunks: Vec<ChunkId>,
    metadata: EntryMetadata,
}

/// Why a regular file was not backed up.
enum FileProblem {
    /// Reported for the file; the run goes on.
    Skip(String),
    /// Fails the run.
    Fatal(RunFailure),
}

/// One walk item on its way to the manifest.
enum Processed {
    /// A directory, symlink or carried-over file.
    Ready(Entry, Option<ManifestEntry>, Option<FileContent>),
    /// A regular file that was read.
    Read(
        Entry,
        Option<ManifestEntry>,
        Result<FileContent, FileProblem>,
    ),
    /// An entry that could not be read at all.
    Error(Vec<u8>, String),
    /// A special file (fifo, socket, device): not part of a snapshot.
    Special,
}

#[allow(clippy::too_many_lines)]
async fn execute<R: Reporter>(
    plan: &BackupPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, RunFailure> {
    tracing::debug!(run = %plan.run_id, "backup starting");
    let walk_options = WalkOptions {
        exclude: plan.options.exclude.clone(),
        one_file_system: plan.options.one_file_system,
    };
    // The source is checked first: a missing source is the user's error,
    // whatever the state of the storage.
    let mut walk = source::walk(&plan.source, &walk_options, cancel)
        .await
        .map_err(|e| RunFailure::permanent(e.to_string()))?;
    let repository =
        Repository::open_or_create(Arc::clone(&plan.store), &plan.repository_key, cancel).await?;
    let config = repository.config().clone();
    // The chunk index and the parent manifest are fetched side by side.
    let (index, mut parent) = tokio::join!(
        repository.load_index(IndexUse::Write, cancel),
        open_parent(
            &repository,
            plan.run_id,
            plan.parent.as_ref(),
            &config,
            cancel
        )
    );
    let index = index?;
    let parent_run_id = parent.as_ref().map(|p| p.run_id);
    let started = std::time::Instant::now();
    tracing::debug!(run = %plan.run_id, "index and parent loaded");

    let (packer_tx, packer_rx) = mpsc::channel(PACKER_QUEUE);
    let uploaded = Arc::new(AtomicU64::new(0));
    let packer = tokio::spawn(run_packer(
        Arc::clone(&plan.store),
        config.pack_target_size as usize,
        packer_rx,
        Arc::clone(&uploaded),
        cancel.clone(),
    ));
    let context = Arc::new(FileContext {
        chunker: config.chunker(),
        hasher: repository.hasher().clone(),
        compression_level: config.compression_level,
        chunks: ChunkSet {
            index,
            queued: Mutex::new(QueuedIds::default()),
        },
        packer: packer_tx,
        cpu: CpuPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .map_err(|e| RunFailure::retryable(format!("starting the chunking threads: {e}")))?,
        prefetch: Semaphore::new(PREFETCH_FILES),
        tools: Mutex::new(Vec::new()),
        cancel: cancel.clone(),
        bytes_read: AtomicU64::new(0),
    });

    let mut header = ManifestHeader::new(
        plan.run_id,
        plan.source.to_string_lossy().into_owned(),
        hostname(),
        chrono::Utc::now(),
        config.chunker,
    );
    header.job_id = plan.job_id;
    header.parent_run_id = parent_run_id;
    let mut manifest = ManifestSink::start(&header)?;

    let mut pending: FuturesOrdered<EntryTask> = FuturesOrdered::new();
    let mut walk_done = false;
    let mut stats = Stats::default();
    while !(walk_done && pending.is_empty()) {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            Some(joined) = pending.next(), if !pending.is_empty() => {
                let processed = joined
                    .map_err(|e| RunFailure::retryable(format!("file task failed: {e}")))?;
                finish_entry(processed, parent.is_some(), &mut manifest, batcher, &mut stats).await?;
                batcher.progress.bytes_uploaded = to_i64(uploaded.load(Ordering::Relaxed));
                batcher.report_progress(false);
            }
            item = walk.next(), if !walk_done && pending.len() < ENTRY_WINDOW => {
                let Some(item) = item else {
                    walk_done = true;
                    if let Some(parent) = &mut parent {
                        parent.remaining_removed(batcher).await?;
                    }
                    continue;
                };
                batcher.progress.files_seen += 1;
                let entry = match item {
                    WalkItem::Error(error) => {
                        pending.push_back(ready(Processed::Error(error.path, error.message)));
                        continue;
                    }
                    WalkItem::Entry(entry) => entry,
                };
                let previous = match &mut parent {
                    Some(parent) => parent.advance_to(&entry.path, batcher).await?,
                    None => None,
                };
                if entry.kind == EntryKind::Regular {
                    batcher.progress.bytes_seen += to_i64(entry.metadata.size);
                }
                pending.push_back(spawn_entry(&context, entry, previous));
            }
        }
    }
    tracing::debug!(run = %plan.run_id, elapsed = ?started.elapsed(), "walk done");
    // Every file task is done: closing the queue lets the packer seal the
    // last pack.
    drop(context);
    let index_bytes = packer
        .await
        .map_err(|e| RunFailure::retryable(format!("packer task failed: {e}")))??;
    batcher.progress.bytes_uploaded = to_i64(uploaded.load(Ordering::Relaxed));
    if let Some(parent) = parent {
        parent.finish()?;
    }
    // Flushed before failing, so that the errors the failure points to are
    // reported.
    batcher.flush().await?;
    if plan.options.fail_on_file_errors && batcher.error_total > 0 {
        return Err(RunFailure::permanent(format!(
            "{} file error(s) and fail_on_file_errors is set; see the run's errors",
            batcher.error_total
        )));
    }

    let spool = manifest.finish().await?;
    let manifest_key = layout::manifest_key(plan.run_id);
    let manifest_len = plan
        .store
        .put_file(&manifest_key, spool.path(), cancel)
        .await?;

    tracing::debug!(run = %plan.run_id, elapsed = ?started.elapsed(), "manifest stored");
    let bytes_uploaded = uploaded.load(Ordering::Relaxed) + index_bytes + manifest_len;
    batcher.progress.bytes_uploaded = to_i64(bytes_uploaded);
    batcher.progress.current_path.clear();
    let details = format!(
        "{} entries ({} files, {}); {} files read, {} carried over from the parent; \
         {} uploaded; {} per-file errors",
        stats.entries,
        stats.files,
        human_bytes(stats.size),
        stats.files_read,
        stats.files - stats.files_read,
        human_bytes(bytes_uploaded),
        batcher.error_total
    );
    Ok(BackupSummary {
        size_bytes: to_i64(stats.size),
        file_count: to_i64(stats.entries),
        batch_count: batcher.batch_count(),
        manifest_key,
        parent_run_id,
        details,
        progress: batcher.progress_now(),
        bytes_uploaded,
        files_read: stats.files_read,
    })
}

#[derive(Default)]
struct Stats {
    entries: u64,
    files: u64,
    files_read: u64,
    size: u64,
}

/// An entry being processed: most are ready at once and are not spawned.
type EntryTask = Either<
    std::future::Ready<Result<Processed, tokio::task::JoinError>>,
    tokio::task::JoinHandle<Processed>,
>;

fn ready(processed: Processed) -> EntryTask {
    Either::Left(std::future::ready(Ok(processed)))
}

/// Starts processing one entry: directories, symlinks and unchanged files
/// are ready at once; other regular files are read on a blocking thread.
fn spawn_entry(
    context: &Arc<FileContext>,
    entry: Entry,
    previous: Option<ManifestEntry>,
) -> EntryTask {
    match entry.kind {
        EntryKind::Regular => {
            if let Some(unchanged) = previous
                .as_ref()
                .filter(|p| unchanged_file(p, &entry.metadata))
            {
                let content = FileContent {
                    content_hash: unchanged.content_hash.clone().unwrap_or_default(),
                    chunks: unchanged.chunks.clone(),
                    metadata: entry.metadata,
                };
                return ready(Processed::Ready(entry, previous, Some(content)));
            }
            let context = Arc::clone(context);
            Either::Right(tokio::spawn(async move {
                let result = read_in_turn(context, entry.abs_path.clone()).await;
                Processed::Read(entry, previous, result)
            }))
        }
        EntryKind::Directory | EntryKind::Symlink => ready(Processed::Ready(entry, previous, None)),
        _ => ready(Processed::Special),
    }
}

/// Reads one regular file: opened early, with the kernel asked to start
/// reading it (up to [`PREFETCH_FILES`] files ahead), then chunked and
/// compressed on the CPU pool. On a cold cache most files of a
/// tree are small, and reading them one or two at a time leaves the disk
/// idle between requests.
async fn read_in_turn(
    context: Arc<FileContext>,
    path: PathBuf,
) -> Result<FileContent, FileProblem> {
    let cancelled = || FileProblem::Fatal(RunFailure::cancelled());
    let task_failed = |e: tokio::task::JoinError| {
        FileProblem::Fatal(RunFailure::retryable(format!("file task failed: {e}")))
    };
    let _prefetch = context.prefetch.acquire().await.map_err(|_| cancelled())?;
    let open_path = path.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let opened = open_regular(&open_path)?;
        prefetch(&opened.0, opened.1.len());
        Ok(opened)
    })
    .await
    .map_err(task_failed)?;
    let task_context = Arc::clone(&context);
    context
        .cpu
        .run(move || read_file(&task_context, &path, opened))
        .await
        .unwrap_or_else(|| {
            Err(FileProblem::Fatal(RunFailure::retryable(
                "a chunking thread failed",
            )))
        })
}

/// Asks the kernel to read the start of `file` into the page cache in the
/// background. Only a hint: failure costs speed, not correctness.
fn prefetch(file: &File, len: u64) {
    let Some(len) = std::num::NonZeroU64::new(len.min(PREFETCH_BYTES)) else {
        return;
    };
    if let Err(error) = rustix::fs::fadvise(file, 0, Some(len), rustix::fs::Advice::WillNeed) {
        tracing::debug!(%error, "fadvise(WILLNEED) failed");
    }
}

/// An unchanged file is carried over without being read: the same size,
/// modification and status-change times and inode as in the parent.
fn unchanged_file(previous: &ManifestEntry, now: &EntryMetadata) -> bool {
    previous.kind == ManifestKind::File
        && previous.size == now.size
        && previous.mtime_ns == nanos(now.mtime)
        && previous.ctime_ns == nanos(now.ctime)
        && previous.inode == now.inode
}

/// Writes one processed entry to the manifest and, when it differs from
/// the parent (or there is none), reports its record.
async fn finish_entry<R: Reporter>(
    processed: Processed,
    incremental: bool,
    manifest: &mut ManifestSink,
    batcher: &mut Batcher<'_, R>,
    stats: &mut Stats,
) -> Result<(), RunFailure> {
    let (entry, previous, content, read) = match processed {
        Processed::Special => {
            batcher.progress.files_done += 1;
            return Ok(());
        }
        Processed::Error(path, message) => {
            batcher.progress.files_done += 1;
            batcher.error(&path, message).await?;
            return Ok(());
        }
        Processed::Ready(entry, previous, content) => (entry, previous, content, false),
        Processed::Read(entry, previous, result) => match result {
            Ok(content) => (entry, previous, Some(content), true),
            Err(FileProblem::Skip(message)) => {
                batcher.progress.files_done += 1;
                batcher.error(&entry.path, message).await?;
                return Ok(());
            }
            Err(FileProblem::Fatal(failure)) => return Err(failure),
        },
    };
    let metadata = content.as_ref().map_or(entry.metadata, |c| c.metadata);
    let manifest_entry = ManifestEntry {
        path: entry.path.clone(),
        kind: match entry.kind {
            EntryKind::Directory => ManifestKind::Directory,
            EntryKind::Symlink => ManifestKind::Symlink,
            _ => ManifestKind::File,
        },
        size: if entry.kind == EntryKind::Regular {
            metadata.size
        } else {
            0
        },
        mode: metadata.mode,
        uid: metadata.uid,
        gid: metadata.gid,
        mtime_ns: nanos(metadata.mtime),
        ctime_ns: nanos(metadata.ctime),
        inode: metadata.inode,
        dev: metadata.dev,
        content_hash: content.as_ref().map(|c| c.content_hash.clone()),
        chunks: content.map(|c| c.chunks).unwrap_or_default(),
        symlink_target: entry.symlink_target.clone(),
    };
    stats.entries += 1;
    if manifest_entry.kind == ManifestKind::File {
        stats.files += 1;
        stats.size += manifest_entry.size;
        if read {
            stats.files_read += 1;
        }
        batcher.progress.bytes_done += to_i64(manifest_entry.size);
    }
    batcher.progress.files_done += 1;
    batcher.progress.current_path = String::from_utf8_lossy(&entry.path).into_owned();
    let changed = !incremental
        || previous
            .as_ref()
            .is_none_or(|p| !same_record(p, &manifest_entry));
    if changed {
        batcher.file(file_record(&manifest_entry)).await?;
    }
    manifest.add(manifest_entry).await
}

/// Whether the catalog's view of an entry is unchanged (what a version
/// records: kind, size, mode, owner, mtime, content, link target).
fn same_record(a: &ManifestEntry, b: &ManifestEntry) -> bool {
    a.kind == b.kind
        && a.size == b.size
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_ns / 1000 == b.mtime_ns / 1000
        && a.content_hash == b.content_hash
        && a.symlink_target == b.symlink_target
}

/// The control plane's record of a manifest entry.
pub fn file_record(entry: &ManifestEntry) -> FileRecord {
    FileRecord {
        path: entry.path.clone(),
        kind: match entry.kind {
            ManifestKind::File => "regular",
            ManifestKind::Directory => "directory",
            ManifestKind::Symlink => "symlink",
        }
        .into(),
        size_bytes: to_i64(entry.size),
        mode: entry.mode & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        mtime: Some(prost_types::Timestamp {
            seconds: entry.mtime_ns.div_euclid(1_000_000_000),
            nanos: i32::try_from(entry.mtime_ns.rem_euclid(1_000_000_000)).unwrap_or(0),
        }),
        content_hash: entry.content_hash.clone().unwrap_or_default(),
        symlink_target: entry.symlink_target.clone().unwrap_or_default(),
        storage_key: String::new(),
    }
}

fn nanos(time: source::FileTime) -> i64 {
    time.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(time.nanos))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Reads, chunks and hashes one file, queueing its new chunks for packing.
/// A file that changes while it is read is read again.
/// `opened` is the first attempt's [`open_regular`] result.
fn read_file(
    context: &FileContext,
    path: &Path,
    opened: Result<(File, std::fs::Metadata), FileProblem>,
) -> Result<FileContent, FileProblem> {
    let mut last_change = String::new();
    let mut opened = Some(opened);
    for _ in 0..=MAX_REREADS {
        let (file, before) = match opened.take() {
            Some(first) => first?,
            None => open_regular(path)?,
        };
        let (content_hash, chunks) = chunk_file(context, file)?;
        let after = std::fs::symlink_metadata(path)
            .map_err(|e| FileProblem::Skip(format!("vanished while being read: {e}")))?;
        if !changed(&before, &after) {
            return Ok(FileContent {
                content_hash,
                chunks,
                metadata: EntryMetadata::from(&before),
            });
        }
        last_change = format!(
            "changed while being read ({} -> {} bytes)",
            before.len(),
            after.len()
        );
    }
    Err(FileProblem::Skip(format!(
        "{last_change}; gave up after {MAX_REREADS} re-reads"
    )))
}

fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), FileProblem> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FileProblem::Skip("vanished before it could be read".into()),
            _ => FileProblem::Skip(format!("cannot open: {e}")),
        })?;
    let metadata = file
        .metadata()
        .map_err(|e| FileProblem::Skip(format!("cannot stat: {e}")))?;
    if !metadata.is_file() {
        return Err(FileProblem::Skip("is no longer a regular file".into()));
    }
    Ok((file, metadata))
}

fn changed(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.len() != after.len()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.ino() != after.ino()
}

fn chunk_file(context: &FileContext, file: File) -> Result<(String, Vec<ChunkId>), FileProblem> {
    let mut tools = take_tools(context)?;
    let mut stream = context.chunker.stream(
        CountingReader {
            inner: file,
            context,
        },
        std::mem::take(&mut tools.buffer),
    );
    let result = chunk_stream(context, &mut stream, &mut tools.compressor);
    tools.buffer = stream.into_buffer();
    context
        .tools
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(tools);
    result
}

fn chunk_stream<R: Read>(
    context: &FileContext,
    stream: &mut ChunkStream<R>,
    compressor: &mut Compressor,
) -> Result<(String, Vec<ChunkId>), FileProblem> {
    let mut content = context.hasher.content_hasher();
    let mut ids = Vec::new();
    let mut whole = None;
    while let Some(chunk) = stream.next_chunk() {
        if context.cancel.is_cancelled() {
            return Err(FileProblem::Fatal(RunFailure::cancelled()));
        }
        let chunk = chunk.map_err(|e| FileProblem::Skip(format!("read failed: {e}")))?;
        let id = context.hasher.chunk_id(chunk.bytes);
        // A file that is one chunk has that chunk's id as its content hash
        // (same key, same function), so it is hashed once, not twice.
        if chunk.whole {
            whole = Some(id);
        } else {
            content.update(chunk.bytes);
        }
        ids.push(id);
        if context.chunks.claim(id) {
            let encoded = encode_chunk(compressor, id, chunk.bytes).map_err(|e| {
                FileProblem::Fatal(RunFailure::permanent(format!("compressing a chunk: {e}")))
            })?;
            context
                .packer
                .blocking_send(encoded)
                .map_err(|_| FileProblem::Fatal(RunFailure::retryable("the packer stopped")))?;
        }
    }
    let content_hash = match whole {
        Some(id) => id.to_hex(),
        None => content.finalize(),
    };
    Ok((content_hash, ids))
}

/// A compressor and a chunking buffer for one file at a time, taken from the
/// pool (or made) and given back afterwards: both cost far more to set up
/// than a small file costs to read.
struct FileTools {
    compressor: Compressor,
    buffer: ChunkBuffer,
}

fn take_tools(context: &FileContext) -> Result<FileTools, FileProblem> {
    let reused = context
        .tools
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    match reused {
        Some(tools) => Ok(tools),
        None => Ok(FileTools {
            compressor: new_compressor(context.compression_level).map_err(|e| {
                FileProblem::Fatal(RunFailure::permanent(format!("starting zstd: {e}")))
            })?,
            buffer: ChunkBuffer::default(),
        }),
    }
}

/// Counts bytes read, for progress between chunks of large files.
struct CountingReader<'a> {
    inner: File,
    context: &'a FileContext,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.context
            .bytes_read
            .fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

/// Fills packs from the queue and uploads each when it reaches the target
/// size (and the last one when the queue closes). Every
/// [`INDEX_FLUSH_PACKS`] uploaded packs, and at the end, an index file names
/// them, so an attempt that dies midway leaves packs a retry can reuse.
/// Returns the bytes of index files written.
pub(crate) async fn run_packer(
    store: Arc<Store>,
    target_size: usize,
    mut queue: mpsc::Receiver<EncodedChunk>,
    uploaded: Arc<AtomicU64>,
    cancel: CancellationToken,
) -> Result<u64, RunFailure> {
    let mut builder = PackBuilder::new(0);
    let mut uploads: JoinSet<Result<IndexPack, RunFailure>> = JoinSet::new();
    let mut unindexed = Vec::new();
    let mut index_bytes = 0u64;
    let slots = Arc::new(Semaphore::new(UPLOAD_PARALLELISM));
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                unindexed.push(done.map_err(|e| RunFailure::retryable(format!("upload task failed: {e}")))??);
                if unindexed.len() >= INDEX_FLUSH_PACKS {
                    index_bytes += write_index(&store, std::mem::take(&mut unindexed), &cancel).await?;
                }
                continue;
            }
            next = queue.recv() => next,
        };
        let Some(chunk) = next else { break };
        builder
            .add_blob(&chunk)
            .map_err(|e| RunFailure::permanent(format!("packing: {e}")))?;
        if builder.len() >= target_size {
            let full = std::mem::replace(&mut builder, PackBuilder::new(0));
            start_upload(&store, full, &slots, &mut uploads, &uploaded, &cancel).await?;
        }
    }
    if !builder.is_empty() {
        start_upload(&store, builder, &slots, &mut uploads, &uploaded, &cancel).await?;
    }
    while let Some(done) = uploads.join_next().await {
        unindexed
            .push(done.map_err(|e| RunFailure::retryable(format!("upload task failed: {e}")))??);
    }
    if !unindexed.is_empty() {
        index_bytes += write_index(&store, unindexed, &cancel).await?;
    }
    Ok(index_bytes)
}

/// Writes an index file naming `packs` (all uploaded); returns its size.
async fn write_index(
    store: &Store,
    packs: Vec<IndexPack>,
    cancel: &CancellationToken,
) -> Result<u64, RunFailure> {
    let (index_id, bytes) = IndexFile { packs }
        .encode()
        .map_err(|e| RunFailure::permanent(format!("encoding the index: {e}")))?;
    let length = bytes.len() as u64;
    store
        .put_bytes(&layout::index_key(&index_id), bytes, cancel)
        .await?;
    Ok(length)
}

async fn start_upload(
    store: &Arc<Store>,
    builder: PackBuilder,
    slots: &Arc<Semaphore>,
    uploads: &mut JoinSet<Result<IndexPack, RunFailure>>,
    uploaded: &Arc<AtomicU64>,
    cancel: &CancellationToken,
) -> Result<(), RunFailure> {
    let permit = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(|_| RunFailure::cancelled())?;
    let sealed = tokio::task::spawn_blocking(move || builder.finish())
        .await
        .map_err(|e| RunFailure::retryable(format!("sealing task failed: {e}")))?
        .map_err(|e| RunFailure::permanent(format!("sealing a pack: {e}")))?;
    let store = Arc::clone(store);
    let uploaded = Arc::clone(uploaded);
    let cancel = cancel.clone();
    uploads.spawn(async move {
        let _permit = permit;
        let entry = IndexPack::from_sealed(&sealed);
        let length = sealed.bytes.len() as u64;
        store
            .put_bytes(&layout::pack_key(&sealed.id), sealed.bytes, &cancel)
            .await?;
        uploaded.fetch_add(length, Ordering::Relaxed);
        Ok(entry)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_ids_admit_each_id_once_across_merges() {
        let mut queued = QueuedIds::default();
        let id = |i: u32| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            bytes[4..8].copy_from_slice(&i.to_le_bytes());
            ChunkId(bytes)
        };
        let count = 3 * QueuedIds::MIN_RECENT as u32 + 5;
        assert!((0..count).all(|i| queued.insert(id(i))));
        assert!(!queued.sorted.is_empty(), "some ids were merged");
        assert!((0..count).all(|i| !queued.insert(id(i))));
        assert_eq!(queued.sorted.len() + queued.recent.len(), count as usize);
    }
}
