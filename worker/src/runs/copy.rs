//! Copying a snapshot into another repository (3-2-1).
//!
//! The source's manifest is read entry by entry; every chunk of every file
//! is fetched from the source and checked against its id there (a v2 blob
//! is authenticated and decrypted with the source's keys), then hashed
//! under the destination's chunk-id key. A chunk the destination's index
//! already holds, or that this attempt already queued, is not sent; any
//! other is compressed and packed under the destination's keys. The
//! source's chunk boundaries are kept, so the copy's manifest is the
//! source's with chunk ids and content hashes rewritten (see "Copies" in
//! `format/README.md`).
//!
//! The destination's packer writes an index file after every pack: an
//! attempt that dies midway leaves indexed packs, which the next attempt
//! finds in the destination's index and does not send again. The manifest
//! is stored last under this attempt's own key, so the copy becomes
//! visible only with it (and in the catalog only with the run's success).

use std::collections::HashSet;
use std::sync::Arc;

use coffer_format::{
    encode_chunk, layout, new_compressor, BlobType, ChunkHasher, ChunkId, ChunkIndex,
    ContentHasher, EncodedChunk, EntryKind, ManifestEntry,
};
use coffer_proto::v1::RunPhase;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backup::manifests::{store_manifest, ManifestSink};
use super::run_attempt;
use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::repository::packer::Packer;
use crate::repository::{IndexUse, PinnedGeneration, Repository, RepositoryAccess};
use crate::store::Store;

/// Chunks fetched from the source at once, per file.
const FETCH_PARALLELISM: usize = 8;
/// Encoded chunks queued for the packer.
const PACKER_QUEUE: usize = 16;

/// Everything one copy attempt needs.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// The copy run.
    pub run_id: Uuid,
    /// Its lease token.
    pub lease_token: i64,
    /// The snapshot's repository's store.
    pub source_store: Arc<Store>,
    /// The snapshot's repository, as the lease describes it.
    pub source: RepositoryAccess,
    /// Key of the snapshot's manifest there.
    pub source_manifest_key: String,
    /// The destination's store.
    pub store: Arc<Store>,
    /// The destination repository, as the lease describes it.
    pub repository: RepositoryAccess,
}

/// A committed copy.
#[derive(Debug, Clone, PartialEq)]
pub struct CopySummary {
    /// Total size of the snapshot's regular files.
    pub size_bytes: i64,
    /// Key of the copy's manifest in the destination.
    pub manifest_key: String,
    /// Human-readable summary.
    pub details: String,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
    /// The destination's key generation (v2), for the catalog to pin.
    pub generation: Option<PinnedGeneration>,
}

/// Runs one copy attempt of `plan`.
pub async fn run_copy<R: Reporter>(
    plan: CopyPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<CopySummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

/// What the attempt moved so far.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    bytes: u64,
    chunks_sent: u64,
    bytes_present: u64,
}

/// The destination side of the copy: its hasher, its index, the chunks
/// this attempt queued, and the packer.
struct Destination {
    hasher: ChunkHasher,
    index: ChunkIndex,
    queued: HashSet<ChunkId>,
    packer: Packer,
    compression_level: i32,
}

