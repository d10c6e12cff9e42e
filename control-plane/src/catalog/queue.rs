//! The order in which queued runs are offered to a worker, and the scan that
//! walks it (`Catalog::acquire_runs` in `leases.rs` grants what it finds).
//!
//! - **Selectors are filtered in the query.** Only runs whose worker selector
//!   the worker's labels satisfy are read (JSON containment on PostgreSQL,
//!   `json_each` on SQLite), so any number of runs no connected worker can take
//!   never stand in front of the others.
//! - **Fair between owners.** Candidates are ordered by their rank among the
//!   ready queued runs of their owner, then by `not_before_time` and id: every
//!   owner's first run comes before any owner's second, so one owner's
//!   thousand queued runs delay another owner's single run by at most one
//!   lease per owner ahead of it.
//! - **Keyset scan, bounded.** What the query cannot decide (the worker's
//!   source roots, checked in Rust by the caller) is skipped by reading on
//!   after the last row seen, page by page, up to [`MAX_SCANNED`] rows per
//!   call, so one lease call never takes long whatever the queue holds.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::leases::Candidate;
use super::{on_pool, Backend, Catalog, Pool};
use crate::error::DomainResult;

/// Most queued rows one lease call reads before it gives up for this round
/// (the session tries again within a second).
pub const MAX_SCANNED: usize = 2048;

/// Whether the run's selector (`runs.worker_selector`) is a subset of the
/// worker's labels (`$2`, a JSON object), per dialect.
fn selector_matches(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "worker_selector::jsonb <@ $2::jsonb",
        Backend::Sqlite => {
            "NOT EXISTS (SELECT 1 FROM json_each(runs.worker_selector) s WHERE NOT EXISTS \
             (SELECT 1 FROM json_each($2) l WHERE l.key = s.key AND l.value = s.value))"
        }
    }
}

/// One page of the fair order after the cursor `($3, $4, $5)`: ready queued
/// runs the labels `$2` may take at `$1`, at most `$6`.
fn page_sql(backend: Backend) -> String {
    format!(
        "SELECT id, spec, worker_selector, owner_rank, not_before_time FROM ( \
           SELECT id, spec, worker_selector, not_before_time, \
             ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY not_before_time, id) AS owner_rank \
           FROM runs WHERE state = 'queued' AND not_before_time <= $1 AND NOT cancel_requested \
             AND {} \
         ) ranked WHERE (owner_rank, not_before_time, id) > ($3, $4, $5) \
         ORDER BY owner_rank, not_before_time, id LIMIT $6",
        selector_matches(backend)
    )
}

/// A walk through the fair order of the queue, for one worker at one time.
pub struct QueueScan {
    now: DateTime<Utc>,
    labels_json: String,
    page_size: i64,
    cursor: (i64, DateTime<Utc>, Uuid),
    buffer: VecDeque<Candidate>,
    scanned: usize,
    exhausted: bool,
}

impl QueueScan {
    /// A scan at `now` for a worker carrying `labels`, reading pages sized
    /// for a request of `max` runs.
    pub fn new(now: DateTime<Utc>, labels: &BTreeMap<String, String>, max: usize) -> Self {
        let page_size = max.saturating_mul(4).saturating_add(16).clamp(32, 256);
        QueueScan {
            now,
            labels_json: super::to_json(labels),
            page_size: i64::try_from(page_size).unwrap_or(256),
            cursor: (0, now, Uuid::nil()),
            buffer: VecDeque::new(),
            scanned: 0,
            exhausted: false,
        }
    }
}

type PageRow = (Uuid, String, String, i64, DateTime<Utc>);

impl Catalog {
    /// The next candidate of the scan, or `None` when the queue holds no
    /// more for this worker or the scan reached [`MAX_SCANNED`] rows.
    pub async fn next_candidate(&self, scan: &mut QueueScan) -> DomainResult<Option<Candidate>> {
        if scan.buffer.is_empty() && !scan.exhausted {
            self.read_page(scan).await?;
        }
        Ok(scan.buffer.pop_front())
    }

    async fn read_page(&self, scan: &mut QueueScan) -> DomainResult<()> {
        let remaining = MAX_SCANNED.saturating_sub(scan.scanned);
        let limit = scan
            .page_size
            .min(i64::try_from(remaining).unwrap_or(i64::MAX));
        if limit == 0 {
            scan.exhausted = true;
            return Ok(());
        }
        let sql = page_sql(self.backend());
        let (rank, not_before, id) = scan.cursor;
        let rows: Vec<PageRow> = on_pool!(self, |pool| sqlx::query_as(&sql)
            .bind(scan.now)
            .bind(&scan.labels_json)
            .bind(rank)
            .bind(not_before)
            .bind(id)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "queued runs"))?;
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < limit {
            scan.exhausted = true;
        }
        scan.scanned += rows.len();
        for (id, spec, selector, rank, not_before) in rows {
            scan.cursor = (rank, not_before, id);
            scan.buffer.push_back(Candidate {
                id,
                spec,
                worker_selector: serde_json::from_str(&selector).unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// How long until the next queued run waiting for its retry backoff
    /// becomes ready (`None`: none waits). Nothing announces that moment, so
    /// the assignment coordinator sets a timer for it. One statement, on the
    /// database clock where there is one.
    pub async fn next_ready_in(&self) -> DomainResult<Option<std::time::Duration>> {
        let seconds: Option<f64> = match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(
                "SELECT EXTRACT(EPOCH FROM MIN(not_before_time) - now())::float8 FROM runs \
                 WHERE state = 'queued' AND NOT cancel_requested AND not_before_time > now()",
            )
            .fetch_one(pool)
            .await
            .map_err(|e| from_sqlx(e, "queued runs"))?,
            Pool::Sqlite(_) => {
                let now = Utc::now();
                let next: Option<DateTime<Utc>> = on_pool!(self, |pool| sqlx::query_scalar(
                    "SELECT MIN(not_before_time) FROM runs \
                     WHERE state = 'queued' AND NOT cancel_requested AND not_before_time > $1"
                )
                .bind(now)
                .fetch_one(pool)
                .await)
                .map_err(|e| from_sqlx(e, "queued runs"))?;
                next.and_then(|next| (next - now).to_std().ok())
                    .map(|wait| wait.as_secs_f64())
            }
        };
        // A run put off to `infinity` sets no timer (the safety tick remains).
        Ok(seconds
            .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds.max(0.0)).ok()))
    }

    /// The labels a worker registered with, as the catalog holds them.
    pub async fn worker_labels(&self, worker_id: Uuid) -> DomainResult<BTreeMap<String, String>> {
        let labels: Option<String> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT labels FROM workers WHERE id = $1"
        )
        .bind(worker_id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "worker"))?;
        Ok(labels
            .and_then(|labels| serde_json::from_str(&labels).ok())
            .unwrap_or_default())
    }
}
