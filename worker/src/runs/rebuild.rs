//! Rebuilding the catalog from storage: every snapshot manifest of a
//! repository, oldest first, is streamed to the control plane as file
//! records tagged with the snapshot's header, so that the control plane can
//! recreate the snapshot runs and their versions after losing its database.

use std::sync::Arc;

use coffer_format::layout::{self, SNAPSHOTS_PREFIX};
use coffer_proto::v1::RebuiltSnapshot;
use tokio_util::sync::CancellationToken;

use super::backup::record::file_record;
use super::run_attempt;
use crate::report::{Batcher, Reporter, RunFailure};
use crate::repository::{IndexUse, PinnedGeneration, Repository, RepositoryAccess};
use crate::store::Store;

/// A finished rebuild.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildSummary {
    /// Snapshots found.
    pub snapshots: u64,
    /// Human-readable summary.
    pub details: String,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
    /// The format found (1 or 2) and the identity in storage.
    pub found: (u32, String),
    /// The current key generation of a v2 repository.
    pub generation: Option<PinnedGeneration>,
}

/// Reads every manifest of the repository in `store` (opened as `access`
/// allows) and reports it.
pub async fn run_rebuild<R: Reporter>(
    store: Arc<Store>,
    access: &RepositoryAccess,
    lease_token: i64,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<RebuildSummary, RunFailure> {
    run_attempt(reporter, lease_token, &cancel, async |batcher| {
        rebuild(&store, access, batcher, &cancel).await
    })
    .await
}

/// Reports every manifest, oldest first, one snapshot's files at a time.
async fn rebuild<R: Reporter>(
    store: &Arc<Store>,
    access: &RepositoryAccess,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<RebuildSummary, RunFailure> {
    let repository = Repository::open(Arc::clone(store), access, cancel).await?;
    // One manifest per run: its latest attempt's, the only one that can
    // have been committed (earlier attempts had lost their lease). In
    // run-id order, and run ids are UUIDv7: by id is by time, the order
    // snapshots are recorded in.
    let manifests = layout::select_manifests(store.list(SNAPSHOTS_PREFIX, cancel).await?).latest;
    let mut entries = 0u64;
    // Loaded once for the tree blobs of every v2 manifest.
    let index = match repository.version() {
        1 => None,
        _ => Some(repository.load_index(IndexUse::Read, cancel).await?),
    };
    for (run_id, key) in &manifests {
        if cancel.is_cancelled() {
            return Err(RunFailure::cancelled());
        }
        let mut reader = repository
            .read_manifest(key, index.as_ref(), cancel)
            .await?;
        let header = reader.header().clone();
        if header.run_id != *run_id {
            return Err(RunFailure::permanent(format!(
                "manifest {key} names run {} inside",
                header.run_id
            )));
        }
        batcher
            .start_snapshot(RebuiltSnapshot {
                run_id: run_id.to_string(),
                job_id: header.job_id.map(|id| id.to_string()).unwrap_or_default(),
                source_path: header.source_path.clone(),
                create_time: Some(prost_types::Timestamp {
                    seconds: header.created.timestamp(),
                    nanos: i32::try_from(header.created.timestamp_subsec_nanos()).unwrap_or(0),
                }),
                manifest_key: key.clone(),
                size_bytes: 0,
            })
            .await?;
        while let Some(entry) = reader
            .next_entry()
            .map_err(|e| RunFailure::permanent(format!("manifest {key}: {e}")))?
        {
            batcher.file(file_record(&entry)).await?;
            entries += 1;
            batcher.progress.files_done += 1;
        }
        batcher.report_progress(false);
    }
    batcher.flush().await?;
    Ok(RebuildSummary {
        snapshots: manifests.len() as u64,
        details: format!(
            "read {} snapshot manifests with {entries} entries",
            manifests.len()
        ),
        progress: batcher.progress_now(),
        found: (repository.version(), repository.repository_id().to_owned()),
        generation: repository.generation(),
    })
}
