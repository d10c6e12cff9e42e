//! Why a queued run waits, and the queue timeout that ends the wait.
//!
//! The reason is computed from the catalog's view of the connected workers
//! (`Catalog::connected_workers`) with the same rule leasing applies
//! ([`WorkerProfile::accepts`]), so what the API says and what leasing does
//! cannot disagree. It costs one query per read of any number of runs.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::WorkerProfile;
use crate::catalog::leases::{Candidate, LeaseSettings};
use crate::catalog::waiting::ConnectedWorker;
use crate::catalog::workers::fresh_since;
use crate::catalog::{to_json, Catalog};
use crate::error::DomainResult;
use crate::model::configuration::QUEUE_TIMEOUT_SECONDS;
use crate::model::run::{Run, RunSpec, RunState};

/// Most overdue runs one reaper round fails; the rest wait for the next round.
const OVERDUE_PER_ROUND: i64 = 500;

/// Why a queued run is not running yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingReason {
    /// No connected worker carries every label of the selector.
    NoMatchingWorker,
    /// Workers with the labels are connected, but the run's local path is
    /// outside all their roots.
    PathOutsideWorkerRoots,
    /// The retry backoff has not passed.
    Backoff,
    /// Every worker that could take it uses all its slots.
    AllSlotsBusy,
    /// A worker that can take it has a free slot: it is about to be leased.
    Ready,
}

/// A waiting reason with its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The reason.
    pub reason: WaitingReason,
    /// The reason in words, naming the run's own selector or path only
    /// (nothing about other tenants or the workers' configuration).
    pub message: String,
}

impl Waiting {
    fn new(reason: WaitingReason, message: String) -> Self {
        Waiting { reason, message }
    }
}

/// `{key=value, …}`, as selectors are written in messages.
fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Why the queued run `candidate`, ready from `not_before`, waits at `now`
/// given the connected `workers`. Problems no waiting can fix (labels, roots)
/// come before passing ones (backoff, busy slots).
pub fn explain(
    candidate: &Candidate,
    not_before: DateTime<Utc>,
    workers: &[ConnectedWorker],
    now: DateTime<Utc>,
) -> Waiting {
    if workers.is_empty() {
        return Waiting::new(
            WaitingReason::NoMatchingWorker,
            "no worker is connected".to_string(),
        );
    }
    let selector = &candidate.worker_selector;
    let labelled: Vec<&ConnectedWorker> = workers
        .iter()
        .filter(|worker| {
            selector
                .iter()
                .all(|(key, value)| worker.labels.get(key) == Some(value))
        })
        .collect();
    if labelled.is_empty() {
        return Waiting::new(
            WaitingReason::NoMatchingWorker,
            format!("no connected worker has labels {}", format_labels(selector)),
        );
    }
    let profile = |worker: &ConnectedWorker| WorkerProfile {
        labels: worker.labels.clone(),
        source_roots: worker.source_roots.clone(),
        class: worker.class,
    };
    let classed: Vec<&ConnectedWorker> = labelled
        .into_iter()
        .filter(|worker| profile(worker).class_takes(candidate))
        .collect();
    if classed.is_empty() {
        return Waiting::new(
            WaitingReason::NoMatchingWorker,
            "this run deletes from storage and waits for a maintenance worker: no connected \
             worker of class maintenance or all (backup workers are append-only)"
                .to_string(),
        );
    }
    let able: Vec<&ConnectedWorker> = classed
        .into_iter()
        .filter(|worker| profile(worker).accepts(candidate))
        .collect();
    if able.is_empty() {
        let path = serde_json::from_str::<RunSpec>(&candidate.spec)
            .ok()
            .and_then(|spec| spec.local_path().map(str::to_string))
            .unwrap_or_default();
        let workers = if selector.is_empty() {
            "every connected worker".to_string()
        } else {
            format!(
                "every connected worker with labels {}",
                format_labels(selector)
            )
        };
        return Waiting::new(
            WaitingReason::PathOutsideWorkerRoots,
            format!("{path} is outside the roots of {workers}"),
        );
    }
    if not_before > now {
        return Waiting::new(
            WaitingReason::Backoff,
            format!("retrying after {}", not_before.to_rfc3339()),
        );
    }
    if able.iter().all(|worker| worker.free_slots() == 0) {
        return Waiting::new(
            WaitingReason::AllSlotsBusy,
            "every connected worker that can take this run is using all its slots".to_string(),
        );
    }
    Waiting::new(
        WaitingReason::Ready,
        "a connected worker with a free slot can take this run; runs ahead of it in the fair \
         order go first"
            .to_string(),
    )
}

/// Why each of `runs` waits: `Some` for every queued run not being
/// cancelled, `None` for the others. Reads the connected workers once, and
/// only when a run is queued.
/// `base` are the server's lease settings (the TTL says which workers are
/// still connected, see [`fresh_since`]).
pub async fn explain_runs(
    catalog: &Catalog,
    base: LeaseSettings,
    runs: &[Run],
) -> DomainResult<Vec<Option<Waiting>>> {
    let waits = |run: &Run| run.state == RunState::Queued && !run.cancel_requested;
    if !runs.iter().any(waits) {
        return Ok(vec![None; runs.len()]);
    }
    let ttl = super::settings::current(catalog, base).await.ttl;
    let now = catalog.now().await?;
    let workers = catalog.connected_workers(fresh_since(now, ttl)).await?;
    Ok(runs
        .iter()
        .map(|run| {
            waits(run).then(|| {
                let candidate = Candidate {
                    id: run.id,
                    spec: to_json(&run.spec),
                    worker_selector: run.worker_selector.clone(),
                };
                explain(&candidate, run.not_before_time, &workers, now)
            })
        })
        .collect())
}

