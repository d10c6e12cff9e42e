//! The packer: one task that fills packs of about the repository's target
//! size with encoded chunks and uploads them in the background, writing an
//! index file every few packs. Backup feeds it new chunks; garbage
//! collection feeds it the live chunks of packs it repacks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coffer_format::layout;
use coffer_format::pack::PackWriterV2;
use coffer_format::{
    BlobType, EncodedChunk, FormatError, IndexFile, IndexPack, PackBuilder, RepositoryKeys,
    SealedPack,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::Repository;
use crate::report::RunFailure;

/// Packs uploaded at once.
const UPLOAD_PARALLELISM: usize = 3;
/// Packs named by one index file (the last one of a run may name fewer).
const INDEX_FLUSH_PACKS: usize = 4;

/// A running packer and the queue that feeds it.
pub(crate) struct Packer {
    queue: mpsc::Sender<EncodedChunk>,
    uploaded: Arc<AtomicU64>,
    task: JoinHandle<Result<u64, RunFailure>>,
}

/// What a packer wrote, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed {
    /// Packs uploaded.
    pub(crate) packs: u64,
    /// Index files written.
    pub(crate) index_files: u64,
}

impl Packer {
    /// Starts a packer writing blobs of `blob_type` to `repository`, with
    /// room for `queue_len` chunks waiting to be packed. Tree blobs exist
    /// in format v2 only: a v1 pack refuses them.
    pub(crate) fn start(
        repository: &Repository,
        blob_type: BlobType,
        queue_len: usize,
        cancel: &CancellationToken,
    ) -> Self {
        Self::start_indexing_every(repository, blob_type, queue_len, INDEX_FLUSH_PACKS, cancel)
    }

    /// [`Packer::start`], writing an index file every `index_packs`
    /// uploaded packs (at least one): a copy indexes each pack at once, so
    /// that a retry after a crash sends none of them again.
    pub(crate) fn start_indexing_every(
        repository: &Repository,
        blob_type: BlobType,
        queue_len: usize,
        index_packs: usize,
        cancel: &CancellationToken,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(queue_len);
        let uploaded = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_packer(
            repository.clone(),
            blob_type,
            receiver,
            Arc::clone(&uploaded),
            index_packs.max(1),
            cancel.clone(),
        ));
        Packer {
            queue,
            uploaded,
            task,
        }
    }

    /// The queue to send chunks to; a send fails once the packer stopped on
    /// an error, which [`Packer::finish`] then returns.
    pub(crate) fn queue(&self) -> &mpsc::Sender<EncodedChunk> {
        &self.queue
    }

    /// The running count of bytes of packs uploaded, for live progress.
    pub(crate) fn upload_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.uploaded)
    }

    /// Closes the queue and waits for the last pack and index file. Clones
    /// of [`Packer::queue`] must be dropped first: the last pack is sealed
    /// once every sender is gone.
    pub(crate) async fn finish(self) -> Result<Packed, RunFailure> {
        let Packer {
            queue,
            uploaded,
            task,
        } = self;
        drop(queue);
        let index_files = task
            .await
            .map_err(|e| RunFailure::retryable(format!("packer task failed: {e}")))??;
        Ok(Packed {
            packs: uploaded.load(Ordering::Relaxed),
            index_files,
        })
    }
}

/// Fills packs from the queue and uploads each when it reaches the target
/// size (and the last one when the queue closes). Every
/// `index_packs` uploaded packs, and at the end, an index file names
/// them, so an attempt that dies midway leaves packs a retry can reuse.
/// Returns the bytes of index files written.
async fn run_packer(
    repository: Repository,
    blob_type: BlobType,
    mut queue: mpsc::Receiver<EncodedChunk>,
    uploaded: Arc<AtomicU64>,
    index_packs: usize,
    cancel: CancellationToken,
) -> Result<u64, RunFailure> {
    let target_size = repository.settings().pack_target_size as usize;
    let new_pack = || PackDraft::new(repository.keys());
    let mut builder = new_pack();
    let mut uploads: JoinSet<Result<IndexPack, RunFailure>> = JoinSet::new();
    let mut unindexed = Vec::new();
    let mut index_bytes = 0u64;
    let uploader = Uploader {
        repository: &repository,
        blob_type,
        slots: Arc::new(Semaphore::new(UPLOAD_PARALLELISM)),
        uploaded: &uploaded,
        cancel: &cancel,
    };
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                unindexed.push(done.map_err(|e| RunFailure::retryable(format!("upload task failed: {e}")))??);
                if unindexed.len() >= index_packs {
                    index_bytes += write_index(&repository, std::mem::take(&mut unindexed), &cancel).await?;
                }
                continue;
            }
            next = queue.recv() => next,
        };
        let Some(chunk) = next else { break };
        builder
            .add(chunk, blob_type)
            .map_err(|e| RunFailure::permanent(format!("packing: {e}")))?;
        if builder.len() >= target_size {
            let full = std::mem::replace(&mut builder, new_pack());
            uploader.start(full, &mut uploads).await?;
        }
    }
    if !builder.is_empty() {
        uploader.start(builder, &mut uploads).await?;
    }
    while let Some(done) = uploads.join_next().await {
        unindexed
            .push(done.map_err(|e| RunFailure::retryable(format!("upload task failed: {e}")))??);
    }
    if !unindexed.is_empty() {
        index_bytes += write_index(&repository, unindexed, &cancel).await?;
    }
    Ok(index_bytes)
}

