//! Running one backup attempt: walk the source, store every regular file's
//! content once per repository, report progress and file records, and write
//! the snapshot manifest last.
//!
//! # Repository format v0 (interim)
//!
//! * `data/<first 2 hex>/<blake3 hex>` — the whole content of a regular file,
//!   named by its BLAKE3 hash. A file whose content object already exists is
//!   not uploaded again, so identical files are stored once per repository.
//! * `snapshots/<run id>.json` — the [`Manifest`]: format name and version,
//!   run, source path, creation time and every entry (raw path as base64,
//!   kind, size, mode, owner, times, content hash and key, symlink target).
//!   It is written after all content, so a manifest never names a missing
//!   object.
//!
//! The chunked, compressed format replaces this behind the same entry point.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use coffer_proto::v1::{FileRecord, JobOptions, RunError, RunProgress};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::source::{self, Entry, EntryError, EntryKind, EntryMetadata, WalkItem, WalkOptions};
use crate::store::{Store, StoreError};

/// Name of the repository format written by this module.
pub const FORMAT_NAME: &str = "coffer-v0";
/// Version of [`FORMAT_NAME`].
pub const FORMAT_VERSION: u32 = 0;
/// Content hash algorithm of content objects and manifests.
pub const HASH_ALGORITHM: &str = "blake3";
/// Most records (files plus errors) in one [`RecordBatch`].
pub const MAX_BATCH_RECORDS: usize = 1000;
/// A file that keeps changing while it is read is re-read this many times
/// before it is reported as a per-file error.
pub const MAX_REREADS: u32 = 3;

/// Files hashed and uploaded at once.
const FILE_PARALLELISM: usize = 4;
/// Files up to this size are held in memory between hashing and upload;
/// larger ones are staged in a temporary file.
const IN_MEMORY_LIMIT: u64 = 8 << 20;
/// Read buffer size; cancellation is checked once per buffer.
const READ_BUFFER: usize = 1 << 20;
/// Minimum time between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The key of the content object of a file whose BLAKE3 hash is `hash_hex`.
pub fn content_key(hash_hex: &str) -> String {
    let fanout = hash_hex.get(..2).unwrap_or(hash_hex);
    format!("data/{fanout}/{hash_hex}")
}

/// The key of the manifest of run `run_id`.
pub fn manifest_key(run_id: Uuid) -> String {
    format!("snapshots/{run_id}.json")
}

/// Everything one backup attempt needs.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    /// The run being executed.
    pub run_id: Uuid,
    /// The lease token (attempt number) the run was leased with.
    pub lease_token: i64,
    /// Absolute path of the source tree (or single file).
    pub source: PathBuf,
    /// How the source is read.
    pub options: JobOptions,
    /// The repository written to.
    pub store: Arc<Store>,
    /// Manifest of the previous snapshot in the same repository, recorded in
    /// the new manifest (incremental reading comes with the chunked format).
    pub parent_manifest_key: Option<String>,
    /// Directory for staging copies of large files before upload; the system
    /// temporary directory when `None`.
    pub staging_dir: Option<PathBuf>,
}

/// Records produced by a backup, sent to the control plane in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    /// 0 for the first batch of an attempt, then 1, 2, …
    pub sequence: i64,
    /// Entries backed up.
    pub files: Vec<FileRecord>,
    /// Per-file errors.
    pub errors: Vec<RunError>,
}

/// A reporter could not deliver a batch (e.g. the lease was lost).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReportError {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// Receives what a backup produces, usually forwarding it over the lease
/// session.
pub trait Reporter: Send + Sync {
    /// Latest counters; called often, so it must be cheap and must not block.
    fn progress(&self, progress: &RunProgress);

    /// A batch of records; the backup waits for it to be accepted, which
    /// gives the consumer back-pressure. An error fails the backup.
    fn batch(&self, batch: RecordBatch) -> impl Future<Output = Result<(), ReportError>> + Send;
}

/// A successful backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// Total size of the regular files backed up.
    pub size_bytes: i64,
    /// Entries in the snapshot (files, directories, symlinks, others).
    pub file_count: i64,
    /// Batches sent to the reporter.
    pub batch_count: i64,
    /// Key of the snapshot manifest.
    pub manifest_key: String,
    /// Human-readable summary for the run's metadata.
    pub details: String,
    /// Final counters.
    pub progress: RunProgress,
}

/// A failed backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackupFailure {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed (false for a missing source, true
    /// for storage errors).
    pub retryable: bool,
}

