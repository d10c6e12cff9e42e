//! Every metric Coffer exports: its name, type, labels and help text, in
//! one table. The code records through these constants; the alert rules and
//! the dashboard under `k8s/monitoring/` are checked against the table.
//!
//! Labels are bounded: run kinds and states, operation names fixed in the
//! code, job ids (one series per job, not per run) and worker selectors
//! (capped, the rest folded into `other`). No run ids, paths or tenant
//! names.

/// How a metric behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (reset when the process restarts).
    Counter,
    /// Set to the current value.
    Gauge,
    /// Observations in buckets (seconds).
    Histogram,
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Prometheus name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// Help text.
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

/// Runs that reached a final state, by kind and state (control plane).
pub const RUNS_FINISHED: &str = "coffer_runs_finished_total";
/// Seconds from a run's last start to its end, by kind and state.
pub const RUN_DURATION: &str = "coffer_run_duration_seconds";
/// Leases granted to workers.
pub const LEASE_GRANTS: &str = "coffer_lease_grants_total";
/// Leases that ran out (worker lost, or attempt deadline passed).
pub const LEASE_EXPIRIES: &str = "coffer_lease_expiries_total";
/// Runs put back in the queue for another attempt.
pub const LEASE_REQUEUES: &str = "coffer_lease_requeues_total";
/// Queued runs, by worker selector.
pub const QUEUE_DEPTH: &str = "coffer_queue_depth";
/// Seconds the longest-waiting ready run has waited, by worker selector.
pub const QUEUE_OLDEST_AGE: &str = "coffer_queue_oldest_age_seconds";
/// Workers with an open lease session.
pub const WORKERS_CONNECTED: &str = "coffer_workers_connected";
/// Slots of connected workers not taken by a lease.
pub const WORKER_FREE_SLOTS: &str = "coffer_worker_free_slots";
/// Scheduler ticks that created a run.
pub const SCHEDULER_TICKS_FIRED: &str = "coffer_scheduler_ticks_fired_total";
/// Scheduler ticks reached too late (skipped or run once for several).
pub const SCHEDULER_TICKS_MISSED: &str = "coffer_scheduler_ticks_missed_total";
/// Seconds per catalog operation, by the catalog module that ran it.
pub const CATALOG_OPERATION_DURATION: &str = "coffer_catalog_operation_duration_seconds";
/// Unix time of each job's last successful backup (its creation time
/// before the first one), for staleness alerts.
pub const JOB_LAST_SUCCESS: &str = "coffer_job_last_success_timestamp_seconds";
/// Seconds between two ticks of each scheduled job.
pub const JOB_SCHEDULE_INTERVAL: &str = "coffer_job_schedule_interval_seconds";
/// Bytes workers read (from the source, or from storage), by run kind.
pub const WORKER_BYTES_READ: &str = "coffer_worker_bytes_read_total";
/// Bytes workers wrote to storage, by run kind.
pub const WORKER_BYTES_UPLOADED: &str = "coffer_worker_bytes_uploaded_total";
/// Content bytes that needed no upload (already stored), by run kind.
pub const WORKER_BYTES_DEDUPLICATED: &str = "coffer_worker_bytes_deduplicated_total";
/// Entries workers processed, by run kind.
pub const WORKER_FILES_PROCESSED: &str = "coffer_worker_files_processed_total";
/// Per-file errors workers reported, by run kind.
pub const WORKER_FILE_ERRORS: &str = "coffer_worker_file_errors_total";
/// Seconds per S3 request (retries included), by operation.
pub const S3_REQUEST_DURATION: &str = "coffer_s3_request_duration_seconds";
/// S3 requests that failed after their retries, by operation.
pub const S3_REQUEST_ERRORS: &str = "coffer_s3_request_errors_total";
/// S3 request attempts beyond the first, by operation.
pub const S3_REQUEST_RETRIES: &str = "coffer_s3_request_retries_total";
/// Notification delivery attempts, by channel kind and outcome
/// (`delivered`, `retry`, `failed`).
pub const NOTIFICATION_DELIVERIES: &str = "coffer_notification_deliveries_total";

