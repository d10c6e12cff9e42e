//! What a run reports while it executes: progress counters, and file records
//! and per-file errors in numbered batches, through a [`Reporter`] (the
//! lease session in production, a collector in tests).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use coffer_proto::v1::{
    ExclusionReason as ProtoReason, FileRecord, RebuiltSnapshot, RunError, RunExclusion, RunPhase,
    RunProgress,
};

use crate::source::{Exclusion, ExclusionReason};

/// Most records (files, errors and exclusions) in one [`RecordBatch`].
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Minimum time between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How often the live counters are sampled into a report while a run is
/// inside one large file (or pack) and reports nothing on its own. Cheap
/// (a few atomic loads into the latest progress); what reaches the control
/// plane is paced by the session's progress interval.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Records produced by a run, sent to the control plane in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    /// 0 for the first batch of an attempt, then 1, 2, …
    pub sequence: i64,
    /// File records.
    pub files: Vec<FileRecord>,
    /// Per-file errors.
    pub errors: Vec<RunError>,
    /// For dry runs: the paths left out.
    pub exclusions: Vec<RunExclusion>,
    /// For catalog rebuilds: the snapshot the files belong to.
    pub snapshot: Option<RebuiltSnapshot>,
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

/// Receives what a run produces, usually forwarding it over the lease
/// session.
pub trait Reporter: Send + Sync {
    /// Latest counters; called often, so it must be cheap and must not block.
    fn progress(&self, progress: &RunProgress);

    /// A batch of records; the run waits for it to be accepted, which gives
    /// the consumer back-pressure. An error fails the run.
    fn batch(&self, batch: RecordBatch) -> impl Future<Output = Result<(), ReportError>> + Send;
}

/// Buffers records into batches and rate-limits progress for one run.
pub struct Batcher<'r, R> {
    reporter: &'r R,
    attempt: i32,
    sequence: i64,
    files: Vec<FileRecord>,
    errors: Vec<RunError>,
    exclusions: Vec<RunExclusion>,
    snapshot: Option<RebuiltSnapshot>,
    last_progress: Option<Instant>,
    live: Arc<LiveProgress>,
    /// The counters moved between files; callers update them directly.
    /// What moves within a file is counted in [`Batcher::live`] and added.
    pub progress: RunProgress,
    /// Per-file errors reported so far.
    pub error_total: u64,
}

impl<'r, R: Reporter> Batcher<'r, R> {
    /// A batcher for attempt `attempt`.
    pub fn new(reporter: &'r R, attempt: i32) -> Self {
        Batcher {
            reporter,
            attempt,
            sequence: 0,
            files: Vec::new(),
            errors: Vec::new(),
            exclusions: Vec::new(),
            snapshot: None,
            last_progress: None,
            live: Arc::new(LiveProgress::new()),
            progress: RunProgress::default(),
            error_total: 0,
        }
    }

    /// Queues a file record, sending a batch when one is full.
    pub async fn file(&mut self, record: FileRecord) -> Result<(), ReportError> {
        self.files.push(record);
        self.flush_if_full().await
    }

    /// Queues a per-file error, sending a batch when one is full.
    pub async fn error(&mut self, path: &[u8], message: String) -> Result<(), ReportError> {
        self.errors.push(RunError {
            path: String::from_utf8_lossy(path).into_owned(),
            message,
            attempt: self.attempt,
            create_time: Some(now_timestamp()),
        });
        self.error_total += 1;
        self.progress.error_count = i64::try_from(self.error_total).unwrap_or(i64::MAX);
        self.flush_if_full().await
    }