impl BackupFailure {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    fn cancelled() -> Self {
        Self {
            message: "cancelled".into(),
            retryable: true,
        }
    }

    fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::Cancelled => Self::cancelled(),
            other => Self {
                retryable: other.is_retryable(),
                message: format!("storage: {other}"),
            },
        }
    }
}

/// A snapshot manifest (`snapshots/<run id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Always [`FORMAT_VERSION`].
    pub version: u32,
    /// Always [`HASH_ALGORITHM`].
    pub hash_algorithm: String,
    /// The run that wrote it.
    pub run_id: Uuid,
    /// The attempt that wrote it.
    pub lease_token: i64,
    /// The source path backed up (lossy UTF-8).
    pub source_path: String,
    /// When the manifest was written (RFC 3339, UTC).
    pub created_at: String,
    /// The previous snapshot's manifest, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_manifest_key: Option<String>,
    /// Every entry, in walk order.
    pub entries: Vec<ManifestEntry>,
    /// Entries that could not be backed up.
    #[serde(default)]
    pub errors: Vec<ManifestError>,
}

/// One entry of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the source root, raw bytes in standard base64.
    pub path_b64: String,
    /// `regular`, `directory`, `symlink`, `fifo`, `socket`, `char_device` or `block_device`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Status change time, seconds since the epoch.
    pub ctime_sec: i64,
    /// Nanoseconds of the status change time.
    pub ctime_nsec: u32,
    /// Inode number.
    pub inode: u64,
    /// BLAKE3 hash (hex) of a regular file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Key of a regular file's content object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<String>,
    /// Target of a symlink, raw bytes in standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target_b64: Option<String>,
}

impl ManifestEntry {
    /// The raw path bytes.
    pub fn path(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.path_b64)
    }

    /// The raw symlink target, if this is a symlink.
    pub fn symlink_target(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        self.symlink_target_b64.as_ref().map(|t| BASE64.decode(t))
    }
}

/// An entry of a [`Manifest`] that could not be backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    /// Path relative to the source root, raw bytes in standard base64.
    pub path_b64: String,
    /// What went wrong.
    pub message: String,
}

