//! The two manifests a backup streams: the parent's, read alongside the walk,
//! and the new snapshot's, written as entries complete. Each is decoded or
//! encoded on its own blocking thread and handed over in batches, so JSON
//! and zstd run beside the walk instead of on the loop that drives it. On a
//! no-change incremental that loop does little else.

use std::io;

use coffer_format::{
    compare_paths, layout, ChunkIndex, FormatError, ManifestEntry, ManifestHeader,
};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::record::removed_record;
use super::trees::{TreeGrouper, TreeOutput};
use crate::report::{Batcher, Reporter, RunFailure};
use crate::repository::{DataSettings, FetchedManifest, Repository, StoredManifest};
use crate::store::{Store, StoreError};

/// Entries per batch between a manifest thread and the backup loop.
const BATCH: usize = 256;
/// Batches in flight between a manifest thread and the backup loop.
const QUEUE: usize = 8;
/// zstd level of snapshot manifests. A manifest is mostly hex digests: on
/// the benchmark's 100,000-file manifest level 1 came out smaller than
/// level 3 (5.7 MiB against 6.3 MiB) in a third of the time.
pub const MANIFEST_COMPRESSION_LEVEL: i32 = 1;

/// The snapshot an incremental is taken against.
#[derive(Debug, Clone)]
pub struct ParentSnapshot {
    /// Its run.
    pub run_id: Uuid,
    /// Storage key of its manifest.
    pub manifest_key: String,
}

/// The new snapshot's manifest, spooled to a temporary file by a thread.
pub(crate) struct ManifestSink {
    sender: mpsc::Sender<Vec<ManifestEntry>>,
    batch: Vec<ManifestEntry>,
    writer: JoinHandle<Result<NamedTempFile, RunFailure>>,
}

impl ManifestSink {
    /// Writes the header and starts the writing thread, for a manifest to
    /// be stored in `repository` under `key`; with `trees` (format v2) its
    /// entries go into tree blobs.
    pub(crate) fn start(
        repository: &Repository,
        key: &str,
        header: &ManifestHeader,
        trees: Option<TreeOutput>,
    ) -> Result<Self, RunFailure> {
        // The manifest of a large tree is large: it is spooled to a
        // temporary file, not held in memory.
        let spool = NamedTempFile::new()
            .map_err(|e| RunFailure::retryable(format!("creating the manifest spool file: {e}")))?;
        let mut writer = repository
            .manifest_writer(
                io::BufWriter::with_capacity(1 << 20, spool),
                key,
                header,
                MANIFEST_COMPRESSION_LEVEL,
            )
            .map_err(|e| RunFailure::permanent(format!("starting the manifest: {e}")))?;
        let mut grouper = trees
            .map(|output| {
                TreeGrouper::new(
                    repository.hasher().clone(),
                    repository.settings().compression_level,
                    output,
                )
            })
            .transpose()?;
        let (sender, mut receiver) = mpsc::channel::<Vec<ManifestEntry>>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(batch) = receiver.blocking_recv() {
                for entry in batch {
                    match grouper.as_mut() {
                        Some(grouper) => grouper.add(&mut writer, entry)?,
                        None => writer.add(&entry).map_err(|e| {
                            RunFailure::permanent(format!("writing the manifest: {e}"))
                        })?,
                    }
                }
            }
            if let Some(grouper) = grouper.as_mut() {
                grouper.flush(&mut writer)?;
            }
            // The tree packer's queue closes here, before the manifest is stored.
            drop(grouper);
            writer
                .finish()
                .and_then(|output| output.finish())
                .map_err(|e| RunFailure::permanent(format!("finishing the manifest: {e}")))?
                .into_inner()
                .map_err(|e| RunFailure::retryable(format!("writing the manifest spool file: {e}")))
        });
        Ok(ManifestSink {
            sender,
            batch: Vec::with_capacity(BATCH),
            writer,
        })
    }

    /// Appends one entry (entries must come in manifest order).
    pub(crate) async fn add(&mut self, entry: ManifestEntry) -> Result<(), RunFailure> {
        self.batch.push(entry);
        if self.batch.len() < BATCH {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if self.sender.send(batch).await.is_ok() {
            return Ok(());
        }
        // The thread stopped on an error, which is the one to report.
        Err(match (&mut self.writer).await {
            Ok(Err(failure)) => failure,
            Ok(Ok(_)) => RunFailure::retryable("the manifest writer stopped early"),
            Err(e) => RunFailure::retryable(format!("the manifest writer failed: {e}")),
        })
    }

    /// Ends the manifest and returns its spool file.
    pub(crate) async fn finish(self) -> Result<NamedTempFile, RunFailure> {
        let ManifestSink {
            sender,
            batch,
            writer,
        } = self;
        if !batch.is_empty() {
            // A send error means the thread already stopped with its error.
            let _ = sender.send(batch).await;
        }
        drop(sender);
        writer
            .await
            .map_err(|e| RunFailure::retryable(format!("the manifest writer failed: {e}")))?
    }
}

/// Stores the finished manifest of the attempt of `run_id` leased with
/// `lease_token` under that attempt's own key
/// ([`layout::attempt_manifest_key`], which a v2 manifest is sealed to),
/// create-only; returns the key and the bytes written.
///
/// A key taken already means this attempt stored its manifest before (the
/// control plane never hands out a token twice): the attempt fails rather
/// than replace it, as nothing here can tell which content is the one the
/// control plane may have been told about.
pub(crate) async fn store_manifest(
    store: &Store,
    run_id: Uuid,
    lease_token: i64,
    spool: &NamedTempFile,
    cancel: &CancellationToken,
) -> Result<(String, u64), RunFailure> {
    let key = layout::attempt_manifest_key(run_id, lease_token);
    match store.put_file_new(&key, spool.path(), cancel).await {
        Ok(written) => Ok((key, written)),
        Err(StoreError::AlreadyExists { .. }) => Err(RunFailure::permanent(format!(
            "the manifest of this attempt ({key}) exists already; it is never replaced"
        ))),
        Err(other) => Err(other.into()),
    }
}

