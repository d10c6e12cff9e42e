//! What the catalog knows of S3 Object Lock: until when each snapshot's
//! manifest is locked (`runs.locked_until`), so that retention waits for it
//! and the API can say until when a bucket's snapshots are immutable.
//!
//! The recorded date is an upper bound of the real one: a lease records
//! its attempt's hard deadline plus the lock the attempt writes (or
//! extends) with, and no object of the attempt can be locked later than
//! that. Retention may then wait a little longer than needed, never less.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::from_sqlx;
use super::{in_transaction, on_pool, on_read_pool, Catalog};
use crate::error::DomainResult;

/// Moves a run's `locked_until` to `until` unless it is already later.
const RAISE_LOCK_SQL: &str = "UPDATE runs SET locked_until = $2 \
     WHERE id = $1 AND (locked_until IS NULL OR locked_until < $2)";

/// Lowers a run's `locked_until` to `until` when it is later.
const LOWER_LOCK_SQL: &str =
    "UPDATE runs SET locked_until = $2 WHERE id = $1 AND locked_until > $2";

/// How many snapshots (succeeded backups) a bucket holds, and the locks of
/// its newest and oldest.
const BUCKET_LOCKS_SQL: &str = "SELECT COUNT(*), \
     (SELECT locked_until FROM runs WHERE target_bucket_id = $1 AND kind = 'backup' \
      AND state = 'succeeded' ORDER BY finish_time DESC, id DESC LIMIT 1), \
     (SELECT locked_until FROM runs WHERE target_bucket_id = $1 AND kind = 'backup' \
      AND state = 'succeeded' ORDER BY finish_time, id LIMIT 1) \
     FROM runs WHERE target_bucket_id = $1 AND kind = 'backup' AND state = 'succeeded'";

/// Until when a bucket's snapshots are locked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotLocks {
    /// Snapshots stored in the bucket.
    pub count: i64,
    /// The newest snapshot's lock, when it has one.
    pub newest_locked_until: Option<DateTime<Utc>>,
    /// The oldest snapshot's lock, when it has one.
    pub oldest_locked_until: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Records that the objects of `runs` are locked until at least `until`
    /// (a date already later is kept).
    pub async fn raise_snapshot_locks(
        &self,
        runs: &[Uuid],
        until: DateTime<Utc>,
    ) -> DomainResult<()> {
        if runs.is_empty() {
            return Ok(());
        }
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            for run in runs {
                sqlx::query(RAISE_LOCK_SQL)
                    .bind(run)
                    .bind(until)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "run"))?;
            }
            Ok(())
        }))
    }

    /// Lowers the recorded lock of `run` to `until` when it is later: the
    /// real date once the run is committed.
    pub async fn lower_snapshot_lock(&self, run: Uuid, until: DateTime<Utc>) -> DomainResult<()> {
        on_pool!(self, |pool| sqlx::query(LOWER_LOCK_SQL)
            .bind(run)
            .bind(until)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .map_err(|e| from_sqlx(e, "run"))?;
        Ok(())
    }

    /// Until when the newest and the oldest snapshot stored in a bucket are
    /// locked.
    pub async fn snapshot_locks(&self, bucket_id: Uuid) -> DomainResult<SnapshotLocks> {
        let (count, newest_locked_until, oldest_locked_until) =
            on_read_pool!(self, |pool| sqlx::query_as::<
                _,
                (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>),
            >(BUCKET_LOCKS_SQL)
            .bind(bucket_id)
            .fetch_one(pool)
            .await)
            .map_err(|e| from_sqlx(e, "snapshots"))?;
        Ok(SnapshotLocks {
            count,
            newest_locked_until,
            oldest_locked_until,
        })
    }
}