/// Runs one backup attempt of `plan`.
///
/// Per-file problems (unreadable, vanished, constantly changing files) are
/// reported and skipped; they fail the run only with
/// `options.fail_on_file_errors`. Storage errors and reporter errors fail it.
/// When `cancel` fires the backup stops promptly with the failure
/// `cancelled`; content already uploaded stays (it is content-addressed and
/// harmless) but no manifest is written.
pub async fn run_backup<R: Reporter>(
    plan: BackupPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<BackupSummary, BackupFailure> {
    let mut run = RunState::new(&plan, reporter);
    let result = run.execute(&plan, &cancel).await;
    reporter.progress(&run.progress_now());
    result
}

/// What happened to one regular file.
struct FileOutcome {
    hash: String,
    key: String,
    metadata: EntryMetadata,
    /// Bytes uploaded, or `None` when the content object already existed.
    uploaded: Option<u64>,
}

/// Why a regular file was not backed up.
enum FileProblem {
    /// Reported for the file; the run goes on.
    Skip(String),
    /// Fails the run.
    Fatal(BackupFailure),
}

/// Shared by the per-file tasks.
struct FileContext {
    store: Arc<Store>,
    cancel: CancellationToken,
    staging_dir: PathBuf,
    /// Content keys already known to exist (or being uploaded) in this run,
    /// so identical files are checked and uploaded once.
    known: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

struct RunState<'r, R> {
    reporter: &'r R,
    run_id: Uuid,
    attempt: i32,
    started: Instant,
    last_progress: Option<Instant>,
    progress: RunProgress,
    sequence: i64,
    pending_files: Vec<FileRecord>,
    pending_errors: Vec<RunError>,
    /// Manifest entries keyed by walk position, sorted at the end.
    entries: Vec<(u64, ManifestEntry)>,
    errors: Vec<ManifestError>,
    size_bytes: u64,
    new_objects: u64,
    kinds: HashMap<EntryKind, u64>,
}

impl<'r, R: Reporter> RunState<'r, R> {
    fn new(plan: &BackupPlan, reporter: &'r R) -> Self {
        Self {
            reporter,
            run_id: plan.run_id,
            attempt: i32::try_from(plan.lease_token).unwrap_or(i32::MAX),
            started: Instant::now(),
            last_progress: None,
            progress: RunProgress::default(),
            sequence: 0,
            pending_files: Vec::new(),
            pending_errors: Vec::new(),
            entries: Vec::new(),
            errors: Vec::new(),
            size_bytes: 0,
            new_objects: 0,
            kinds: HashMap::new(),
        }
    }

    async fn execute(
        &mut self,
        plan: &BackupPlan,
        cancel: &CancellationToken,
    ) -> Result<BackupSummary, BackupFailure> {
        let walk_options = WalkOptions {
            exclude: plan.options.exclude.clone(),
            one_file_system: plan.options.one_file_system,
        };
        let mut walk = source::walk(&plan.source, &walk_options, cancel)
            .await
            .map_err(|e| BackupFailure::permanent(e.to_string()))?;
        let context = Arc::new(FileContext {
            store: Arc::clone(&plan.store),
            cancel: cancel.clone(),
            staging_dir: plan.staging_dir.clone().unwrap_or_else(std::env::temp_dir),
            known: Mutex::new(HashMap::new()),
        });
        let mut tasks: JoinSet<(u64, Entry, Result<FileOutcome, FileProblem>)> = JoinSet::new();
        let mut walk_done = false;
        let mut position = 0u64;
        while !(walk_done && tasks.is_empty()) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(BackupFailure::cancelled()),
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let (at, entry, outcome) = joined.map_err(|e| {
                        BackupFailure::retryable(format!("file task failed: {e}"))
                    })?;
                    self.file_finished(at, entry, outcome)?;
                }
                item = walk.next(), if !walk_done && tasks.len() < FILE_PARALLELISM => {
                    match item {
                        None => walk_done = true,
                        Some(WalkItem::Error(error)) => self.entry_error(error),
                        Some(WalkItem::Entry(entry)) => {
                            position += 1;
                            self.entry_seen(&entry);
                            if entry.kind == EntryKind::Regular {
                                let context = Arc::clone(&context);
                                tasks.spawn(async move {
                                    let outcome = back_up_file(&context, &entry).await;
                                    (position, entry, outcome)
                                });
                            } else {
                                self.other_entry(position, &entry);
                            }
                        }
                    }
                }
            }
            if self.pending_files.len() + self.pending_errors.len() >= MAX_BATCH_RECORDS {
                self.flush().await?;
            }
            self.report_progress(false);
        }
        if cancel.is_cancelled() {
            return Err(BackupFailure::cancelled());
        }
        self.flush().await?;
        self.report_progress(true);
        if plan.options.fail_on_file_errors && !self.errors.is_empty() {
            return Err(BackupFailure::permanent(format!(
                "{} file error(s) and fail_on_file_errors is set; first: {}: {}",
                self.errors.len(),
                lossy_b64(&self.errors[0].path_b64),
                self.errors[0].message
            )));
        }
        self.write_manifest(plan, cancel).await
    }

    fn entry_seen(&mut self, entry: &Entry) {
        self.progress.files_seen += 1;
        if entry.kind == EntryKind::Regular {
            self.progress.bytes_seen += to_i64(entry.metadata.size);
            self.progress.current_path = String::from_utf8_lossy(&entry.path).into_owned();
        }
    }

    fn entry_error(&mut self, error: EntryError) {
        self.progress.error_count += 1;
        self.pending_errors.push(RunError {
            path: String::from_utf8_lossy(&error.path).into_owned(),
            message: error.message.clone(),
            attempt: self.attempt,
            create_time: Some(now_timestamp()),
        });
        self.errors.push(ManifestError {
            path_b64: BASE64.encode(&error.path),
            message: error.message,
        });
    }

    /// Records a directory, symlink or special file, which need no upload.
    fn other_entry(&mut self, position: u64, entry: &Entry) {
        self.progress.files_done += 1;
        *self.kinds.entry(entry.kind).or_default() += 1;
        self.entries
            .push((position, manifest_entry(entry, &entry.metadata, None)));
        // The catalog knows regular files, directories and symlinks; special
        // files live only in the manifest.
        if matches!(entry.kind, EntryKind::Directory | EntryKind::Symlink) {
            self.pending_files
                .push(file_record(entry, &entry.metadata, None));
        }
    }

    fn file_finished(
        &mut self,
        position: u64,
        entry: Entry,
        outcome: Result<FileOutcome, FileProblem>,
    ) -> Result<(), BackupFailure> {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(FileProblem::Fatal(failure)) => return Err(failure),
            Err(FileProblem::Skip(message)) => {
                self.progress.files_done += 1;
                self.entry_error(EntryError {
                    path: entry.path,
                    message,
                });
                return Ok(());
            }
        };
        self.progress.files_done += 1;
        self.progress.bytes_done += to_i64(outcome.metadata.size);
        if let Some(uploaded) = outcome.uploaded {
            self.progress.bytes_uploaded += to_i64(uploaded);
            self.new_objects += 1;
        }
        self.size_bytes += outcome.metadata.size;
        *self.kinds.entry(EntryKind::Regular).or_default() += 1;
        let content = Some((outcome.hash.as_str(), outcome.key.as_str()));
        self.entries
            .push((position, manifest_entry(&entry, &outcome.metadata, content)));
        self.pending_files
            .push(file_record(&entry, &outcome.metadata, content));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), BackupFailure> {
        while !self.pending_files.is_empty() || !self.pending_errors.is_empty() {
            let take_files = self.pending_files.len().min(MAX_BATCH_RECORDS);
            let take_errors = self
                .pending_errors
                .len()
                .min(MAX_BATCH_RECORDS - take_files);
            let batch = RecordBatch {
                sequence: self.sequence,
                files: self.pending_files.drain(..take_files).collect(),
                errors: self.pending_errors.drain(..take_errors).collect(),
            };
            self.reporter
                .batch(batch)
                .await
                .map_err(|e| BackupFailure {
                    message: format!("reporting file records: {}", e.message),
                    retryable: e.retryable,
                })?;
            self.sequence += 1;
        }
        Ok(())
    }

    fn progress_now(&self) -> RunProgress {
        let mut progress = self.progress.clone();
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            progress.bytes_per_second = progress.bytes_done as f64 / seconds;
        }
        progress
    }

    fn report_progress(&mut self, force: bool) {
        let due = self
            .last_progress
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL);
        if force || due {
            self.reporter.progress(&self.progress_now());
            self.last_progress = Some(Instant::now());
        }
    }

    async fn write_manifest(
        &mut self,
        plan: &BackupPlan,
        cancel: &CancellationToken,
    ) -> Result<BackupSummary, BackupFailure> {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_key(|(position, _)| *position);
        let file_count = entries.len();
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            hash_algorithm: HASH_ALGORITHM.into(),
            run_id: self.run_id,
            lease_token: plan.lease_token,
            source_path: plan.source.to_string_lossy().into_owned(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            parent_manifest_key: plan.parent_manifest_key.clone(),
            entries: entries.into_iter().map(|(_, entry)| entry).collect(),
            errors: std::mem::take(&mut self.errors),
        };
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| BackupFailure::permanent(format!("encoding the manifest: {e}")))?;
        let key = manifest_key(self.run_id);
        plan.store
            .put_bytes(&key, json, cancel)
            .await
            .map_err(BackupFailure::from_store)?;
        let progress = self.progress_now();
        Ok(BackupSummary {
            size_bytes: to_i64(self.size_bytes),
            file_count: to_i64(file_count as u64),
            batch_count: self.sequence,
            manifest_key: key,
            details: self.details(&progress, manifest.errors.len()),
            progress,
        })
    }

    fn details(&self, progress: &RunProgress, error_count: usize) -> String {
        let count = |kind| self.kinds.get(&kind).copied().unwrap_or(0);
        let special = count(EntryKind::Fifo)
            + count(EntryKind::Socket)
            + count(EntryKind::CharDevice)
            + count(EntryKind::BlockDevice);
        format!(
            "{} files, {} directories, {} symlinks, {} special files; {} backed up, \
             {} uploaded in {} new objects; {} file errors; {:.1} s",
            count(EntryKind::Regular),
            count(EntryKind::Directory),
            count(EntryKind::Symlink),
            special,
            human_bytes(self.size_bytes),
            human_bytes(u64::try_from(progress.bytes_uploaded).unwrap_or(0)),
            self.new_objects,
            error_count,
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// Hashes a regular file and makes sure its content object exists, re-reading
/// it when it changes underneath.
async fn back_up_file(context: &FileContext, entry: &Entry) -> Result<FileOutcome, FileProblem> {
    for _ in 0..=MAX_REREADS {
        let read = match read_file(context, &entry.abs_path).await {
            Ok(read) => read,
            Err(ReadError::Changed) => continue,
            Err(ReadError::Cancelled) => {
                return Err(FileProblem::Fatal(BackupFailure::cancelled()))
            }
            Err(ReadError::Failed(message)) => return Err(FileProblem::Skip(message)),
        };
        let key = content_key(&read.hash);
        match ensure_object(context, &key, &entry.abs_path, &read).await {
            Ok(uploaded) => {
                return Ok(FileOutcome {
                    hash: read.hash,
                    key,
                    metadata: read.metadata,
                    uploaded,
                })
            }
            Err(EnsureError::Read(ReadError::Changed)) => continue,
            Err(EnsureError::Read(ReadError::Cancelled)) => {
                return Err(FileProblem::Fatal(BackupFailure::cancelled()))
            }
            Err(EnsureError::Read(ReadError::Failed(message))) => {
                return Err(FileProblem::Skip(message))
            }
            Err(EnsureError::Store(e)) => {
                return Err(FileProblem::Fatal(BackupFailure::from_store(e)))
            }
        }
    }
    Err(FileProblem::Skip(format!(
        "file changed while being read, {} times in a row",
        MAX_REREADS + 1
    )))
}

/// A file read from start to end without changing.
struct FileRead {
    hash: String,
    metadata: EntryMetadata,
    /// The content, for files small enough to hold in memory.
    content: Option<Vec<u8>>,
}

enum ReadError {
    /// Size or times differ before and after the read; read it again.
    Changed,
    Cancelled,
    /// Vanished, unreadable, or no longer a regular file.
    Failed(String),
}

enum EnsureError {
    Read(ReadError),
    Store(StoreError),
}

async fn read_file(context: &FileContext, path: &Path) -> Result<FileRead, ReadError> {
    let path = path.to_path_buf();
    let cancel = context.cancel.clone();
    tokio::task::spawn_blocking(move || read_file_blocking(&path, &cancel))
        .await
        .map_err(|e| ReadError::Failed(format!("read task failed: {e}")))?
}

fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), ReadError> {
    let file = File::options()
        .read(true)
        // The walk saw a regular file; never follow a symlink swapped in since.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::Failed("file vanished before it was read".into()),
            _ if e.raw_os_error() == Some(libc::ELOOP) => {
                ReadError::Failed("file was replaced by a symlink".into())
            }
            _ => ReadError::Failed(format!("cannot open: {e}")),
        })?;
    let metadata = file
        .metadata()
        .map_err(|e| ReadError::Failed(format!("cannot stat: {e}")))?;
    if !metadata.is_file() {
        return Err(ReadError::Failed("no longer a regular file".into()));
    }
    Ok((file, metadata))
}