/// Writes an index file naming `packs` (all uploaded); returns its size.
async fn write_index(
    repository: &Repository,
    packs: Vec<IndexPack>,
    cancel: &CancellationToken,
) -> Result<u64, RunFailure> {
    let (index_id, bytes) = repository
        .encode_index(&IndexFile { packs })
        .map_err(|e| RunFailure::permanent(format!("encoding the index: {e}")))?;
    let length = bytes.len() as u64;
    repository
        .store()
        .put_bytes(&layout::index_key(&index_id), bytes, cancel)
        .await?;
    Ok(length)
}

/// Seals full packs and uploads them, at most [`UPLOAD_PARALLELISM`] at once.
struct Uploader<'a> {
    repository: &'a Repository,
    blob_type: BlobType,
    slots: Arc<Semaphore>,
    uploaded: &'a Arc<AtomicU64>,
    cancel: &'a CancellationToken,
}

impl Uploader<'_> {
    /// Waits for an upload slot, seals `builder` and starts its upload in
    /// `uploads`.
    async fn start(
        &self,
        builder: PackDraft,
        uploads: &mut JoinSet<Result<IndexPack, RunFailure>>,
    ) -> Result<(), RunFailure> {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| RunFailure::cancelled())?;
        let sealed = tokio::task::spawn_blocking(move || builder.finish())
            .await
            .map_err(|e| RunFailure::retryable(format!("sealing task failed: {e}")))?
            .map_err(|e| RunFailure::permanent(format!("sealing a pack: {e}")))?;
        let store = Arc::clone(self.repository.store());
        let uploaded = Arc::clone(self.uploaded);
        let cancel = self.cancel.clone();
        let blob_type = self.blob_type;
        uploads.spawn(async move {
            let _permit = permit;
            let entry = IndexPack::from_sealed(&sealed);
            let length = sealed.bytes.len() as u64;
            let key = layout::pack_key(&sealed.id);
            // Data packs may go to a colder storage class; tree packs, which
            // the next incremental reads, never do.
            match blob_type {
                BlobType::Data => store.put_data_pack(&key, sealed.bytes, &cancel).await?,
                BlobType::Tree => store.put_bytes(&key, sealed.bytes, &cancel).await?,
            }
            uploaded.fetch_add(length, Ordering::Relaxed);
            Ok(entry)
        });
        Ok(())
    }
}

/// A pack being filled: v1's builder, or v2's writer, which shuffles and
/// seals the blobs under the repository's current key generation.
enum PackDraft {
    V1(PackBuilder),
    V2(PackWriterV2, Arc<RepositoryKeys>),
}

impl PackDraft {
    fn new(keys: Option<&Arc<RepositoryKeys>>) -> Self {
        match keys {
            Some(keys) => PackDraft::V2(PackWriterV2::new(), Arc::clone(keys)),
            None => PackDraft::V1(PackBuilder::new(0)),
        }
    }

    fn add(&mut self, chunk: EncodedChunk, blob_type: BlobType) -> Result<bool, FormatError> {
        match self {
            PackDraft::V1(_) if blob_type == BlobType::Tree => Err(FormatError::InvalidInput(
                "format v1 packs hold no tree blobs".to_owned(),
            )),
            PackDraft::V1(builder) => builder.add_blob(&chunk),
            PackDraft::V2(writer, _) => writer.add(chunk, blob_type),
        }
    }

    fn len(&self) -> usize {
        match self {
            PackDraft::V1(builder) => builder.len(),
            PackDraft::V2(writer, _) => writer.len(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PackDraft::V1(builder) => builder.is_empty(),
            PackDraft::V2(writer, _) => writer.is_empty(),
        }
    }

    /// Seals the pack (CPU work: run it on a blocking thread).
    fn finish(self) -> Result<SealedPack, FormatError> {
        match self {
            PackDraft::V1(builder) => builder.finish(),
            PackDraft::V2(writer, keys) => writer.finish(&keys, &mut rand::rngs::OsRng),
        }
    }
}