/// The whole table.
pub const METRICS: &[Metric] = &[
    metric(
        RUNS_FINISHED,
        Kind::Counter,
        &["kind", "state"],
        "Runs that reached a final state.",
    ),
    metric(
        RUN_DURATION,
        Kind::Histogram,
        &["kind", "state"],
        "Seconds from a run's last start to its end.",
    ),
    metric(
        LEASE_GRANTS,
        Kind::Counter,
        &[],
        "Leases granted to workers.",
    ),
    metric(
        LEASE_EXPIRIES,
        Kind::Counter,
        &[],
        "Leases that ran out (worker lost or attempt deadline passed).",
    ),
    metric(
        LEASE_REQUEUES,
        Kind::Counter,
        &[],
        "Runs put back in the queue for another attempt.",
    ),
    metric(
        QUEUE_DEPTH,
        Kind::Gauge,
        &["selector"],
        "Queued runs by worker selector.",
    ),
    metric(
        QUEUE_OLDEST_AGE,
        Kind::Gauge,
        &["selector"],
        "Seconds the longest-waiting ready run has waited, by worker selector.",
    ),
    metric(
        WORKERS_CONNECTED,
        Kind::Gauge,
        &[],
        "Workers with an open lease session.",
    ),
    metric(
        WORKER_FREE_SLOTS,
        Kind::Gauge,
        &[],
        "Slots of connected workers not taken by a lease.",
    ),
    metric(
        SCHEDULER_TICKS_FIRED,
        Kind::Counter,
        &[],
        "Scheduler ticks that created a run.",
    ),
    metric(
        SCHEDULER_TICKS_MISSED,
        Kind::Counter,
        &[],
        "Scheduler ticks reached too late.",
    ),
    metric(
        CATALOG_OPERATION_DURATION,
        Kind::Histogram,
        &["operation"],
        "Seconds per catalog operation, by catalog module.",
    ),
    metric(
        JOB_LAST_SUCCESS,
        Kind::Gauge,
        &["job_id"],
        "Unix time of the job's last successful backup (its creation before the first).",
    ),
    metric(
        JOB_SCHEDULE_INTERVAL,
        Kind::Gauge,
        &["job_id"],
        "Seconds between two ticks of the job's schedule.",
    ),
    metric(
        WORKER_BYTES_READ,
        Kind::Counter,
        &["kind"],
        "Bytes read from the source or from storage.",
    ),
    metric(
        WORKER_BYTES_UPLOADED,
        Kind::Counter,
        &["kind"],
        "Bytes written to storage.",
    ),
    metric(
        WORKER_BYTES_DEDUPLICATED,
        Kind::Counter,
        &["kind"],
        "Content bytes that needed no upload.",
    ),
    metric(
        WORKER_FILES_PROCESSED,
        Kind::Counter,
        &["kind"],
        "Entries processed.",
    ),
    metric(
        WORKER_FILE_ERRORS,
        Kind::Counter,
        &["kind"],
        "Per-file errors reported.",
    ),
    metric(
        S3_REQUEST_DURATION,
        Kind::Histogram,
        &["operation"],
        "Seconds per S3 request, retries included.",
    ),
    metric(
        S3_REQUEST_ERRORS,
        Kind::Counter,
        &["operation"],
        "S3 requests that failed after their retries.",
    ),
    metric(
        S3_REQUEST_RETRIES,
        Kind::Counter,
        &["operation"],
        "S3 request attempts beyond the first.",
    ),
    metric(
        NOTIFICATION_DELIVERIES,
        Kind::Counter,
        &["channel", "outcome"],
        "Notification delivery attempts by channel kind and outcome (delivered, retry, failed).",
    ),
];

/// The metric named `name`, if Coffer exports it. Histograms are also
/// found by the names of their series (`_bucket`, `_sum`, `_count`).
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|metric| {
        metric.name == name
            || (metric.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(metric.name)))
    })
}