fn read_file_blocking(path: &Path, cancel: &CancellationToken) -> Result<FileRead, ReadError> {
    let (mut file, before) = open_regular(path)?;
    let mut content = (before.len() <= IN_MEMORY_LIMIT)
        .then(|| Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0)));
    let mut hasher = blake3::Hasher::new();
    let total = read_all(&mut file, cancel, |chunk| {
        hasher.update(chunk);
        if let Some(content) = content.as_mut() {
            if (content.len() + chunk.len()) as u64 > IN_MEMORY_LIMIT {
                // It grew while we read it.
                return Err(ReadError::Changed);
            }
            content.extend_from_slice(chunk);
        }
        Ok(())
    })?;
    let after = file
        .metadata()
        .map_err(|e| ReadError::Failed(format!("cannot stat: {e}")))?;
    if changed(&before, &after) || total != after.len() {
        return Err(ReadError::Changed);
    }
    Ok(FileRead {
        hash: hasher.finalize().to_hex().to_string(),
        metadata: EntryMetadata::from(&after),
        content,
    })
}

/// Reads `file` to its end in buffers, handing each to `sink`.
fn read_all(
    file: &mut File,
    cancel: &CancellationToken,
    mut sink: impl FnMut(&[u8]) -> Result<(), ReadError>,
) -> Result<u64, ReadError> {
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(ReadError::Cancelled);
        }
        let n = match file.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Failed(format!("cannot read: {e}"))),
        };
        sink(&buffer[..n])?;
        total += n as u64;
    }
}

