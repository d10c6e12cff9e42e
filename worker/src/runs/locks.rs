//! Object Lock maintenance for garbage collection, both halves of it driven
//! by the one eligibility rule [`lock_action`]: the locks of what kept
//! snapshots need are extended before they run out (kopia's
//! `blob_retain`), and what nothing needs is deleted only once its lock
//! has passed. Nothing unneeded is ever extended, so garbage always becomes
//! deletable.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::store::{lock_action, LockAction, ObjectLock, Store, StoreError};

/// Lock reads and extensions in flight at once.
const LOCK_PARALLELISM: usize = 8;

/// Extends the lock of every key in `needed` that ends within the margin
/// (a key gone meanwhile is skipped). Returns how many were extended.
pub async fn extend_needed(
    store: &Store,
    lock: &ObjectLock,
    needed: Vec<String>,
    cancel: &CancellationToken,
) -> Result<u64, StoreError> {
    let extended = stream::iter(needed)
        .map(|key| async move {
            let until = match store.retain_until(&key, cancel).await {
                Ok(until) => until,
                Err(StoreError::NotFound { .. }) => return Ok(0),
                Err(other) => return Err(other),
            };
            match lock_action(lock, true, until, Utc::now()) {
                LockAction::Extend(to) => {
                    store.extend_lock(&key, to, cancel).await?;
                    Ok(1)
                }
                _ => Ok(0),
            }
        })
        .buffer_unordered(LOCK_PARALLELISM)
        .try_fold(0u64, |total, one| async move { Ok(total + one) })
        .await?;
    Ok(extended)
}

/// The latest lock among `unneeded` keys that has not passed yet: `None`
/// when every one of them may be deleted now (a missing key is no obstacle).
pub async fn locked_until(
    store: &Store,
    lock: &ObjectLock,
    unneeded: Vec<String>,
    cancel: &CancellationToken,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let now = Utc::now();
    stream::iter(unneeded)
        .map(|key| async move {
            match store.retain_until(&key, cancel).await {
                Ok(until) => Ok(until),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(other) => Err(other),
            }
        })
        .buffer_unordered(LOCK_PARALLELISM)
        .try_fold(None, |latest, until| async move {
            Ok(match lock_action(lock, false, until, now) {
                LockAction::WaitUntil(until) => latest.max(Some(until)),
                _ => latest,
            })
        })
        .await
}
