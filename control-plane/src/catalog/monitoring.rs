//! What the metrics endpoint reads from the catalog when it is scraped: the
//! queue by worker selector and each job's last successful backup. Read
//! from the catalog, not from one replica's memory, so every replica
//! exports the same figures and a restart loses nothing.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::{on_read_pool, Catalog};
use crate::error::DomainResult;
use crate::model::job::Schedule;

/// The queued runs of one worker selector.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueGroup {
    /// The selector as stored (a JSON object of labels).
    pub selector: String,
    /// Queued runs.
    pub depth: i64,
    /// The earliest time one of them became ready to be leased.
    pub oldest_ready: Option<DateTime<Utc>>,
}

/// A job and its last successful backup.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFreshness {
    /// The job.
    pub job_id: Uuid,
    /// Its schedule (expression, time zone, paused).
    pub schedule: Schedule,
    /// When it was created.
    pub create_time: DateTime<Utc>,
    /// When its last successful backup finished, if any.
    pub last_success: Option<DateTime<Utc>>,
}

type JobRow = (
    Uuid,
    String,
    String,
    bool,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

impl Catalog {
    /// The queue, grouped by worker selector.
    pub async fn queue_groups(&self) -> DomainResult<Vec<QueueGroup>> {
        let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = on_read_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT worker_selector, COUNT(*), MIN(not_before_time) FROM runs \
                 WHERE state = 'queued' GROUP BY worker_selector",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(|e| from_sqlx(e, "runs"))?;
        Ok(rows
            .into_iter()
            .map(|(selector, depth, oldest_ready)| QueueGroup {
                selector,
                depth,
                oldest_ready,
            })
            .collect())
    }

    /// Every job with the end of its last successful backup.
    pub async fn job_freshness(&self) -> DomainResult<Vec<JobFreshness>> {
        let rows: Vec<JobRow> = on_read_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT j.id, j.schedule_cron, j.schedule_time_zone, j.schedule_paused, \
                 j.create_time, (SELECT MAX(r.finish_time) FROM runs r WHERE r.job_id = j.id \
                 AND r.kind = 'backup' AND r.state = 'succeeded') FROM jobs j",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(|e| from_sqlx(e, "jobs"))?;
        Ok(rows
            .into_iter()
            .map(
                |(job_id, cron, time_zone, paused, create_time, last_success)| JobFreshness {
                    job_id,
                    schedule: Schedule {
                        cron,
                        time_zone,
                        paused,
                        ..Schedule::default()
                    },
                    create_time,
                    last_success,
                },
            )
            .collect())
    }
}
