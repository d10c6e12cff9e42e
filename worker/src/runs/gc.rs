//! Garbage collection of a repository, in two phases so that it is safe
//! while backups run.
//!
//! **Mark.** Every snapshot manifest is read and the chunks they need
//! collected. A pack none of whose chunks is needed is condemned; a pack
//! whose garbage share reaches the repack threshold has its needed chunks
//! copied (verified) into new packs and is condemned too. The condemned
//! packs are written down as a condemned set (`condemned/<run id>`) with
//! the time and the snapshots seen. Nothing is deleted. From then on,
//! backups load the index without condemned packs (they store such a chunk
//! again), while restores and verifies still find them.
//!
//! **Sweep.** A later collection deletes a set's packs once the grace period
//! has passed since the set was written and no other run on the repository
//! that started before the end of the grace period is still in flight (the
//! control plane says when the oldest one started). A run in flight when the
//! set was written may have loaded the old index and referred to a condemned
//! chunk; so before deleting, every manifest written since the set is read
//! and any condemned pack holding a chunk they need, and found nowhere else,
//! is rescued. The index is then consolidated without the deleted packs,
//! and the set removed last.
//!
//! Every step is idempotent: a collection killed at any point leaves packs
//! that are either still indexed and live, or condemned and waiting, and a
//! rerun continues from there.
//!
//! **Object Lock.** In a repository written under S3 Object Lock, a set is
//! swept only once nothing it would delete is locked any more: its packs,
//! the index files the sweep replaces and the set itself; until then it
//! waits, and the summary says until when. Mark extends the locks of the
//! manifests of the snapshots retention keeps (`lock_kept`) and of the
//! packs they need; nothing else is extended ([`super::locks`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_format::layout::{self, PACKS_PREFIX, SNAPSHOTS_PREFIX};
use coffer_format::pack::blob_slice;
use coffer_format::{
    new_compressor, BlobType, ChunkId, ChunkIndex, CondemnedPack, CondemnedSet, IndexFile,
    IndexPack, PackId,
};
use coffer_proto::v1::RunPhase;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run_attempt;
use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::repository::packer::Packer;
use crate::repository::{Repository, RepositoryAccess, StoredIndex};
use crate::store::{Store, StoreError};

/// Objects deleted at once.
const DELETE_PARALLELISM: usize = 8;
/// Blobs queued for the repacker.
const REPACK_QUEUE: usize = 64;

