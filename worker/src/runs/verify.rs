//! Verifying a snapshot: every chunk its files need must be in the index
//! and its pack must exist; a chosen share of the packs is downloaded in
//! full, checked against its name, and every needed chunk in it decoded and
//! re-hashed. Each damaged file is reported by path with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coffer_format::layout::{self, PACKS_PREFIX};
use coffer_format::pack::{blob_slice, read_pack_v2};
use coffer_format::{ChunkId, ChunkLocation, EntryKind, PackId};
use coffer_proto::v1::RunPhase;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run_attempt;
use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::repository::{IndexUse, Repository, RepositoryAccess};
use crate::store::{Store, StoreError};

/// Packs downloaded at once.
const PACK_PARALLELISM: usize = 4;

/// Everything one verify attempt needs.
#[derive(Debug, Clone)]
pub struct VerifyPlan {
    /// The verify run.
    pub run_id: Uuid,
    /// Its lease token.
    pub lease_token: i64,
    /// The repository's store.
    pub store: Arc<Store>,
    /// The repository as the lease describes it.
    pub repository: RepositoryAccess,
    /// Key of the snapshot's manifest.
    pub manifest_key: String,
    /// Share (0–100) of the snapshot's packs re-read.
    pub read_data_percent: f64,
}

/// A verified snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifySummary {
    /// Human-readable summary.
    pub details: String,
    /// Batches sent.
    pub batch_count: i64,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
}

/// Runs one verify attempt. A snapshot with damage is a non-retryable
/// failure whose errors name every damaged file.
pub async fn run_verify<R: Reporter>(
    plan: VerifyPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<VerifySummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

/// Whether pack `id` is in the re-read sample: a deterministic, uniform
/// choice by id, so a rerun with the same share checks the same packs.
fn sampled(id: &PackId, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let bytes = id.as_bytes();
    let value = u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]);
    (value % 10_000) as f64 / 100.0 < percent
}

