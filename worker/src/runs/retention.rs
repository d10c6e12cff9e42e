//! Retention runs: deleting the manifests of the snapshots a retention plan
//! does not keep. The control plane removes them from the catalog when the
//! run succeeds; the data only they needed is left to garbage collection.

use std::sync::Arc;

use coffer_format::layout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run_attempt;
use crate::report::{Batcher, Reporter, RunFailure};
use crate::store::{Store, StoreError};

/// One snapshot to remove.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The snapshot's run id.
    pub run_id: Uuid,
    /// Its manifest's key.
    pub manifest_key: String,
    /// The store holding it.
    pub store: Arc<Store>,
}

/// What a retention run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSummary {
    /// Human-readable summary.
    pub details: String,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
}

/// Deletes every removal's manifest. Deleting one that is already gone
/// succeeds, so a retried attempt finishes what a killed one began.
pub async fn run_retention<R: Reporter>(
    removals: Vec<Removal>,
    lease_token: i64,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<RetentionSummary, RunFailure> {
    run_attempt(reporter, lease_token, &cancel, async |batcher| {
        remove(&removals, batcher, &cancel).await
    })
    .await
}

async fn remove<R: Reporter>(
    removals: &[Removal],
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<RetentionSummary, RunFailure> {
    batcher.progress.files_seen = removals.len() as i64;
    for removal in removals {
        // Only ever a manifest, and the one of the snapshot named.
        if layout::parse_manifest_key(&removal.manifest_key) != Some(removal.run_id) {
            return Err(RunFailure::permanent(format!(
                "{:?} is not the manifest of snapshot {}",
                removal.manifest_key, removal.run_id
            )));
        }
    }
    for removal in removals {
        // The committed manifest, then any other attempt's of the same run
        // (a lost lease's, never committed), so that no copy of a removed
        // snapshot is left for a catalog rebuild to bring back.
        let mut keys = vec![removal.manifest_key.clone()];
        let others = removal
            .store
            .list(&layout::manifest_key(removal.run_id), cancel)
            .await?;
        keys.extend(others.into_iter().filter(|key| {
            *key != removal.manifest_key && layout::parse_manifest_key(key) == Some(removal.run_id)
        }));
        for key in keys {
            match removal.store.delete(&key, cancel).await {
                Ok(()) => {}
                // An uncommitted attempt's manifest written after the
                // committed one may be locked longer: garbage collection
                // deletes it once its lock has passed.
                Err(StoreError::Locked { .. }) if key != removal.manifest_key => {}
                Err(error) => {
                    return Err(RunFailure {
                        message: format!("deleting {key}: {error}"),
                        retryable: error.is_retryable(),
                    })
                }
            }
        }
        batcher.progress.files_done += 1;
        batcher.report_progress(false);
    }
    Ok(RetentionSummary {
        details: format!("removed {} snapshots", removals.len()),
        progress: batcher.progress_now(),
    })
}
