//! Sending one file of a snapshot to a caller of `DownloadService`.
//!
//! The manifest is read until the file's entry; its chunks are fetched a
//! few at a time but sent strictly in order, each one checked against its
//! keyed id before a byte of it leaves the worker, in pieces that stay well
//! under gRPC's default message limit. The control plane passes the pieces
//! on to the caller as they come, so nothing is staged on either side and
//! memory stays bounded by the chunks in flight. A damaged or missing chunk
//! fails the run; the caller's stream then ends with an error, never with
//! a short file.

use std::sync::Arc;

use coffer_format::{ChunkId, ChunkIndex, ChunkLocation, EntryKind, ManifestEntry};
use coffer_proto::v1::{self as pb, RunPhase};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::run_attempt;
use crate::report::{human_bytes, Batcher, LiveProgress, Reporter, RunFailure};
use crate::repository::{IndexUse, Repository, RepositoryAccess};
use crate::store::Store;

/// Chunks fetched ahead of the one being sent.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Largest piece of data in one message.
const PIECE_BYTES: usize = 1 << 20;

/// Everything one download attempt needs.
#[derive(Debug, Clone)]
pub struct DownloadPlan {
    /// The download run's lease token.
    pub lease_token: i64,
    /// The repository's store.
    pub store: Arc<Store>,
    /// The repository as the lease describes it.
    pub repository: RepositoryAccess,
    /// Key of the snapshot's manifest.
    pub manifest_key: String,
    /// The file, relative to the snapshot's root.
    pub path: String,
    /// Its size as the catalog records it; a manifest that disagrees is
    /// refused rather than sending the caller something else.
    pub size_bytes: u64,
}

/// The failure of an attempt whose stream the control plane closed.
pub const SINK_CLOSED: &str = "the control plane stopped taking the download";

/// Where the pieces go: the request stream of a `SendDownload` call. The
/// first message it is given must carry the lease.
pub type DownloadSink = mpsc::Sender<pb::SendDownloadRequest>;

/// A finished download.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadSummary {
    /// Bytes sent.
    pub bytes: u64,
    /// Human-readable summary.
    pub details: String,
    /// Final counters.
    pub progress: pb::RunProgress,
}

/// Runs one download attempt, sending through `sink` (whose first message,
/// naming the lease, the caller has queued already).
pub async fn run_download<R: Reporter>(
    plan: DownloadPlan,
    sink: DownloadSink,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<DownloadSummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, &sink, batcher, &cancel).await
    })
    .await
}

async fn execute<R: Reporter>(
    plan: &DownloadPlan,
    sink: &DownloadSink,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<DownloadSummary, RunFailure> {
    batcher.set_phase(RunPhase::Preparing);
    let repository = Repository::open(Arc::clone(&plan.store), &plan.repository, cancel).await?;
    let index = repository.load_index(IndexUse::Read, cancel).await?;
    let entry = find_entry(&repository, &index, plan, cancel).await?;
    if entry.attributes.size != plan.size_bytes {
        return Err(RunFailure::permanent(format!(
            "the manifest records {} bytes for {} but the catalog {}",
            entry.attributes.size, plan.path, plan.size_bytes
        )));
    }
    let mut chunks: Vec<(ChunkId, ChunkLocation)> = Vec::with_capacity(entry.chunks.len());
    let mut planned = 0u64;
    for chunk in &entry.chunks {
        let location = index.get(chunk).ok_or_else(|| {
            RunFailure::permanent(format!(
                "chunk {chunk} of {} is not in the repository's index (missing data)",
                plan.path
            ))
        })?;
        planned += u64::from(location.raw_length);
        chunks.push((*chunk, location));
    }
    drop(index);
    if planned != entry.attributes.size {
        return Err(RunFailure::permanent(format!(
            "the chunks of {} hold {planned} bytes but the file had {}",
            plan.path, entry.attributes.size
        )));
    }
    batcher.progress.files_seen = 1;
    batcher.progress.bytes_seen = crate::report::to_i64(planned);
    batcher.progress.current_path.clone_from(&plan.path);
    batcher.totals_known();
    batcher.set_phase(RunPhase::Transferring);

    let live = Arc::clone(batcher.live());
    let sent = send_chunks(&repository, chunks, sink, &live, cancel).await?;
    sink.send(pb::SendDownloadRequest {
        last: true,
        ..Default::default()
    })
    .await
    .map_err(|_| RunFailure::permanent(SINK_CLOSED))?;

    batcher.set_phase(RunPhase::Finishing);
    batcher.progress.files_done = 1;
    batcher.progress.current_path.clear();
    Ok(DownloadSummary {
        bytes: sent,
        details: format!("sent {} ({})", plan.path, human_bytes(sent)),
        progress: batcher.progress_now(),
    })
}

/// Reads the manifest up to the entry of `plan.path`, which must be a
/// regular file.
async fn find_entry(
    repository: &Repository,
    index: &ChunkIndex,
    plan: &DownloadPlan,
    cancel: &CancellationToken,
) -> Result<ManifestEntry, RunFailure> {
    let mut manifest = repository
        .read_manifest(&plan.manifest_key, Some(index), cancel)
        .await?;
    let wanted = plan.path.trim_matches('/').as_bytes();
    while let Some(entry) = manifest.next_entry().map_err(|e| {
        RunFailure::permanent(format!("reading manifest {}: {e}", plan.manifest_key))
    })? {
        if cancel.is_cancelled() {
            return Err(RunFailure::cancelled());
        }
        if entry.path != wanted {
            continue;
        }
        return match entry.kind() {
            EntryKind::File => Ok(entry),
            EntryKind::Directory | EntryKind::Symlink => Err(RunFailure::permanent(format!(
                "{} is not a regular file in the snapshot",
                plan.path
            ))),
        };
    }
    Err(RunFailure::permanent(format!(
        "{} is not in the snapshot's manifest",
        plan.path
    )))
}

/// Fetches the chunks ([`CHUNKS_IN_FLIGHT`] ahead) and sends them in order.
async fn send_chunks(
    repository: &Repository,
    chunks: Vec<(ChunkId, ChunkLocation)>,
    sink: &DownloadSink,
    live: &LiveProgress,
    cancel: &CancellationToken,
) -> Result<u64, RunFailure> {
    let mut fetched = stream::iter(chunks)
        .map(|(id, location)| async move {
            repository
                .read_chunk(id, location, cancel)
                .await
                .map_err(RunFailure::from)
        })
        .buffered(CHUNKS_IN_FLIGHT);
    let mut sent = 0u64;
    while let Some(data) = fetched.try_next().await? {
        LiveProgress::add(&live.bytes_read, data.len() as u64);
        for piece in data.chunks(PIECE_BYTES) {
            let message = pb::SendDownloadRequest {
                data: piece.to_vec(),
                ..Default::default()
            };
            tokio::select! {
                sent = sink.send(message) => sent.map_err(|_| {
                    RunFailure::permanent(SINK_CLOSED)
                })?,
                () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            }
            sent += piece.len() as u64;
            LiveProgress::add(&live.bytes_done, piece.len() as u64);
        }
    }
    Ok(sent)
}