/// The parent manifest, read alongside the walk (both are in
/// [`compare_paths`] order, so this is a merge join in constant memory).
pub(crate) struct ParentCursor {
    pub(crate) run_id: Uuid,
    receiver: mpsc::Receiver<Result<Vec<ManifestEntry>, FormatError>>,
    buffered: std::vec::IntoIter<ManifestEntry>,
    next: Option<ManifestEntry>,
}

impl ParentCursor {
    /// Decodes `reader` on a thread, `first` being its first entry.
    fn start(run_id: Uuid, mut reader: StoredManifest, first: Option<ManifestEntry>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        if first.is_some() {
            tokio::task::spawn_blocking(move || loop {
                let mut batch = Vec::with_capacity(BATCH);
                let mut ended = false;
                while batch.len() < BATCH {
                    match reader.next_entry() {
                        Ok(Some(entry)) => batch.push(entry),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(error) => {
                            let _ = sender.blocking_send(Err(error));
                            return;
                        }
                    }
                }
                if (!batch.is_empty() && sender.blocking_send(Ok(batch)).is_err()) || ended {
                    return;
                }
            });
        }
        ParentCursor {
            run_id,
            receiver,
            buffered: Vec::new().into_iter(),
            next: first,
        }
    }

    /// The parent's entry for `path`, reporting the parent's entries before
    /// it as removed.
    pub(crate) async fn advance_to<R: Reporter>(
        &mut self,
        path: &[u8],
        batcher: &mut Batcher<'_, R>,
    ) -> Result<Option<ManifestEntry>, RunFailure> {
        loop {
            let Some(next) = &self.next else {
                return Ok(None);
            };
            match compare_paths(&next.path, path) {
                std::cmp::Ordering::Less => {
                    batcher.file(removed_record(&next.path)).await?;
                    self.next = self.read().await?;
                }
                std::cmp::Ordering::Equal => {
                    let found = self.next.take();
                    self.next = self.read().await?;
                    return Ok(found);
                }
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Reports every parent entry after the last walked path as removed.
    pub(crate) async fn remaining_removed<R: Reporter>(
        &mut self,
        batcher: &mut Batcher<'_, R>,
    ) -> Result<(), RunFailure> {
        while let Some(next) = self.next.take() {
            batcher.file(removed_record(&next.path)).await?;
            self.next = self.read().await?;
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<Option<ManifestEntry>, RunFailure> {
        loop {
            if let Some(entry) = self.buffered.next() {
                return Ok(Some(entry));
            }
            match self.receiver.recv().await {
                Some(Ok(batch)) => self.buffered = batch.into_iter(),
                Some(Err(e)) => {
                    return Err(RunFailure::permanent(format!(
                        "reading the parent snapshot {}: {e}",
                        self.run_id
                    )))
                }
                None => return Ok(None),
            }
        }
    }

    /// Checks that the whole parent was consumed.
    pub(crate) fn finish(self) -> Result<(), RunFailure> {
        debug_assert!(self.next.is_none());
        Ok(())
    }
}

/// Fetches the parent manifest for an incremental (its tree blobs are
/// fetched by [`open_parent`], once the chunk index is loaded); `None` for a
/// full backup: no parent, or a parent that cannot serve.
pub(crate) async fn fetch_parent(
    repository: &Repository,
    run_id: Uuid,
    parent: Option<&ParentSnapshot>,
    cancel: &CancellationToken,
) -> Option<(Uuid, FetchedManifest)> {
    let parent = parent?;
    match repository
        .fetch_manifest(&parent.manifest_key, cancel)
        .await
    {
        Ok(fetched) => Some((parent.run_id, fetched)),
        Err(error) => {
            parent_unreadable(run_id, parent.run_id, &error);
            None
        }
    }
}

/// Opens the fetched parent manifest, its tree blobs located in `index`;
/// `None` for a full backup: a parent that cannot serve (missing or
/// damaged trees, or chunked with other parameters).
pub(crate) async fn open_parent(
    repository: &Repository,
    run_id: Uuid,
    parent: Option<(Uuid, FetchedManifest)>,
    index: &ChunkIndex,
    settings: &DataSettings,
    cancel: &CancellationToken,
) -> Option<ParentCursor> {
    let (parent_run_id, fetched) = parent?;
    let mut reader = match repository.open_manifest(fetched, Some(index), cancel).await {
        Ok(reader) => reader,
        Err(error) => {
            parent_unreadable(run_id, parent_run_id, &error);
            return None;
        }
    };
    if reader.header().chunker != settings.chunker {
        return None;
    }
    match reader.next_entry() {
        Ok(first) => Some(ParentCursor::start(parent_run_id, reader, first)),
        Err(error) => {
            parent_unreadable(run_id, parent_run_id, &error);
            None
        }
    }
}

fn parent_unreadable(run_id: Uuid, parent_run_id: Uuid, error: &dyn std::fmt::Display) {
    tracing::warn!(run = %run_id, parent = %parent_run_id, %error, "parent snapshot unreadable; taking a full backup");
}
