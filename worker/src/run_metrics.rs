//! A run's progress turned into the worker's Prometheus counters (names in
//! `coffer_telemetry::names`): every report adds what moved since the
//! previous one, so the counters follow a run as it goes, not only when it
//! ends. A retried attempt counts again what it reads and writes again.

use std::sync::Mutex;

use coffer_proto::v1 as pb;
use coffer_telemetry::names;

/// The counters of one attempt of one run.
pub struct RunMetrics {
    kind: String,
    exported: Mutex<pb::RunProgress>,
}

impl RunMetrics {
    /// Counters labelled with the run's `kind` (a `RunKind` value).
    pub fn new(kind: i32) -> Self {
        let kind = pb::RunKind::try_from(kind)
            .map(|kind| kind.as_str_name())
            .unwrap_or("RUN_KIND_UNSPECIFIED");
        let kind = kind
            .strip_prefix("RUN_KIND_")
            .unwrap_or(kind)
            .to_ascii_lowercase();
        RunMetrics {
            kind,
            exported: Mutex::new(pb::RunProgress::default()),
        }
    }

    /// Adds what moved between the last report and `progress`.
    pub fn advance(&self, progress: &pb::RunProgress) {
        let mut exported = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let moved = |now: i64, before: i64| u64::try_from(now.saturating_sub(before)).unwrap_or(0);
        let kind = self.kind.clone();
        for (name, now, before) in [
            (
                names::WORKER_BYTES_READ,
                progress.bytes_read,
                exported.bytes_read,
            ),
            (
                names::WORKER_BYTES_UPLOADED,
                progress.bytes_uploaded,
                exported.bytes_uploaded,
            ),
            (
                names::WORKER_BYTES_DEDUPLICATED,
                progress.bytes_deduplicated,
                exported.bytes_deduplicated,
            ),
            (
                names::WORKER_FILES_PROCESSED,
                progress.files_done,
                exported.files_done,
            ),
            (
                names::WORKER_FILE_ERRORS,
                progress.error_count,
                exported.error_count,
            ),
        ] {
            let delta = moved(now, before);
            if delta > 0 {
                metrics::counter!(name, "kind" => kind.clone()).increment(delta);
            }
        }
        // Counters never go down: a figure reported lower than before (a
        // sample overtaken by an earlier one) is not taken back.
        exported.bytes_read = exported.bytes_read.max(progress.bytes_read);
        exported.bytes_uploaded = exported.bytes_uploaded.max(progress.bytes_uploaded);
        exported.bytes_deduplicated = exported.bytes_deduplicated.max(progress.bytes_deduplicated);
        exported.files_done = exported.files_done.max(progress.files_done);
        exported.error_count = exported.error_count.max(progress.error_count);
    }
}