async fn execute<R: Reporter>(
    plan: &CopyPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<CopySummary, RunFailure> {
    batcher.set_phase(RunPhase::Preparing);
    let source = Repository::open(Arc::clone(&plan.source_store), &plan.source, cancel).await?;
    let destination =
        Repository::open_or_create(Arc::clone(&plan.store), &plan.repository, cancel).await?;
    let (source_index, destination_index) = tokio::join!(
        source.load_index(IndexUse::Read, cancel),
        destination.load_index(IndexUse::Write, cancel)
    );
    let source_index = source_index?;
    let mut manifest = source
        .read_manifest(&plan.source_manifest_key, Some(&source_index), cancel)
        .await?;
    let mut header = manifest.header().clone();
    // The copy lists the whole tree; its parent may not exist there.
    header.parent_run_id = None;

    let packer =
        Packer::start_indexing_every(&destination, BlobType::Data, PACKER_QUEUE, 1, cancel);
    batcher.live().follow_uploads(packer.upload_counter());
    let manifest_key = layout::attempt_manifest_key(plan.run_id, plan.lease_token);
    let mut sink = ManifestSink::start(&destination, &manifest_key, &header, None)?;
    let mut target = Destination {
        hasher: destination.hasher().clone(),
        index: destination_index?,
        queued: HashSet::new(),
        packer,
        compression_level: destination.settings().compression_level,
    };
    batcher.set_phase(RunPhase::Transferring);
    let mut tally = Tally::default();
    while let Some(mut entry) = manifest
        .next_entry()
        .map_err(|e| RunFailure::permanent(format!("manifest {}: {e}", plan.source_manifest_key)))?
    {
        if entry.kind() == EntryKind::File && !entry.chunks.is_empty() {
            copy_file(
                &source,
                &source_index,
                &mut target,
                &mut entry,
                batcher,
                cancel,
            )
            .await?;
        }
        if entry.kind() == EntryKind::File {
            tally.files += 1;
            tally.bytes += entry.attributes.size;
            batcher.progress.files_done += 1;
        }
        sink.add(entry).await?;
    }
    tally.chunks_sent = target.queued.len() as u64;
    tally.bytes_present = batcher.progress.bytes_deduplicated.unsigned_abs();

    batcher.set_phase(RunPhase::Finishing);
    let packed = target.packer.finish().await?;
    let spool = sink.finish().await?;
    let (manifest_key, manifest_len) =
        store_manifest(&plan.store, plan.run_id, plan.lease_token, &spool, cancel).await?;
    let uploaded = packed.packs + packed.index_files + manifest_len;
    batcher.progress.bytes_uploaded = to_i64(uploaded);
    batcher.progress.current_path.clear();
    batcher.flush().await?;
    let details = format!(
        "copied snapshot {} ({} files, {}) into {}: {} new chunks sent, {} already there; \
         {} uploaded",
        header.run_id,
        tally.files,
        human_bytes(tally.bytes),
        plan.store.describe(),
        tally.chunks_sent,
        human_bytes(tally.bytes_present),
        human_bytes(uploaded),
    );
    Ok(CopySummary {
        size_bytes: to_i64(tally.bytes),
        manifest_key,
        details,
        progress: batcher.progress_now(),
        generation: destination.generation(),
    })
}

/// Copies the chunks of one file the destination lacks and rewrites the
/// entry with the destination's chunk ids and content hash.
async fn copy_file<R: Reporter>(
    source: &Repository,
    source_index: &ChunkIndex,
    target: &mut Destination,
    entry: &mut ManifestEntry,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<(), RunFailure> {
    batcher.progress.current_path = String::from_utf8_lossy(&entry.path).into_owned();
    let mut locations = Vec::with_capacity(entry.chunks.len());
    for id in &entry.chunks {
        let location = source_index.get(id).ok_or_else(|| {
            RunFailure::permanent(format!(
                "chunk {id} of {} is in no index of the source repository",
                batcher.progress.current_path
            ))
        })?;
        locations.push((*id, location));
    }
    let mut chunks = stream::iter(locations)
        .map(|(id, location)| source.read_chunk(id, location, cancel))
        .buffered(FETCH_PARALLELISM);
    let mut content = Some(target.hasher.content_hasher());
    let mut rewritten = Vec::with_capacity(entry.chunks.len());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let length = to_i64(chunk.len() as u64);
        batcher.progress.bytes_read += length;
        batcher.progress.bytes_done += length;
        let hasher = target.hasher.clone();
        let running = content.take().ok_or_else(|| {
            RunFailure::permanent("the content hasher went missing between chunks")
        })?;
        let (running, id, chunk) = hash_chunk(hasher, running, chunk).await?;
        content = Some(running);
        rewritten.push(id);
        if target.index.contains(&id) || !target.queued.insert(id) {
            batcher.progress.bytes_deduplicated += length;
            continue;
        }
        let encoded = encode(target.compression_level, id, chunk).await?;
        if target.packer.queue().send(encoded).await.is_err() {
            // The packer stopped on an error, which finishing it reports.
            break;
        }
    }
    drop(chunks);
    entry.chunks = rewritten;
    if entry.attributes.content_hash.is_some() {
        entry.attributes.content_hash = content.map(ContentHasher::finalize);
    }
    batcher.report_progress(false);
    Ok(())
}

/// Feeds `chunk` to the file's content hash and names it under the
/// destination's key, on a blocking thread.
async fn hash_chunk(
    hasher: ChunkHasher,
    mut content: ContentHasher,
    chunk: Vec<u8>,
) -> Result<(ContentHasher, ChunkId, Vec<u8>), RunFailure> {
    tokio::task::spawn_blocking(move || {
        content.update(&chunk);
        let id = hasher.chunk_id(&chunk);
        (content, id, chunk)
    })
    .await
    .map_err(|e| RunFailure::retryable(format!("hashing task failed: {e}")))
}

/// Compresses a chunk for the destination's packer, on a blocking thread.
async fn encode(level: i32, id: ChunkId, chunk: Vec<u8>) -> Result<EncodedChunk, RunFailure> {
    tokio::task::spawn_blocking(move || {
        let mut compressor = new_compressor(level)?;
        encode_chunk(&mut compressor, id, &chunk)
    })
    .await
    .map_err(|e| RunFailure::retryable(format!("compression task failed: {e}")))?
    .map_err(|e| RunFailure::permanent(format!("compressing chunk {id}: {e}")))
}