/// Everything one collection needs.
#[derive(Debug, Clone)]
pub struct GcPlan {
    /// The collection run (names the condemned set it writes).
    pub run_id: Uuid,
    /// Its lease token.
    pub lease_token: i64,
    /// The repository's store.
    pub store: Arc<Store>,
    /// The repository as the lease describes it.
    pub repository: RepositoryAccess,
    /// How long condemned packs wait before they are deleted.
    pub grace: Duration,
    /// Share (0–100) of a pack's stored bytes that may be garbage before
    /// its live chunks are copied out and the pack condemned.
    pub repack_threshold_percent: f64,
    /// When the oldest other run in flight on this repository started, if any.
    pub oldest_in_flight: Option<DateTime<Utc>>,
    /// Under Object Lock: the snapshots retention keeps, whose manifests
    /// and packs have their locks extended. Ignored without a lock.
    pub lock_kept: HashSet<Uuid>,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcSummary {
    /// Human-readable summary.
    pub details: String,
    /// Bytes of packs deleted.
    pub bytes_reclaimed: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Condemned packs kept because a newer snapshot needs them.
    pub packs_rescued: u64,
    /// Packs condemned by this collection.
    pub packs_condemned: u64,
    /// Their bytes.
    pub bytes_condemned: u64,
    /// Packs whose live chunks were copied into new packs.
    pub packs_repacked: u64,
    /// Bytes of new packs written by repacking.
    pub bytes_repacked: u64,
    /// Bytes condemned (by this or earlier collections) still waiting out
    /// their grace period, runs in flight or Object Lock.
    pub bytes_waiting: u64,
    /// Objects whose Object Lock was extended.
    pub locks_extended: u64,
    /// The latest Object Lock a condemned set waits for, if any.
    pub waiting_for_lock_until: Option<DateTime<Utc>>,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
}

/// Runs one collection attempt.
pub async fn run_gc<R: Reporter>(
    plan: GcPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<GcSummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

async fn execute<R: Reporter>(
    plan: &GcPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<GcSummary, RunFailure> {
    batcher.set_phase(RunPhase::Preparing);
    let mut collection = Collection {
        plan,
        repository: Repository::open(Arc::clone(&plan.store), &plan.repository, cancel).await?,
        summary: GcSummary::default(),
        batcher,
        cancel,
    };
    let now = Utc::now();
    let grace = chrono::Duration::from_std(plan.grace).unwrap_or(chrono::Duration::MAX);

    // Sweep what earlier collections condemned, where that is now safe.
    let sets = collection.repository.condemned_sets(cancel).await?;
    let mut condemned: HashSet<PackId> = sets
        .iter()
        .flat_map(|set| set.packs.iter().map(|pack| pack.pack_id))
        .collect();
    for set in &sets {
        let ripe_at = set.marked.checked_add_signed(grace);
        let ripe = ripe_at.is_some_and(|at| {
            now >= at && plan.oldest_in_flight.is_none_or(|started| started >= at)
        });
        if !ripe || collection.wait_for_locks(set).await? {
            collection.summary.bytes_waiting += set.bytes();
            continue;
        }
        collection.sweep(set, &condemned).await?;
        for pack in &set.packs {
            condemned.remove(&pack.pack_id);
        }
    }

    // Mark what is garbage now.
    collection.batcher.set_phase(RunPhase::Scanning);
    collection.mark(&condemned).await?;
    collection.batcher.set_phase(RunPhase::Finishing);
    let Collection {
        mut summary,
        batcher,
        ..
    } = collection;
    summary.bytes_waiting += summary.bytes_condemned;
    summary.details = describe(&summary);
    batcher.flush().await?;
    summary.progress = batcher.progress_now();
    Ok(summary)
}

fn describe(summary: &GcSummary) -> String {
    let mut parts = vec![format!(
        "deleted {} packs ({})",
        summary.packs_deleted,
        human_bytes(summary.bytes_reclaimed)
    )];
    if summary.packs_rescued > 0 {
        parts.push(format!(
            "kept {} condemned packs a newer snapshot needs",
            summary.packs_rescued
        ));
    }
    parts.push(format!(
        "condemned {} packs ({})",
        summary.packs_condemned,
        human_bytes(summary.bytes_condemned)
    ));
    if summary.packs_repacked > 0 {
        parts.push(format!(
            "repacked the live chunks of {} packs into {}",
            summary.packs_repacked,
            human_bytes(summary.bytes_repacked)
        ));
    }
    parts.push(format!(
        "{} waiting for deletion",
        human_bytes(summary.bytes_waiting)
    ));
    if let Some(until) = summary.waiting_for_lock_until {
        parts.push(format!(
            "Object Lock keeps condemned packs until {}",
            until.to_rfc3339()
        ));
    }
    if summary.locks_extended > 0 {
        parts.push(format!(
            "extended the Object Lock of {} objects kept snapshots need",
            summary.locks_extended
        ));
    }
    parts.join("; ")
}

/// The snapshot manifests of the repository: the latest attempt's of every
/// run, and those of earlier attempts (see [`layout::select_manifests`]).
async fn list_snapshots(
    store: &Store,
    cancel: &CancellationToken,
) -> Result<layout::ManifestSelection, RunFailure> {
    Ok(layout::select_manifests(
        store.list(SNAPSHOTS_PREFIX, cancel).await?,
    ))
}

/// Calls `visit` with every chunk id the manifest under `key` needs: the
/// tree blobs it names and the data chunks of every entry, those inside
/// its trees included. False when the manifest is gone (removed by a
/// retention run meanwhile). Tree blobs are located in `index`.
async fn visit_manifest_chunks(
    repository: &Repository,
    index: &ChunkIndex,
    key: &str,
    cancel: &CancellationToken,
    mut visit: impl FnMut(ChunkId),
) -> Result<bool, RunFailure> {
    let fetched = match repository.fetch_manifest(key, cancel).await {
        Ok(fetched) => fetched,
        Err(crate::repository::RepositoryError::Store(StoreError::NotFound { .. })) => {
            return Ok(false)
        }
        Err(other) => return Err(other.into()),
    };
    for id in fetched.trees() {
        visit(*id);
    }
    // A manifest stored after `index` was read may name trees packed after
    // it too: the whole index is then read again.
    let known = fetched.trees().iter().all(|id| index.contains(id));
    let mut manifest = repository
        .open_manifest(fetched, known.then_some(index), cancel)
        .await?;
    while let Some(entry) = manifest
        .next_entry()
        .map_err(|e| RunFailure::permanent(format!("manifest {key}: {e}")))?
    {
        for id in entry.chunks {
            visit(id);
        }
    }
    Ok(true)
}

/// Every chunk of `indexes` in one index, to find manifests' tree blobs.
fn whole_index(indexes: &[StoredIndex]) -> ChunkIndex {
    let mut index = ChunkIndex::new();
    for stored in indexes {
        index.add_file(&stored.file);
    }
    index
}

/// One collection attempt: what it needs and what it did so far.
struct Collection<'a, 'r, R> {
    plan: &'a GcPlan,
    repository: Repository,
    summary: GcSummary,
    batcher: &'a mut Batcher<'r, R>,
    cancel: &'a CancellationToken,
}

impl<R: Reporter> Collection<'_, '_, R> {
    /// Under Object Lock, whether `set` must wait because something its
    /// sweep deletes (its packs, the index files it replaces, the set
    /// itself) is still locked; records until when.
    async fn wait_for_locks(&mut self, set: &CondemnedSet) -> Result<bool, RunFailure> {
        let store = self.repository.store();
        let Some(lock) = store.object_lock().copied() else {
            return Ok(false);
        };
        let mut keys: Vec<String> = set
            .packs
            .iter()
            .map(|p| layout::pack_key(&p.pack_id))
            .collect();
        keys.extend(store.list(layout::INDEX_PREFIX, self.cancel).await?);
        keys.push(layout::condemned_key(set.gc_run_id));
        let Some(until) = super::locks::locked_until(store, &lock, keys, self.cancel).await? else {
            return Ok(false);
        };
        let latest = &mut self.summary.waiting_for_lock_until;
        *latest = (*latest).max(Some(until));
        Ok(true)
    }

    /// Under Object Lock, extends the locks of the manifests of the kept
    /// snapshots and of the packs holding what they need; returns how many
    /// were extended.
    async fn extend_kept_locks(
        &self,
        kept_manifests: Vec<String>,
        kept_packs: HashSet<PackId>,
    ) -> Result<u64, RunFailure> {
        let store = self.repository.store();
        let Some(lock) = store.object_lock().copied() else {
            return Ok(0);
        };
        let mut keys = kept_manifests;
        keys.extend(kept_packs.iter().map(layout::pack_key));
        Ok(super::locks::extend_needed(store, &lock, keys, self.cancel).await?)
    }

    /// Deletes a condemned set's packs that nothing needs, consolidates the
    /// index without them and removes the set.
    async fn sweep(
        &mut self,
        set: &CondemnedSet,
        condemned: &HashSet<PackId>,
    ) -> Result<(), RunFailure> {
        let store = self.repository.store();
        let indexes = self.repository.read_index_files(self.cancel).await?;
        let in_set: HashSet<PackId> = set.packs.iter().map(|pack| pack.pack_id).collect();
        debug_assert!(in_set.iter().all(|id| condemned.contains(id)));

        // Where the chunks of this set's packs can be found otherwise.
        let mut live = ChunkIndex::new();
        let mut held_by_set: HashMap<ChunkId, PackId> = HashMap::new();
        for pack in indexes.iter().flat_map(|stored| stored.file.packs.iter()) {
            if in_set.contains(&pack.pack_id) {
                for entry in &pack.entries {
                    held_by_set.entry(entry.chunk_id).or_insert(pack.pack_id);
                }
            } else if !condemned.contains(&pack.pack_id) {
                live.add_pack(pack);
            }
        }

        // Where the tree blobs of manifests are, condemned packs included.
        let all = whole_index(&indexes);
        // Snapshots written since the set may need some of its chunks.
        let seen: HashSet<Uuid> = set.snapshots_seen.iter().copied().collect();
        let mut rescued: HashSet<PackId> = HashSet::new();
        for (run_id, key) in list_snapshots(store, self.cancel).await?.latest {
            if seen.contains(&run_id) {
                continue;
            }
            visit_manifest_chunks(&self.repository, &all, &key, self.cancel, |id| {
                if live.contains(&id) {
                    return;
                }
                if let Some(pack) = held_by_set.get(&id) {
                    rescued.insert(*pack);
                }
            })
            .await?;
            self.batcher.progress.files_done += 1;
            self.batcher.report_progress(false);
        }

        // Packs a killed sweep already deleted are not counted again.
        let present: HashMap<PackId, u64> = store
            .list_with_sizes(PACKS_PREFIX, self.cancel)
            .await?
            .into_iter()
            .filter_map(|(key, size)| layout::parse_pack_key(&key).map(|id| (id, size)))
            .collect();
        let doomed: Vec<PackId> = in_set
            .iter()
            .filter(|id| !rescued.contains(id))
            .copied()
            .collect();
        let keys = doomed.iter().map(layout::pack_key).collect();
        delete_all(store, keys, WhenLocked::Fail, self.cancel).await?;
        let deleted: Vec<u64> = doomed
            .iter()
            .filter_map(|id| present.get(id).copied())
            .collect();
        let reclaimed: u64 = deleted.iter().sum();
        self.summary.packs_deleted += deleted.len() as u64;
        self.summary.bytes_reclaimed += reclaimed;
        self.summary.packs_rescued += rescued.len() as u64;
        self.batcher.progress.bytes_done += to_i64(reclaimed);
        self.batcher.report_progress(false);

        let doomed_ids: HashSet<PackId> = doomed.into_iter().collect();
        consolidate_index(&self.repository, &indexes, &doomed_ids, self.cancel).await?;
        store
            .delete(&layout::condemned_key(set.gc_run_id), self.cancel)
            .await?;
        Ok(())
    }

    /// Condemns the packs no snapshot needs (repacking mostly-garbage ones)
    /// and writes the condemned set.
    async fn mark(&mut self, already_condemned: &HashSet<PackId>) -> Result<(), RunFailure> {
        let store = self.repository.store();
        // Index and packs are listed before the manifests are read: a pack
        // written after this is not judged by this collection at all.
        let indexes = self.repository.read_index_files(self.cancel).await?;
        let stored_packs: HashMap<PackId, u64> = store
            .list_with_sizes(PACKS_PREFIX, self.cancel)
            .await?
            .into_iter()
            .filter_map(|(key, size)| layout::parse_pack_key(&key).map(|id| (id, size)))
            .collect();
        self.batcher.progress.bytes_seen = to_i64(stored_packs.values().sum());

        let all = whole_index(&indexes);
        let mut needed: HashSet<ChunkId> = HashSet::new();
        // What the snapshots whose locks are kept need (Object Lock only).
        let mut kept_needed: HashSet<ChunkId> = HashSet::new();
        let mut kept_manifests = Vec::new();
        let locked = store.object_lock().is_some();
        let mut snapshots_seen = Vec::new();
        let snapshots = list_snapshots(store, self.cancel).await?;
        // An earlier attempt's manifest can never be committed (its lease was
        // lost before a later one was granted): its chunks are not needed,
        // and the manifest itself goes (once its lock, if any, has passed).
        delete_all(store, snapshots.superseded, WhenLocked::Leave, self.cancel).await?;
        self.batcher.progress.files_seen += snapshots.latest.len() as i64;
        for (run_id, key) in snapshots.latest {
            let keeps_lock = locked && self.plan.lock_kept.contains(&run_id);
            if visit_manifest_chunks(&self.repository, &all, &key, self.cancel, |id| {
                needed.insert(id);
                if keeps_lock {
                    kept_needed.insert(id);
                }
            })
            .await?
            {
                snapshots_seen.push(run_id);
                if keeps_lock {
                    kept_manifests.push(key);
                }
            }
            self.batcher.progress.files_done += 1;
            self.batcher.report_progress(false);
        }

        // Each needed chunk counts as live in the first present, uncondemned
        // pack holding it; other copies are garbage.
        let mut owner: HashMap<ChunkId, PackId> = HashMap::new();
        let mut uses: Vec<PackUse<'_>> = Vec::new();
        let mut indexed: HashSet<PackId> = HashSet::new();
        for pack in indexes.iter().flat_map(|stored| stored.file.packs.iter()) {
            if !indexed.insert(pack.pack_id)
                || already_condemned.contains(&pack.pack_id)
                || !stored_packs.contains_key(&pack.pack_id)
            {
                continue;
            }
            let mut live_bytes = 0;
            for entry in &pack.entries {
                if needed.contains(&entry.chunk_id) && !owner.contains_key(&entry.chunk_id) {
                    owner.insert(entry.chunk_id, pack.pack_id);
                    live_bytes += u64::from(entry.length);
                }
            }
            uses.push(PackUse {
                pack,
                stored_bytes: pack.entries.iter().map(|e| u64::from(e.length)).sum(),
                live_bytes,
            });
        }

        let kept_packs: HashSet<PackId> = kept_needed
            .iter()
            .filter_map(|id| owner.get(id).copied())
            .collect();
        self.summary.locks_extended += self.extend_kept_locks(kept_manifests, kept_packs).await?;

        let mut condemned = Vec::new();
        let mut to_repack = Vec::new();
        for usage in &uses {
            let length = stored_packs[&usage.pack.pack_id];
            if usage.live_bytes == 0 {
                condemned.push(CondemnedPack {
                    pack_id: usage.pack.pack_id,
                    length,
                });
                continue;
            }
            let garbage = usage.stored_bytes.saturating_sub(usage.live_bytes);
            let garbage_percent = 100.0 * garbage as f64 / usage.stored_bytes.max(1) as f64;
            if garbage > 0 && garbage_percent >= self.plan.repack_threshold_percent {
                to_repack.push(usage);
            }
        }
        // Packs no index names: left by attempts that died before writing their
        // index, or written by a backup still running (which the sweep waits for).
        for (id, length) in &stored_packs {
            if !indexed.contains(id) && !already_condemned.contains(id) {
                condemned.push(CondemnedPack {
                    pack_id: *id,
                    length: *length,
                });
            }
        }

        let repacked = repack(
            &self.repository,
            &to_repack,
            &owner,
            self.batcher,
            self.cancel,
        )
        .await?;
        for usage in to_repack
            .iter()
            .filter(|usage| repacked.packs.contains(&usage.pack.pack_id))
        {
            condemned.push(CondemnedPack {
                pack_id: usage.pack.pack_id,
                length: stored_packs[&usage.pack.pack_id],
            });
        }
        self.summary.packs_repacked = repacked.packs.len() as u64;
        self.summary.bytes_repacked = repacked.bytes_written;
        if condemned.is_empty() {
            return Ok(());
        }
        // Written now, after the packs were chosen and the repacked ones indexed.
        let mut set = CondemnedSet::new(self.plan.run_id, Utc::now());
        set.snapshots_seen = snapshots_seen;
        set.packs = condemned;
        self.summary.packs_condemned = set.packs.len() as u64;
        self.summary.bytes_condemned = set.bytes();
        let bytes = self
            .repository
            .encode_condemned(&set)
            .map_err(|e| RunFailure::permanent(format!("encoding the condemned set: {e}")))?;
        store
            .put_bytes(&layout::condemned_key(self.plan.run_id), bytes, self.cancel)
            .await?;
        Ok(())
    }
}

/// Replaces the index files read with one naming every pack they name
/// except `dropped` (each pack once). Index files written meanwhile by
/// running backups were not read and stay.
async fn consolidate_index(
    repository: &Repository,
    indexes: &[StoredIndex],
    dropped: &HashSet<PackId>,
    cancel: &CancellationToken,
) -> Result<(), RunFailure> {
    let mut included: HashSet<PackId> = HashSet::new();
    let packs: Vec<IndexPack> = indexes
        .iter()
        .flat_map(|stored| stored.file.packs.iter())
        .filter(|pack| !dropped.contains(&pack.pack_id) && included.insert(pack.pack_id))
        .cloned()
        .collect();
    let mut keep_key = None;
    if !packs.is_empty() {
        let (id, bytes) = repository
            .encode_index(&IndexFile { packs })
            .map_err(|e| RunFailure::permanent(format!("encoding the index: {e}")))?;
        let key = layout::index_key(&id);
        repository.store().put_bytes(&key, bytes, cancel).await?;
        keep_key = Some(key);
    }
    let superseded = indexes
        .iter()
        .filter(|stored| Some(&stored.key) != keep_key.as_ref())
        .map(|stored| stored.key.clone())
        .collect();
    // An index file a backup wrote after the sweep's lock check may still
    // be locked; it names no condemned pack (backups load the index without
    // them), so it can stay.
    delete_all(repository.store(), superseded, WhenLocked::Leave, cancel).await?;
    Ok(())
}

/// What a bulk deletion does with an object Object Lock still keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WhenLocked {
    /// Fail: the object was judged deletable, so a lock means a mistake.
    Fail,
    /// Leave it for a later collection.
    Leave,
}

/// Deletes `keys`, several at once.
async fn delete_all(
    store: &Arc<Store>,
    keys: Vec<String>,
    when_locked: WhenLocked,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let deletions = keys.into_iter().map(|key| {
        let store = Arc::clone(store);
        let cancel = cancel.clone();
        async move { store.delete(&key, &cancel).await }
    });
    let mut running = stream::iter(deletions).buffer_unordered(DELETE_PARALLELISM);
    while let Some(result) = running.next().await {
        match result {
            Err(StoreError::Locked { .. }) if when_locked == WhenLocked::Leave => {}
            other => other?,
        }
    }
    Ok(())
}

/// What one indexed pack holds of what the snapshots need.
struct PackUse<'a> {
    pack: &'a IndexPack,
    stored_bytes: u64,
    live_bytes: u64,
}

/// Packs whose live chunks now also live in new packs.
struct Repacked {
    packs: HashSet<PackId>,
    bytes_written: u64,
}

/// Copies the live chunks of `packs` into new packs (indexed before this
/// returns). Every chunk is decoded and checked against its id first: a
/// damaged chunk is reported, and its pack left as it is.
async fn repack<R: Reporter>(
    repository: &Repository,
    packs: &[&PackUse<'_>],
    owner: &HashMap<ChunkId, PackId>,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<Repacked, RunFailure> {
    let mut done = HashSet::new();
    if packs.is_empty() {
        return Ok(Repacked {
            packs: done,
            bytes_written: 0,
        });
    }
    let store = repository.store();
    // Tree blobs go into packs of their own, as a backup packs them.
    let packer = Packer::start(repository, BlobType::Data, REPACK_QUEUE, cancel);
    let tree_packer = Packer::start(repository, BlobType::Tree, REPACK_QUEUE, cancel);
    for usage in packs {
        let id = usage.pack.pack_id;
        let key = layout::pack_key(&id);
        let bytes = store.get_bytes(&key, cancel).await?;
        let live: Vec<_> = usage
            .pack
            .entries
            .iter()
            .filter(|entry| owner.get(&entry.chunk_id) == Some(&id))
            .cloned()
            .collect();
        let opener = repository.blob_opener();
        let sealing = usage.pack.sealing;
        let level = repository.settings().compression_level;
        let blobs = tokio::task::spawn_blocking(move || {
            let mut compressor = new_compressor(level)?;
            live.iter()
                .map(|entry| {
                    let blob = blob_slice(&bytes, entry)?;
                    let chunk = opener.repack(entry, sealing.as_ref(), blob, &mut compressor)?;
                    Ok((entry.blob_type, chunk))
                })
                .collect::<Result<Vec<_>, coffer_format::FormatError>>()
        })
        .await
        .map_err(|e| RunFailure::retryable(format!("repacking task failed: {e}")))?;
        match blobs {
            Ok(blobs) => {
                for (blob_type, blob) in blobs {
                    let queue = match blob_type {
                        BlobType::Data => packer.queue(),
                        BlobType::Tree => tree_packer.queue(),
                    };
                    if queue.send(blob).await.is_err() {
                        break;
                    }
                }
                done.insert(id);
            }
            Err(error) => {
                batcher
                    .error(
                        key.as_bytes(),
                        format!("not repacked, a live chunk is damaged: {error}"),
                    )
                    .await?;
            }
        }
    }
    let bytes_written = packer.finish().await?.packs + tree_packer.finish().await?.packs;
    batcher.progress.bytes_uploaded += to_i64(bytes_written);
    Ok(Repacked {
        packs: done,
        bytes_written,
    })
}
