//! Reading regular files for a backup: each file is opened early with the
//! kernel asked to read ahead, then read, chunked (FastCDC), hashed with the
//! repository key and its new chunks compressed on the CPU pool and queued
//! for the packer. A file that changes while it is read is read again.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use coffer_format::{
    encode_chunk, new_compressor, ChunkBuffer, ChunkHasher, ChunkId, ChunkIndex, ChunkStream,
    Chunker, Compressor, EncodedChunk,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cpu_pool::CpuPool;
use crate::paths::beneath;
use crate::report::{LiveProgress, RunFailure};
use crate::repository::Repository;
use crate::source::{self, EntryMetadata};
use rustix::fs::OFlags;

/// A file that keeps changing while it is read is re-read this many times
/// before it is reported as a per-file error.
pub const MAX_REREADS: u32 = 3;
/// Regular files opened and being read ahead by the kernel at once.
const PREFETCH_FILES: usize = 32;
/// Bytes of each file the kernel is asked to read ahead when it is opened.
const PREFETCH_BYTES: u64 = 4 << 20;

/// Shared by the file tasks.
pub(super) struct FileContext {
    chunker: Chunker,
    hasher: ChunkHasher,
    compression_level: i32,
    chunks: ChunkSet,
    packer: mpsc::Sender<EncodedChunk>,
    cpu: CpuPool,
    prefetch: Semaphore,
    tools: Mutex<Vec<FileTools>>,
    pub(super) cancel: CancellationToken,
    /// Bytes read, processed and found stored, as the file tasks go.
    pub(super) live: Arc<LiveProgress>,
    /// The walk's root: files are opened beneath it by relative path.
    /// `None` for a backup of command sources alone.
    source_root: Option<Arc<OwnedFd>>,
}

/// What reading one regular file found (or, for a file carried over
/// unread, what the parent recorded).
pub(super) struct FileContent {
    /// Keyed hash of the whole content.
    pub(super) content_hash: String,
    /// The chunks in file order.
    pub(super) chunks: Vec<ChunkId>,
    /// The `lstat` metadata the content belongs to.
    pub(super) metadata: EntryMetadata,
}

/// Why a regular file was not backed up.
pub(super) enum FileProblem {
    /// Reported for the file; the run goes on.
    Skip(String),
    /// Fails the run.
    Fatal(RunFailure),
}

impl FileContext {
    /// The context of one backup's file tasks: chunks new to `index` go to
    /// `packer`, compressed at the repository's level on all cores; bytes
    /// are counted into `live` as they are read.
    pub(super) fn new(
        repository: &Repository,
        index: Arc<ChunkIndex>,
        packer: mpsc::Sender<EncodedChunk>,
        source_root: Option<Arc<OwnedFd>>,
        live: Arc<LiveProgress>,
        cancel: &CancellationToken,
    ) -> Result<Self, RunFailure> {
        Ok(FileContext {
            chunker: repository.chunker(),
            hasher: repository.hasher().clone(),
            compression_level: repository.settings().compression_level,
            chunks: ChunkSet {
                index,
                queued: Mutex::new(QueuedIds::default()),
            },
            packer,
            cpu: CpuPool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
                .map_err(|e| {
                    RunFailure::retryable(format!("starting the chunking threads: {e}"))
                })?,
            prefetch: Semaphore::new(PREFETCH_FILES),
            tools: Mutex::new(Vec::new()),
            cancel: cancel.clone(),
            live,
            source_root,
        })
    }
}