    /// Queues a path left out (for a dry run), sending a batch when one is
    /// full.
    pub async fn exclusion(&mut self, exclusion: Exclusion) -> Result<(), ReportError> {
        self.exclusions.push(RunExclusion {
            path: String::from_utf8_lossy(&exclusion.path).into_owned(),
            reason: reason_to_proto(exclusion.reason) as i32,
            rule: exclusion.rule,
            source: exclusion.source,
            attempt: self.attempt,
            size_bytes: to_i64(exclusion.size),
        });
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<(), ReportError> {
        if self.files.len() + self.errors.len() + self.exclusions.len() >= MAX_BATCH_RECORDS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ReportError> {
        if self.files.is_empty() && self.errors.is_empty() && self.exclusions.is_empty() {
            return Ok(());
        }
        let batch = RecordBatch {
            sequence: self.sequence,
            files: std::mem::take(&mut self.files),
            errors: std::mem::take(&mut self.errors),
            exclusions: std::mem::take(&mut self.exclusions),
            snapshot: self.snapshot.clone(),
        };
        self.reporter.batch(batch).await?;
        self.sequence += 1;
        Ok(())
    }

    /// Sends what is queued, then tags the following batches with
    /// `snapshot` (catalog rebuilds send one snapshot's files at a time).
    pub async fn start_snapshot(&mut self, snapshot: RebuiltSnapshot) -> Result<(), ReportError> {
        self.flush().await?;
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Batches sent so far.
    pub fn batch_count(&self) -> i64 {
        self.sequence
    }

    /// The counters moved within files, shared with the threads that read
    /// and write them.
    pub fn live(&self) -> &Arc<LiveProgress> {
        &self.live
    }

    /// Enters `phase` and reports it at once.
    pub fn set_phase(&mut self, phase: RunPhase) {
        self.progress.phase = phase as i32;
        self.report_progress(true);
    }

    /// Marks `files_seen` and `bytes_seen` final.
    pub fn totals_known(&mut self) {
        self.progress.totals_known = true;
    }

    /// The counters with the live ones added, the current rate and an
    /// estimate of the time left.
    pub fn progress_now(&self) -> RunProgress {
        self.live.compose(self.progress.clone())
    }

    /// Reports progress if the last report is old enough (or `force`).
    pub fn report_progress(&mut self, force: bool) {
        let due = self
            .last_progress
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL);
        if force || due {
            self.live.settle(&self.progress);
            self.reporter.progress(&self.progress_now());
            self.last_progress = Some(Instant::now());
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.live.started.elapsed()
    }
}

fn reason_to_proto(reason: ExclusionReason) -> ProtoReason {
    match reason {
        ExclusionReason::ExcludePattern => ProtoReason::ExcludePattern,
        ExclusionReason::IgnoreFile => ProtoReason::IgnoreFile,
        ExclusionReason::CacheTag => ProtoReason::CacheTag,
        ExclusionReason::MarkerFile => ProtoReason::MarkerFile,
        ExclusionReason::SizeLimit => ProtoReason::SizeLimit,
        ExclusionReason::OtherFileSystem => ProtoReason::OtherFileSystem,
    }
}

/// Counters moved while a file is being read or written, by blocking
/// threads and background tasks, so that a single large file shows progress
/// byte by byte rather than in one step when it is done. Each is added to
/// the matching [`Batcher::progress`] counter when progress is reported.
pub struct LiveProgress {
    /// Content bytes processed within files (added to `bytes_done`).
    pub bytes_done: AtomicU64,
    /// Bytes read from the source or from storage (added to `bytes_read`).
    pub bytes_read: AtomicU64,
    /// Content bytes that needed no upload (added to `bytes_deduplicated`).
    pub bytes_deduplicated: AtomicU64,
    /// The packer's count of bytes uploaded, once a packer runs.
    uploads: OnceLock<Arc<AtomicU64>>,
    /// The batcher's counters as last reported, for reports sampled while
    /// the batcher is busy.
    settled: Mutex<RunProgress>,
    started: Instant,
}

impl LiveProgress {
    fn new() -> Self {
        LiveProgress {
            bytes_done: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_deduplicated: AtomicU64::new(0),
            uploads: OnceLock::new(),
            settled: Mutex::new(RunProgress::default()),
            started: Instant::now(),
        }
    }

    /// Follows `uploaded` (a packer's running total) for `bytes_uploaded`.
    pub fn follow_uploads(&self, uploaded: Arc<AtomicU64>) {
        // A run has one packer; a second call keeps the first.
        let _ = self.uploads.set(uploaded);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn settle(&self, progress: &RunProgress) {
        *self.settled.lock().unwrap_or_else(PoisonError::into_inner) = progress.clone();
    }

    /// The last settled counters with the live ones added.
    fn sample(&self) -> RunProgress {
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.compose(settled)
    }

    fn compose(&self, mut progress: RunProgress) -> RunProgress {
        let load = |counter: &AtomicU64| to_i64(counter.load(Ordering::Relaxed));
        progress.bytes_done = progress.bytes_done.saturating_add(load(&self.bytes_done));
        progress.bytes_read = progress.bytes_read.saturating_add(load(&self.bytes_read));
        progress.bytes_deduplicated = progress
            .bytes_deduplicated
            .saturating_add(load(&self.bytes_deduplicated));
        if let Some(uploaded) = self.uploads.get() {
            // The final figure (packs, index and manifest) is set by the run
            // and is never below the packer's.
            progress.bytes_uploaded = progress.bytes_uploaded.max(load(uploaded));
        }
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            progress.bytes_per_second = progress.bytes_done as f64 / seconds;
        }
        progress.eta = estimate_left(&progress);
        progress
    }
}

/// Time left at the current rate, once the totals are known and something
/// moved.
fn estimate_left(progress: &RunProgress) -> Option<prost_types::Duration> {
    if !progress.totals_known || progress.bytes_per_second <= 0.0 {
        return None;
    }
    let left = progress
        .bytes_seen
        .saturating_sub(progress.bytes_done)
        .max(0);
    let seconds = (left as f64 / progress.bytes_per_second).ceil();
    Some(prost_types::Duration {
        seconds: seconds as i64,
        nanos: 0,
    })
}

/// Reports `live` through `reporter` every [`SAMPLE_INTERVAL`], for as long
/// as it is polled (beside the attempt it watches).
pub(crate) async fn sample_progress<R: Reporter>(reporter: &R, live: &LiveProgress) -> Infallible {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the attempt reports its own start.
    tick.tick().await;
    loop {
        tick.tick().await;
        reporter.progress(&live.sample());
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = chrono::Utc::now();
    prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// `n` bytes as a person would write them, e.g. `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
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

/// Saturating conversion for counters.
pub fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A failed run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunFailure {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed (false for a missing source, true
    /// for storage errors).
    pub retryable: bool,
}

impl RunFailure {
    /// A failure another attempt will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure another attempt may not meet.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// The run was cancelled (or its lease lost).
    pub fn cancelled() -> Self {
        Self::retryable("cancelled")
    }
}

impl From<ReportError> for RunFailure {
    fn from(error: ReportError) -> Self {
        RunFailure {
            message: format!("reporting to the control plane: {}", error.message),
            retryable: error.retryable,
        }
    }
}

impl From<crate::repository::RepositoryError> for RunFailure {
    fn from(error: crate::repository::RepositoryError) -> Self {
        if error.is_cancelled() {
            return RunFailure::cancelled();
        }
        RunFailure {
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for RunFailure {
    fn from(error: crate::store::StoreError) -> Self {
        crate::repository::RepositoryError::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }
}
