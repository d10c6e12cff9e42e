//! What a run reports while it executes: progress counters, and file records
//! and per-file errors in numbered batches, through a [`Reporter`] (the
//! lease session in production, a collector in tests).

use std::future::Future;
use std::time::{Duration, Instant};

use coffer_proto::v1::{FileRecord, RebuiltSnapshot, RunError, RunProgress};

/// Most records (files plus errors) in one [`RecordBatch`].
pub const MAX_BATCH_RECORDS: usize = 1000;
/// Minimum time between two progress reports.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Records produced by a run, sent to the control plane in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBatch {
    /// 0 for the first batch of an attempt, then 1, 2, …
    pub sequence: i64,
    /// File records.
    pub files: Vec<FileRecord>,
    /// Per-file errors.
    pub errors: Vec<RunError>,
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
    snapshot: Option<RebuiltSnapshot>,
    started: Instant,
    last_progress: Option<Instant>,
    /// The counters; callers update them directly.
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
            snapshot: None,
            started: Instant::now(),
            last_progress: None,
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

    async fn flush_if_full(&mut self) -> Result<(), ReportError> {
        if self.files.len() + self.errors.len() >= MAX_BATCH_RECORDS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ReportError> {
        if self.files.is_empty() && self.errors.is_empty() {
            return Ok(());
        }
        let batch = RecordBatch {
            sequence: self.sequence,
            files: std::mem::take(&mut self.files),
            errors: std::mem::take(&mut self.errors),
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

    /// The counters with the current rate.
    pub fn progress_now(&self) -> RunProgress {
        let mut progress = self.progress.clone();
        let seconds = self.started.elapsed().as_secs_f64();
        if seconds > 0.0 {
            progress.bytes_per_second = progress.bytes_done as f64 / seconds;
        }
        progress
    }

    /// Reports progress if the last report is old enough (or `force`).
    pub fn report_progress(&mut self, force: bool) {
        let due = self
            .last_progress
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL);
        if force || due {
            self.reporter.progress(&self.progress_now());
            self.last_progress = Some(Instant::now());
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
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