#[allow(clippy::too_many_lines)]
async fn execute<R: Reporter>(
    plan: &VerifyPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<VerifySummary, RunFailure> {
    batcher.set_phase(RunPhase::Preparing);
    let repository = Repository::open(Arc::clone(&plan.store), &plan.repository, cancel).await?;
    let index = repository.load_index(IndexUse::Read, cancel).await?;
    let present: HashSet<PackId> = plan
        .store
        .list(PACKS_PREFIX, cancel)
        .await?
        .iter()
        .filter_map(|key| layout::parse_pack_key(key))
        .collect();

    // Pass 1: is everything there? Collect what each pack must hold.
    batcher.set_phase(RunPhase::Scanning);
    let mut damaged: HashMap<ChunkId, String> = HashMap::new();
    let mut needed: HashMap<PackId, HashMap<ChunkId, ChunkLocation>> = HashMap::new();
    let mut files = 0u64;
    let mut bytes = 0u64;
    {
        let mut manifest = repository
            .read_manifest(&plan.manifest_key, Some(&index), cancel)
            .await?;
        while let Some(entry) = manifest
            .next_entry()
            .map_err(|e| RunFailure::permanent(format!("manifest {}: {e}", plan.manifest_key)))?
        {
            if entry.kind() != EntryKind::File {
                continue;
            }
            files += 1;
            bytes += entry.attributes.size;
            batcher.progress.files_seen += 1;
            batcher.progress.bytes_seen += to_i64(entry.attributes.size);
            for id in entry.chunks {
                let Some(location) = index.get(&id) else {
                    damaged.insert(id, format!("chunk {id} is in no index (missing)"));
                    continue;
                };
                if !present.contains(&location.pack_id) {
                    damaged.insert(
                        id,
                        format!("pack {} holding chunk {id} is missing", location.pack_id),
                    );
                    continue;
                }
                needed
                    .entry(location.pack_id)
                    .or_default()
                    .insert(id, location);
            }
        }
    }
    let chunk_count: usize = needed.values().map(HashMap::len).sum();

    // Pass 2: re-read the sample.
    batcher.set_phase(RunPhase::Transferring);
    let sample: Vec<(PackId, HashMap<ChunkId, ChunkLocation>)> = needed
        .into_iter()
        .filter(|(id, _)| sampled(id, plan.read_data_percent))
        .collect();
    let packs_read = sample.len();
    let mut results = stream::iter(sample)
        .map(|(pack_id, chunks)| {
            let repository = repository.clone();
            let cancel = cancel.clone();
            async move { check_pack(&repository, pack_id, chunks, &cancel).await }
        })
        .buffer_unordered(PACK_PARALLELISM);
    let mut bytes_read = 0u64;
    while let Some(result) = results.next().await {
        let (read, found) = result?;
        bytes_read += read;
        batcher.progress.bytes_done += to_i64(read);
        batcher.progress.bytes_read += to_i64(read);
        damaged.extend(found);
        batcher.report_progress(false);
    }
    drop(results);

    // Pass 3: name the damaged files.
    batcher.set_phase(RunPhase::Finishing);
    let mut damaged_files = 0u64;
    if !damaged.is_empty() {
        let mut manifest = repository
            .read_manifest(&plan.manifest_key, Some(&index), cancel)
            .await?;
        while let Some(entry) = manifest
            .next_entry()
            .map_err(|e| RunFailure::permanent(format!("manifest {}: {e}", plan.manifest_key)))?
        {
            let reasons: Vec<&str> = entry
                .chunks
                .iter()
                .filter_map(|id| damaged.get(id).map(String::as_str))
                .collect();
            if let Some(first) = reasons.first() {
                damaged_files += 1;
                let more = match reasons.len() {
                    1 => String::new(),
                    n => format!(" (and {} more damaged chunks)", n - 1),
                };
                batcher
                    .error(&entry.path, format!("damaged: {first}{more}"))
                    .await?;
            }
        }
    }
    batcher.progress.files_done = to_i64(files);
    batcher.flush().await?;
    if damaged_files > 0 {
        return Err(RunFailure::permanent(format!(
            "{damaged_files} of {files} files are damaged; see the run's errors"
        )));
    }
    Ok(VerifySummary {
        details: format!(
            "{files} files ({}): all {chunk_count} chunks present; {packs_read} packs ({}) \
             re-read and every needed chunk re-hashed ({}% sample)",
            human_bytes(bytes),
            human_bytes(bytes_read),
            plan.read_data_percent
        ),
        batch_count: batcher.batch_count(),
        progress: batcher.progress_now(),
    })
}

/// Downloads one pack and decodes every needed chunk; returns the bytes
/// read and the damaged chunks with the reason.
async fn check_pack(
    repository: &Repository,
    pack_id: PackId,
    chunks: HashMap<ChunkId, ChunkLocation>,
    cancel: &CancellationToken,
) -> Result<(u64, Vec<(ChunkId, String)>), RunFailure> {
    let key = layout::pack_key(&pack_id);
    let pack = match repository.store().get_bytes(&key, cancel).await {
        Ok(pack) => pack,
        Err(StoreError::NotFound { .. }) => {
            let reason = format!("pack {pack_id} is missing");
            return Ok((
                0,
                chunks.into_keys().map(|id| (id, reason.clone())).collect(),
            ));
        }
        Err(other) => return Err(other.into()),
    };
    let opener = repository.blob_opener();
    let keys = repository.keys().cloned();
    let read = pack.len() as u64;
    let damaged = tokio::task::spawn_blocking(move || {
        // A v2 pack's header and sealed trailer are checked too: damage
        // there touches no blob but makes the pack unreadable as a whole.
        if let Some(Err(error)) = keys.map(|keys| read_pack_v2(&keys, &pack)) {
            let reason = format!("pack {pack_id} is corrupt: {error}");
            return chunks.into_keys().map(|id| (id, reason.clone())).collect();
        }
        let mut damaged = Vec::new();
        for (id, location) in chunks {
            let entry = location.entry(id);
            let outcome =
                blob_slice(&pack, &entry).and_then(|blob| opener.open(id, &location, blob));
            if let Err(error) = outcome {
                damaged.push((
                    id,
                    format!("chunk {id} in pack {pack_id} is corrupt: {error}"),
                ));
            }
        }
        damaged
    })
    .await
    .map_err(|e| RunFailure::retryable(format!("verify task failed: {e}")))?;
    Ok((read, damaged))
}
