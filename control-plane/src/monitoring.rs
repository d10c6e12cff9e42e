//! What the control plane exports to Prometheus (the names are in
//! `coffer_telemetry::names`): events counted where they happen (leases,
//! run ends, scheduler ticks, catalog operations) and gauges computed from
//! the catalog when `/metrics` is scraped (queue, workers, job freshness).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use coffer_telemetry::names;
use coffer_telemetry::Refresh;
use uuid::Uuid;

use crate::catalog::leases::LeaseSettings;
use crate::catalog::monitoring::QueueGroup;
use crate::catalog::workers::fresh_since;
use crate::catalog::Catalog;
use crate::error::DomainResult;
use crate::model::run::{Run, RunState};

/// Selectors exported one by one; the queue of any others is summed under
/// `other`, so that tenants choosing selectors cannot grow the series.
const MAX_SELECTORS: usize = 20;

/// Times one catalog operation, recorded under the catalog module that ran
/// it when dropped (so an early return by `?` is timed too). Used by the
/// catalog's `on_pool!` macros, its one entry point.
pub struct CatalogTimer {
    operation: &'static str,
    started: Instant,
}

impl CatalogTimer {
    /// Starts timing an operation of `module` (a `module_path!()`).
    pub fn start(module: &'static str) -> Self {
        let operation = module
            .strip_prefix("coffer_control_plane::catalog::")
            .unwrap_or(module);
        CatalogTimer {
            operation,
            started: Instant::now(),
        }
    }
}