/// `1h`, `30m` or `45s`: a timeout as an operator wrote it.
fn format_timeout(timeout: Duration) -> String {
    let seconds = timeout.as_secs();
    if seconds >= 3600 && seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds >= 60 && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// The configured queue timeout; `None` when unset or 0 (runs wait forever).
async fn queue_timeout(catalog: &Catalog) -> DomainResult<Option<Duration>> {
    let configured = catalog.configuration_value(QUEUE_TIMEOUT_SECONDS).await?;
    Ok(configured
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs))
}

/// Fails every queued run that has been ready for longer than the queue
/// timeout and that no worker can take now, with the waiting reason as its
/// error. A run a worker could take at once is left to be leased. Each
/// failure is a conditional update, so with several replicas each run fails
/// once. `ttl` is the lease TTL in effect. Returns the runs failed.
pub async fn fail_overdue_runs(catalog: &Catalog, ttl: Duration) -> DomainResult<Vec<Uuid>> {
    let Some(timeout) = queue_timeout(catalog).await? else {
        return Ok(Vec::new());
    };
    let now = catalog.now().await?;
    let ready_before = now - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    let overdue = catalog
        .overdue_queued_runs(ready_before, OVERDUE_PER_ROUND)
        .await?;
    if overdue.is_empty() {
        return Ok(Vec::new());
    }
    let workers = catalog.connected_workers(fresh_since(now, ttl)).await?;
    let mut failed = Vec::new();
    for run in overdue {
        let waiting = explain(&run.candidate, run.not_before_time, &workers, now);
        if waiting.reason == WaitingReason::Ready {
            continue;
        }
        let error = format!(
            "no worker could take this run within {}: {}",
            format_timeout(timeout),
            waiting.message
        );
        if catalog.fail_overdue_run(&run, &error).await? {
            tracing::info!(run = %run.candidate.id, %error, "queued run timed out");
            crate::monitoring::attempt_ended(catalog, run.candidate.id, false).await;
            failed.push(run.candidate.id);
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::worker_class::WorkerClass;

    fn candidate(selector: &[(&str, &str)], spec: &str) -> Candidate {
        Candidate {
            id: Uuid::nil(),
            spec: spec.to_string(),
            worker_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn worker(labels: &[(&str, &str)], slots: i32, leases: i64) -> ConnectedWorker {
        ConnectedWorker {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source_roots: Vec::new(),
            slots,
            leases,
            class: WorkerClass::All,
        }
    }

    #[test]
    fn each_reason_is_chosen_in_order_of_permanence() {
        let now = Utc::now();
        let later = now + chrono::Duration::seconds(30);
        let gpu = candidate(&[("gpu", "yes")], "{}");
        let none: Vec<ConnectedWorker> = Vec::new();
        assert_eq!(
            explain(&gpu, now, &none, now).reason,
            WaitingReason::NoMatchingWorker
        );
        let cpu = vec![worker(&[("gpu", "no")], 2, 0)];
        let waiting = explain(&gpu, later, &cpu, now);
        assert_eq!(waiting.reason, WaitingReason::NoMatchingWorker);
        assert_eq!(waiting.message, "no connected worker has labels {gpu=yes}");
        let busy = vec![worker(&[("gpu", "yes")], 2, 2)];
        assert_eq!(
            explain(&gpu, later, &busy, now).reason,
            WaitingReason::Backoff
        );
        assert_eq!(
            explain(&gpu, now, &busy, now).reason,
            WaitingReason::AllSlotsBusy
        );
        let free = vec![worker(&[("gpu", "yes")], 2, 1)];
        assert_eq!(explain(&gpu, now, &free, now).reason, WaitingReason::Ready);
    }

    #[test]
    fn a_deleting_run_waits_for_a_maintenance_worker() {
        let now = Utc::now();
        let spec = RunSpec::GarbageCollection(crate::model::run::GcSpec {
            target: crate::model::run::Target::Filesystem {
                path: "/backups/repo".into(),
            },
            grace_seconds: 0,
            repack_threshold_percent: 50.0,
        });
        let gc = candidate(&[], &to_json(&spec));
        let append_only = vec![ConnectedWorker {
            class: WorkerClass::Backup,
            ..worker(&[], 2, 0)
        }];
        let waiting = explain(&gc, now, &append_only, now);
        assert_eq!(waiting.reason, WaitingReason::NoMatchingWorker);
        assert!(
            waiting.message.contains("waits for a maintenance worker"),
            "{}",
            waiting.message
        );
    }

    #[test]
    fn timeouts_read_as_written() {
        assert_eq!(format_timeout(Duration::from_secs(3600)), "1h");
        assert_eq!(format_timeout(Duration::from_secs(1800)), "30m");
        assert_eq!(format_timeout(Duration::from_secs(45)), "45s");
        assert_eq!(format_timeout(Duration::from_secs(90)), "90s");
    }
}
