//! What the catalog knows about why queued runs wait: the connected workers
//! with their labels, roots, slots and leases, and the queue timeout's
//! conditional failure. State is read from the catalog, never from one
//! process's memory, so every replica gives the same answer.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::leases::Candidate;
use super::{on_pool, Catalog};
use crate::error::DomainResult;
use crate::model::worker_class::{self, WorkerClass};

/// A worker with an open session, as leasing sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectedWorker {
    /// Labels matched against run selectors.
    pub labels: BTreeMap<String, String>,
    /// Roots it may read and write below (empty: any).
    pub source_roots: Vec<String>,
    /// Parallel slots it announced.
    pub slots: i32,
    /// Runs it holds a lease on now.
    pub leases: i64,
    /// Which runs it takes.
    pub class: WorkerClass,
}

impl ConnectedWorker {
    /// Slots not taken by a lease.
    pub fn free_slots(&self) -> i64 {
        (i64::from(self.slots) - self.leases).max(0)
    }
}

/// A queued run waiting longer than allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct OverdueRun {
    /// The run as leasing sees it.
    pub candidate: Candidate,
    /// When it became ready to be leased.
    pub not_before_time: DateTime<Utc>,
}

type WorkerLoadRow = (String, String, i32, i64, String);

impl Catalog {
    /// Every worker whose session is open and that was heard of since
    /// `fresh_since` (see [`super::workers::fresh_since`]), with its current
    /// lease count. A worker whose replica died stays marked connected, but
    /// its row is no longer touched, so it drops out here as it does from
    /// `ListWorkers`.
    pub async fn connected_workers(
        &self,
        fresh_since: DateTime<Utc>,
    ) -> DomainResult<Vec<ConnectedWorker>> {
        let rows: Vec<WorkerLoadRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT w.labels, w.source_roots, w.slots, \
             (SELECT COUNT(*) FROM runs r WHERE r.worker_id = w.id AND r.state = 'running'), \
             w.class FROM workers w WHERE w.connected AND w.last_seen_time >= $1 ORDER BY w.name"
        )
        .bind(fresh_since)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "workers"))?;
        Ok(rows
            .into_iter()
            .map(|(labels, roots, slots, leases, class)| ConnectedWorker {
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                source_roots: serde_json::from_str(&roots).unwrap_or_default(),
                slots,
                leases,
                class: worker_class::from_column(&class),
            })
            .collect())
    }

    /// Up to `limit` queued runs (not being cancelled) ready since before
    /// `ready_before`, longest waiting first.
    pub async fn overdue_queued_runs(
        &self,
        ready_before: DateTime<Utc>,
        limit: i64,
    ) -> DomainResult<Vec<OverdueRun>> {
        let rows: Vec<(Uuid, String, String, DateTime<Utc>)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, spec, worker_selector, not_before_time FROM runs \
                 WHERE state = 'queued' AND NOT cancel_requested AND not_before_time < $1 \
                 ORDER BY not_before_time, id LIMIT $2",
            )
            .bind(ready_before)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| from_sqlx(e, "queued runs"))?;
        Ok(rows
            .into_iter()
            .map(|(id, spec, selector, not_before_time)| OverdueRun {
                candidate: Candidate {
                    id,
                    spec,
                    worker_selector: serde_json::from_str(&selector).unwrap_or_default(),
                },
                not_before_time,
            })
            .collect())
    }

    /// Fails a queued run with `error`, if it is still queued exactly as
    /// `overdue` saw it (same `not_before_time`, not leased, requeued or
    /// cancelled meanwhile). The conditional update makes the failure happen
    /// once however many replicas try. Returns whether this call failed it.
    pub async fn fail_overdue_run(&self, overdue: &OverdueRun, error: &str) -> DomainResult<bool> {
        let now = self.now().await?;
        let failed = on_pool!(self, |pool| sqlx::query(
            "UPDATE runs SET state = 'failed', error = $2, finish_time = $3, update_time = $3 \
             WHERE id = $1 AND state = 'queued' AND NOT cancel_requested AND not_before_time = $4"
        )
        .bind(overdue.candidate.id)
        .bind(error)
        .bind(now)
        .bind(overdue.not_before_time)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "run"))?;
        if failed > 0 {
            self.publish_run(overdue.candidate.id);
        }
        Ok(failed > 0)
    }
}