fn changed(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.len() != after.len()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.ctime() != after.ctime()
        || before.ctime_nsec() != after.ctime_nsec()
}

/// Makes sure the content object `key` exists, uploading it if needed, at
/// most once per run for identical content. Returns the bytes uploaded, or
/// `None` when the object already existed.
async fn ensure_object(
    context: &FileContext,
    key: &str,
    path: &Path,
    read: &FileRead,
) -> Result<Option<u64>, EnsureError> {
    let cell = {
        let mut known = context.known.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(known.entry(key.to_owned()).or_default())
    };
    let mut uploaded = None;
    cell.get_or_try_init(|| async {
        let store = &context.store;
        if store
            .exists(key, &context.cancel)
            .await
            .map_err(EnsureError::Store)?
        {
            return Ok(());
        }
        if let Some(content) = &read.content {
            store
                .put_bytes(key, content.clone(), &context.cancel)
                .await
                .map_err(EnsureError::Store)?;
            uploaded = Some(content.len() as u64);
            return Ok(());
        }
        // Large file: upload a private copy whose hash we have checked, so
        // the object always matches its name even if the file changes now.
        let staged = stage_copy(context, path, &read.hash).await?;
        uploaded = Some(
            store
                .put_file(key, staged.path(), &context.cancel)
                .await
                .map_err(EnsureError::Store)?,
        );
        Ok(())
    })
    .await?;
    Ok(uploaded)
}