/// Chunks the repository holds or this run has queued, shared by file tasks
/// so that each new chunk is packed once.
struct ChunkSet {
    index: Arc<ChunkIndex>,
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

/// Reads one regular file: opened early, with the kernel asked to start
/// reading it (up to [`PREFETCH_FILES`] files ahead), then chunked and
/// compressed on the CPU pool. On a cold cache most files of a
/// tree are small, and reading them one or two at a time leaves the disk
/// idle between requests.
pub(super) async fn read_in_turn(
    context: Arc<FileContext>,
    path: Vec<u8>,
) -> Result<FileContent, FileProblem> {
    let cancelled = || FileProblem::Fatal(RunFailure::cancelled());
    let task_failed = |e: tokio::task::JoinError| {
        FileProblem::Fatal(RunFailure::retryable(format!("file task failed: {e}")))
    };
    let _prefetch = context.prefetch.acquire().await.map_err(|_| cancelled())?;
    let open_path = path.clone();
    let root = context.source_root.clone().ok_or_else(|| {
        FileProblem::Fatal(RunFailure::permanent(
            "a file to read without a source tree",
        ))
    })?;
    let file_root = Arc::clone(&root);
    let opened = tokio::task::spawn_blocking(move || {
        let opened = open_regular(&root, &open_path)?;
        prefetch(&opened.0, opened.1.len());
        Ok(opened)
    })
    .await
    .map_err(task_failed)?;
    let task_context = Arc::clone(&context);
    context
        .cpu
        .run(move || read_file(&task_context, &file_root, &path, opened))
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

/// Reads, chunks and hashes one file, queueing its new chunks for packing.
/// A file that changes while it is read is read again.
/// `opened` is the first attempt's [`open_regular`] result.
fn read_file(
    context: &FileContext,
    root: &OwnedFd,
    path: &[u8],
    opened: Result<(File, std::fs::Metadata), FileProblem>,
) -> Result<FileContent, FileProblem> {
    let mut last_change = String::new();
    let mut opened = Some(opened);
    for _ in 0..=MAX_REREADS {
        let (file, before) = match opened.take() {
            Some(first) => first?,
            None => open_regular(root, path)?,
        };
        let read = Cell::new(0);
        // Bytes of an attempt that is not the file's content (it failed, or
        // the file changed and is read again) are taken back out of
        // `bytes_done`; they stay in `bytes_read`.
        let take_back = || {
            context
                .live
                .bytes_done
                .fetch_sub(read.get(), Ordering::Relaxed);
        };
        let (content_hash, chunks) =
            chunk_file(context, file, &read).inspect_err(|_| take_back())?;
        let after = source::open_entry(root, path, OFlags::PATH)
            .and_then(|file| file.metadata())
            .map_err(|e| {
                take_back();
                FileProblem::Skip(format!("vanished while being read: {e}"))
            })?;
        if !changed(&before, &after) {
            return Ok(FileContent {
                content_hash,
                chunks,
                metadata: EntryMetadata::from(&before),
            });
        }
        take_back();
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

/// Opens a regular file beneath the walk's root; a symlink anywhere on
/// the way (a file or directory swapped for one since the walk saw it) is
/// refused, never followed.
fn open_regular(root: &OwnedFd, path: &[u8]) -> Result<(File, std::fs::Metadata), FileProblem> {
    let file = source::open_entry(root, path, OFlags::RDONLY | OFlags::NONBLOCK).map_err(|e| {
        match e.kind() {
            io::ErrorKind::NotFound => FileProblem::Skip("vanished before it could be read".into()),
            _ if beneath::is_symlink_refusal(&e) => {
                FileProblem::Skip("refused: replaced by a symlink while the backup ran".into())
            }
            _ => FileProblem::Skip(format!("cannot open: {e}")),
        }
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

fn chunk_file(
    context: &FileContext,
    file: File,
    read: &Cell<u64>,
) -> Result<(String, Vec<ChunkId>), FileProblem> {
    chunk_reader(
        context,
        CountingReader {
            inner: file,
            live: &context.live,
            read,
        },
    )
}

/// Chunks, hashes and queues for packing everything `reader` yields: a
/// file's content, or a command source's output.
pub(super) fn chunk_reader<R: Read>(
    context: &FileContext,
    reader: R,
) -> Result<(String, Vec<ChunkId>), FileProblem> {
    let mut tools = take_tools(context)?;
    let mut stream = context
        .chunker
        .stream(reader, std::mem::take(&mut tools.buffer));
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
    std::thread::scope(|scope| {
        let mut content = context.hasher.content_hasher();
        let mut ids = Vec::new();
        let mut whole = None;
        let mut read = 0u64;
        let mut helpers: Option<Compressors<'_>> = None;
        while let Some(chunk) = stream.next_chunk() {
            if context.cancel.is_cancelled() {
                return Err(FileProblem::Fatal(RunFailure::cancelled()));
            }
            let chunk = chunk.map_err(|e| FileProblem::Skip(format!("read failed: {e}")))?;
            read += chunk.bytes.len() as u64;
            let id = context.hasher.chunk_id(chunk.bytes);
            // A file that is one chunk has that chunk's id as its content hash
            // (same key, same function), so it is hashed once, not twice.
            if chunk.whole {
                whole = Some(id);
            } else {
                content.update(chunk.bytes);
            }
            ids.push(id);
            if !context.chunks.claim(id) {
                LiveProgress::add(&context.live.bytes_deduplicated, chunk.bytes.len() as u64);
                continue;
            }
            if helpers.is_none() && read >= PARALLEL_AFTER_BYTES {
                helpers = Some(Compressors::start(scope, context)?);
            }
            match &helpers {
                Some(helpers) => helpers.compress(id, chunk.bytes.to_vec())?,
                None => compress_and_queue(context, compressor, id, chunk.bytes)?,
            }
        }
        if let Some(helpers) = helpers {
            helpers.finish()?;
        }
        let content_hash = match whole {
            Some(id) => id.to_hex(),
            None => content.finalize(),
        };
        Ok((content_hash, ids))
    })
}

/// After this many bytes of one file (or command output), its new chunks
/// are compressed on helper threads while its own thread goes on reading,
/// chunking and hashing: a large file is then not bound to one core.
/// Smaller files run side by side on the CPU pool instead.
const PARALLEL_AFTER_BYTES: u64 = 32 << 20;
/// Chunks waiting for a helper, per helper thread.
const QUEUED_PER_HELPER: usize = 2;

fn compress_and_queue(
    context: &FileContext,
    compressor: &mut Compressor,
    id: ChunkId,
    bytes: &[u8],
) -> Result<(), FileProblem> {
    let encoded = encode_chunk(compressor, id, bytes).map_err(|e| {
        FileProblem::Fatal(RunFailure::permanent(format!("compressing a chunk: {e}")))
    })?;
    context
        .packer
        .blocking_send(encoded)
        .map_err(|_| FileProblem::Fatal(RunFailure::retryable("the packer stopped")))
}

/// Threads compressing one large file's new chunks and queueing them for
/// the packer, in whatever order they finish: a pack's blobs are shuffled
/// anyway, and the manifest takes the chunk ids from the reading thread in
/// file order.
struct Compressors<'scope> {
    queue: std::sync::mpsc::SyncSender<(ChunkId, Vec<u8>)>,
    threads: Vec<std::thread::ScopedJoinHandle<'scope, Result<(), FileProblem>>>,
}

impl<'scope> Compressors<'scope> {
    fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        context: &'env FileContext,
    ) -> Result<Self, FileProblem> {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (queue, chunks) =
            std::sync::mpsc::sync_channel::<(ChunkId, Vec<u8>)>(count * QUEUED_PER_HELPER);
        let chunks = Arc::new(Mutex::new(chunks));
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let chunks = Arc::clone(&chunks);
            let mut compressor = new_compressor(context.compression_level).map_err(|e| {
                FileProblem::Fatal(RunFailure::permanent(format!("starting zstd: {e}")))
            })?;
            let thread = std::thread::Builder::new()
                .name(format!("coffer-zstd-{index}"))
                .spawn_scoped(scope, move || loop {
                    // The lock is held only while waiting for the next chunk.
                    let next = chunks.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok((id, bytes)) = next else {
                        return Ok(());
                    };
                    compress_and_queue(context, &mut compressor, id, &bytes)?;
                })
                .map_err(|e| {
                    FileProblem::Fatal(RunFailure::retryable(format!(
                        "starting a compression thread: {e}"
                    )))
                })?;
            threads.push(thread);
        }
        Ok(Compressors { queue, threads })
    }

    /// Hands a chunk to the helpers; when they all stopped, their failure.
    fn compress(&self, id: ChunkId, bytes: Vec<u8>) -> Result<(), FileProblem> {
        if self.queue.send((id, bytes)).is_ok() {
            return Ok(());
        }
        Err(FileProblem::Fatal(RunFailure::retryable(
            "the compression threads stopped",
        )))
    }

    /// Waits until every handed chunk is queued for the packer.
    fn finish(self) -> Result<(), FileProblem> {
        drop(self.queue);
        let mut result = Ok(());
        for thread in self.threads {
            let outcome = thread.join().unwrap_or_else(|_| {
                Err(FileProblem::Fatal(RunFailure::retryable(
                    "a compression thread failed",
                )))
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
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

/// Counts bytes as they are read, for progress within large files: into
/// the run's live counters and into `read`, this attempt's count.
struct CountingReader<'a> {
    inner: File,
    live: &'a LiveProgress,
    read: &'a Cell<u64>,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)? as u64;
        LiveProgress::add(&self.live.bytes_read, read);
        LiveProgress::add(&self.live.bytes_done, read);
        self.read.set(self.read.get() + read);
        Ok(read as usize)
    }
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