impl Drop for CatalogTimer {
    fn drop(&mut self) {
        metrics::histogram!(names::CATALOG_OPERATION_DURATION, "operation" => self.operation)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// `count` leases were granted.
pub fn leases_granted(count: usize) {
    metrics::counter!(names::LEASE_GRANTS).increment(count as u64);
}

/// A scheduler tick was handled: it created a run, or was skipped as
/// missed.
pub fn tick_handled(created_run: bool, missed: bool) {
    if created_run {
        metrics::counter!(names::SCHEDULER_TICKS_FIRED).increment(1);
    }
    if missed {
        metrics::counter!(names::SCHEDULER_TICKS_MISSED).increment(1);
    }
}

/// A run was put back in the queue for another attempt.
pub fn run_requeued() {
    metrics::counter!(names::LEASE_REQUEUES).increment(1);
}

/// Counts how the attempt of run `run_id` that just ended left it: queued
/// again, or final (by kind and state, with its duration), as the catalog
/// says now. `expired` says the attempt ended because its lease ran out.
pub async fn attempt_ended(catalog: &Catalog, run_id: Uuid, expired: bool) {
    if expired {
        metrics::counter!(names::LEASE_EXPIRIES).increment(1);
    }
    match catalog.get_run(run_id).await {
        Ok(run) if run.state == RunState::Queued => run_requeued(),
        Ok(run) => run_ended(&run),
        Err(error) => tracing::debug!(run = %run_id, %error, "run not counted in the metrics"),
    }
}

/// Counts `run` if it is final.
pub fn run_ended(run: &Run) {
    if !run.state.is_final() {
        return;
    }
    let kind = run.kind.as_str();
    let state = run.state.as_str();
    metrics::counter!(names::RUNS_FINISHED, "kind" => kind, "state" => state).increment(1);
    let started = run.start_time.unwrap_or(run.create_time);
    if let Some(finished) = run.finish_time {
        let seconds = (finished - started).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!(names::RUN_DURATION, "kind" => kind, "state" => state).record(seconds);
    }
}

/// The gauges computed from `catalog` at every scrape.
pub fn refresh(catalog: Catalog, base: LeaseSettings) -> Refresh {
    Arc::new(move || {
        let catalog = catalog.clone();
        Box::pin(async move {
            if let Err(error) = set_gauges(&catalog, base).await {
                tracing::warn!(%error, "reading the catalog for the metrics failed");
            }
        })
    })
}

async fn set_gauges(catalog: &Catalog, base: LeaseSettings) -> DomainResult<()> {
    let now = catalog.now().await?;
    for (selector, depth, oldest_age) in queue_series(catalog.queue_groups().await?, now) {
        metrics::gauge!(names::QUEUE_DEPTH, "selector" => selector.clone()).set(depth as f64);
        metrics::gauge!(names::QUEUE_OLDEST_AGE, "selector" => selector).set(oldest_age);
    }
    // Connected as ListWorkers and the waiting reasons count: heard within a TTL.
    let ttl = crate::leasing::settings::current(catalog, base).await.ttl;
    let workers = catalog.connected_workers(fresh_since(now, ttl)).await?;
    let free: i64 = workers.iter().map(|w| w.free_slots()).sum();
    metrics::gauge!(names::WORKERS_CONNECTED).set(workers.len() as f64);
    metrics::gauge!(names::WORKER_FREE_SLOTS).set(free as f64);
    for job in catalog.job_freshness().await? {
        let job_id = job.job_id.to_string();
        let last = job.last_success.unwrap_or(job.create_time);
        metrics::gauge!(names::JOB_LAST_SUCCESS, "job_id" => job_id.clone())
            .set(last.timestamp() as f64);
        // A schedule that no longer parses is reported by the scheduler; here
        // it only has no interval.
        if let Some(interval) = schedule_interval(&job.schedule, now) {
            metrics::gauge!(names::JOB_SCHEDULE_INTERVAL, "job_id" => job_id).set(interval);
        }
    }
    Ok(())
}

/// Seconds between the next two ticks of `schedule` after `now`.
fn schedule_interval(schedule: &crate::model::job::Schedule, now: DateTime<Utc>) -> Option<f64> {
    let first = schedule.next_fire_after(now).ok().flatten()?;
    let second = schedule.next_fire_after(first).ok().flatten()?;
    Some((second - first).num_seconds() as f64)
}

/// One series per selector, the longest queues first, the rest summed
/// under `other`: `(selector, depth, seconds the oldest ready run waited)`.
fn queue_series(mut groups: Vec<QueueGroup>, now: DateTime<Utc>) -> Vec<(String, i64, f64)> {
    groups.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.selector.cmp(&b.selector)));
    let age = |group: &QueueGroup| {
        group
            .oldest_ready
            .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let rest = groups.split_off(MAX_SELECTORS.min(groups.len()));
    let mut series: Vec<(String, i64, f64)> = groups
        .iter()
        .map(|group| (selector_label(&group.selector), group.depth, age(group)))
        .collect();
    if !rest.is_empty() {
        let depth = rest.iter().map(|group| group.depth).sum();
        let oldest = rest.iter().map(age).fold(0.0, f64::max);
        series.push(("other".into(), depth, oldest));
    }
    series
}

/// A stored selector as a label value: `key=value` pairs joined by commas,
/// `none` for runs any worker may take.
fn selector_label(stored: &str) -> String {
    let labels: BTreeMap<String, String> = serde_json::from_str(stored).unwrap_or_default();
    if labels.is_empty() {
        return "none".into();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(selector: &str, depth: i64) -> QueueGroup {
        QueueGroup {
            selector: selector.into(),
            depth,
            oldest_ready: None,
        }
    }

    #[test]
    fn selectors_beyond_the_cap_are_summed_under_other() {
        let groups: Vec<QueueGroup> = (0..MAX_SELECTORS + 5)
            .map(|i| group(&format!(r#"{{"zone":"z{i:02}"}}"#), 100 - i as i64))
            .collect();
        let series = queue_series(groups, Utc::now());
        assert_eq!(series.len(), MAX_SELECTORS + 1);
        assert_eq!(series[0].0, "zone=z00");
        let other = series.last().expect("other");
        assert_eq!(other.0, "other");
        let folded: i64 = (MAX_SELECTORS..MAX_SELECTORS + 5)
            .map(|i| 100 - i as i64)
            .sum();
        assert_eq!(other.1, folded);
    }

    #[test]
    fn runs_without_a_selector_are_labelled_none() {
        assert_eq!(selector_label("{}"), "none");
        assert_eq!(selector_label(r#"{"b":"2","a":"1"}"#), "a=1,b=2");
    }
}