/// Copies `path` into a temporary file in the staging directory and checks
/// that the copy still hashes to `expected_hash`.
async fn stage_copy(
    context: &FileContext,
    path: &Path,
    expected_hash: &str,
) -> Result<tempfile::NamedTempFile, EnsureError> {
    let path = path.to_path_buf();
    let staging_dir = context.staging_dir.clone();
    let expected_hash = expected_hash.to_owned();
    let cancel = context.cancel.clone();
    tokio::task::spawn_blocking(move || {
        let (mut file, _) = open_regular(&path).map_err(EnsureError::Read)?;
        let mut staged = tempfile::NamedTempFile::new_in(&staging_dir).map_err(|e| {
            EnsureError::Store(StoreError::Io {
                context: format!("creating a staging file in {}", staging_dir.display()),
                source: e,
            })
        })?;
        let mut hasher = blake3::Hasher::new();
        let mut write_error = None;
        read_all(&mut file, &cancel, |chunk| {
            hasher.update(chunk);
            staged.write_all(chunk).map_err(|e| {
                let message = format!("writing a staging file: {e}");
                write_error = Some(e);
                ReadError::Failed(message)
            })
        })
        .map_err(|e| match write_error.take() {
            Some(source) => EnsureError::Store(StoreError::Io {
                context: "writing a staging file".into(),
                source,
            }),
            None => EnsureError::Read(e),
        })?;
        if hasher.finalize().to_hex().as_str() != expected_hash {
            return Err(EnsureError::Read(ReadError::Changed));
        }
        Ok(staged)
    })
    .await
    .map_err(|e| EnsureError::Read(ReadError::Failed(format!("staging task failed: {e}"))))?
}

fn manifest_entry(
    entry: &Entry,
    metadata: &EntryMetadata,
    content: Option<(&str, &str)>,
) -> ManifestEntry {
    ManifestEntry {
        path_b64: BASE64.encode(&entry.path),
        kind: entry.kind.as_str().into(),
        size: metadata.size,
        mode: metadata.mode & 0o7777,
        uid: metadata.uid,
        gid: metadata.gid,
        mtime_sec: metadata.mtime.seconds,
        mtime_nsec: metadata.mtime.nanos,
        ctime_sec: metadata.ctime.seconds,
        ctime_nsec: metadata.ctime.nanos,
        inode: metadata.inode,
        content_hash: content.map(|(hash, _)| hash.to_owned()),
        storage_key: content.map(|(_, key)| key.to_owned()),
        symlink_target_b64: entry.symlink_target.as_ref().map(|t| BASE64.encode(t)),
    }
}

fn file_record(
    entry: &Entry,
    metadata: &EntryMetadata,
    content: Option<(&str, &str)>,
) -> FileRecord {
    FileRecord {
        path: entry.path.clone(),
        kind: entry.kind.as_str().into(),
        size_bytes: to_i64(metadata.size),
        mode: metadata.mode & 0o7777,
        uid: metadata.uid,
        gid: metadata.gid,
        mtime: Some(prost_types::Timestamp {
            seconds: metadata.mtime.seconds,
            nanos: i32::try_from(metadata.mtime.nanos).unwrap_or(0),
        }),
        content_hash: content.map(|(hash, _)| hash.to_owned()).unwrap_or_default(),
        symlink_target: entry.symlink_target.clone().unwrap_or_default(),
        storage_key: content.map(|(_, key)| key.to_owned()).unwrap_or_default(),
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn lossy_b64(path_b64: &str) -> String {
    BASE64
        .decode(path_b64)
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_else(|_| path_b64.to_owned())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_fan_out_by_the_first_two_hex_digits() {
        assert_eq!(content_key("abcdef"), "data/ab/abcdef");
    }

    #[test]
    fn byte_counts_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }
}
