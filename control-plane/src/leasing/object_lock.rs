//! What a lease says about S3 Object Lock, and what the catalog records of
//! it. For a run on a bucket that requires the lock:
//!
//! - every run gets the lock to write with (`RunAssignment.object_lock`):
//!   the bucket's minimum, or for a backup the `keep_within` of the policy
//!   that applies when that is longer ([`ObjectLockSettings::write_retention`]);
//! - a backup records its snapshot's lock as its attempt deadline plus that
//!   retention, an upper bound of the real date, and lowers it to its
//!   commit time plus the retention once it succeeded (every object of the
//!   snapshot was written before the commit);
//! - a garbage collection gets the snapshots retention keeps for a reason
//!   other than their own lock (`lock_kept_run_ids`): it extends their locks
//!   and only theirs, and their recorded locks move on accordingly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_proto::v1 as pb;

use crate::api::buckets::object_lock_to_proto;
use crate::catalog::Catalog;
use crate::error::DomainResult;
use crate::model::bucket::ObjectLockSettings;
use crate::model::retention::plan::RetentionScope;
use crate::model::run::{Run, RunSpec};

/// Fills the Object Lock fields of `assignment` for `run`, whose attempt
/// must end by `deadline`, and records the locks it will set.
pub async fn assign(
    catalog: &Catalog,
    run: &Run,
    deadline: DateTime<Utc>,
    assignment: &mut pb::RunAssignment,
) -> DomainResult<()> {
    let Some((lock, bucket_id)) = run_lock(catalog, run).await? else {
        return Ok(());
    };
    assignment.object_lock = Some(object_lock_to_proto(lock));
    let locked_until = after(deadline, lock.min_retention);
    match &run.spec {
        RunSpec::Backup(_) => catalog.raise_snapshot_locks(&[run.id], locked_until).await,
        RunSpec::GarbageCollection(_) => {
            let plan = catalog
                .plan_retention(RetentionScope::Bucket(bucket_id), catalog.now().await?)
                .await?;
            let kept: Vec<_> = plan
                .decisions
                .iter()
                .filter(|decision| decision.keeps_locks())
                .map(|decision| decision.run_id)
                .collect();
            assignment.lock_kept_run_ids = kept.iter().map(ToString::to_string).collect();
            catalog.raise_snapshot_locks(&kept, locked_until).await
        }
        _ => Ok(()),
    }
}

/// After a backup succeeded: its objects were all written before `now`, so
/// its recorded lock comes down to `now` plus the retention they were
/// written with.
pub async fn committed(catalog: &Catalog, run: &Run, now: DateTime<Utc>) -> DomainResult<()> {
    if !matches!(run.spec, RunSpec::Backup(_)) {
        return Ok(());
    }
    let Some((lock, _)) = run_lock(catalog, run).await? else {
        return Ok(());
    };
    catalog
        .lower_snapshot_lock(run.id, after(now, lock.min_retention))
        .await
}

/// `time + retention`, plus the second by which a worker may round a
/// lock date up (S3 keeps whole seconds): never earlier than the real lock.
fn after(time: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    let retention = chrono::Duration::from_std(retention.saturating_add(Duration::from_secs(1)))
        .unwrap_or(chrono::Duration::MAX);
    time.checked_add_signed(retention)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The lock `run` writes with, with its bucket's id: `None` when its target
/// is no bucket with Object Lock. Its `min_retention` is what each object
/// gets: for a backup [`ObjectLockSettings::write_retention`], for other
/// runs the bucket's minimum.
async fn run_lock(
    catalog: &Catalog,
    run: &Run,
) -> DomainResult<Option<(ObjectLockSettings, uuid::Uuid)>> {
    let Some(bucket_id) = run.spec.target().bucket_id() else {
        return Ok(None);
    };
    let bucket = catalog.get_bucket(bucket_id, None).await?;
    let Some(lock) = bucket.spec.object_lock else {
        return Ok(None);
    };
    let retention = match &run.spec {
        RunSpec::Backup(_) => {
            let within = keep_within(catalog, run, bucket.spec.retention_policy_id).await?;
            lock.write_retention(within)
        }
        _ => lock.min_retention,
    };
    let lock = ObjectLockSettings {
        mode: lock.mode,
        min_retention: retention,
    };
    Ok(Some((lock, bucket_id)))
}

/// The `keep_within` of the policy that applies to a backup: its job's,
/// else its bucket's; `None` when neither has one.
async fn keep_within(
    catalog: &Catalog,
    run: &Run,
    bucket_policy: Option<uuid::Uuid>,
) -> DomainResult<Option<Duration>> {
    let job_policy = match run.job_id {
        Some(job_id) => catalog.get_job(job_id).await?.draft.retention_policy_id,
        None => None,
    };
    let Some(policy_id) = job_policy.or(bucket_policy) else {
        return Ok(None);
    };
    let policy = catalog.get_retention_policy(policy_id, None).await?;
    let seconds = policy.spec.rules.keep_within_seconds;
    Ok(u64::try_from(seconds)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs))
}
