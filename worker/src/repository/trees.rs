//! Reading the manifests of format v2, whose entries live in `tree` blobs
//! named by `subtree` lines. A manifest is fetched whole; its subtree lines
//! are listed first, their blobs located in the chunk index and fetched,
//! one ranged read per run of neighbouring blobs in a pack (the backup
//! packs tree blobs on their own, so a snapshot's trees sit together), and
//! the reader then expands each line from them. A blob is authenticated
//! and checked against its id when its line is reached, and dropped once
//! expanded.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use coffer_format::crypto::SealedReader;
use coffer_format::layout;
use coffer_format::manifest::{list_subtrees, TreeSource};
use coffer_format::pack::PackSealing;
use coffer_format::{
    BlobType, ChunkId, ChunkIndex, FormatError, ManifestReader, ObjectKind, PackEntry, PackId,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::{BlobOpener, IndexUse, Repository, RepositoryError, StoredManifest};

/// Ranged reads of tree blobs in flight at once.
const TREE_FETCH_PARALLELISM: usize = 8;
/// Blobs of one pack at most this far apart are fetched in one read.
const MAX_FETCH_GAP: u32 = 1 << 20;

/// A manifest's stored bytes with the tree blobs it names, listed but not
/// fetched yet: fetching needs the chunk index, which a backup loads
/// alongside.
pub struct FetchedManifest {
    key: String,
    bytes: Vec<u8>,
    /// Tree blobs named by its `subtree` lines, in order (none in v1).
    trees: Vec<ChunkId>,
}

impl FetchedManifest {
    /// The tree blobs the manifest names (which a collection counts as live).
    pub fn trees(&self) -> &[ChunkId] {
        &self.trees
    }
}

/// Tree blobs fetched for one manifest, handed to its reader.
struct FetchedTrees {
    opener: BlobOpener,
    blobs: HashMap<ChunkId, (PackEntry, Option<PackSealing>, Vec<u8>)>,
}

impl TreeSource for FetchedTrees {
    fn tree_blob(&mut self, id: &ChunkId) -> Result<Vec<u8>, FormatError> {
        let (entry, sealing, bytes) = self.blobs.remove(id).ok_or_else(|| {
            FormatError::Corrupt(format!("tree blob {id} is named twice or was not listed"))
        })?;
        self.opener
            .open_entry(&entry, sealing.as_ref(), &bytes)
            .map_err(|e| FormatError::Corrupt(format!("tree blob {id} is damaged: {e}")))
    }
}

impl Repository {
    /// Fetches the manifest under `key` and lists the tree blobs it names.
    pub async fn fetch_manifest(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<FetchedManifest, RepositoryError> {
        let bytes = self.store.get_bytes(key, cancel).await?;
        if self.keys.is_none() {
            return Ok(FetchedManifest {
                key: key.to_owned(),
                bytes,
                trees: Vec::new(),
            });
        }
        let repository = self.clone();
        let owned_key = key.to_owned();
        // Decrypting and scanning a large manifest is CPU work.
        tokio::task::spawn_blocking(move || {
            let trees = repository
                .manifest_lines(&owned_key, &bytes)
                .and_then(list_subtrees)
                .map_err(|e| RepositoryError::format(format!("manifest {owned_key}"), e))?;
            Ok(FetchedManifest {
                key: owned_key,
                bytes,
                trees: trees.into_iter().map(|subtree| subtree.blob).collect(),
            })
        })
        .await
        .map_err(|e| {
            RepositoryError::format(
                format!("manifest {key}"),
                FormatError::Corrupt(format!("reading task failed: {e}")),
            )
        })?
    }

    /// Opens a fetched manifest for reading, first fetching the tree blobs
    /// it names as located in `index` (loaded here when `None` and needed).
    /// A tree blob the index does not hold as a tree fails the manifest.
    pub async fn open_manifest(
        &self,
        manifest: FetchedManifest,
        index: Option<&ChunkIndex>,
        cancel: &CancellationToken,
    ) -> Result<StoredManifest, RepositoryError> {
        let FetchedManifest { key, bytes, trees } = manifest;
        let context = || format!("manifest {key}");
        let Some(keys) = self.keys.clone() else {
            return ManifestReader::new(Box::new(Cursor::new(bytes)) as Box<dyn Read + Send>)
                .map_err(|e| RepositoryError::format(context(), e));
        };
        let loaded;
        let index = match index {
            Some(index) => index,
            None if trees.is_empty() => &ChunkIndex::new(),
            None => {
                loaded = self.load_index(IndexUse::Read, cancel).await?;
                &loaded
            }
        };
        let blobs = self.fetch_trees(&key, index, &trees, cancel).await?;
        let source = FetchedTrees {
            opener: self.blob_opener(),
            blobs,
        };
        SealedReader::new(Cursor::new(bytes), &keys, ObjectKind::Manifest, &key)
            .and_then(|sealed| {
                ManifestReader::with_trees(
                    Box::new(sealed) as Box<dyn Read + Send>,
                    Box::new(source),
                )
            })
            .map_err(|e| RepositoryError::format(context(), e))
    }

    /// The plaintext lines of a v2 manifest's stored bytes.
    fn manifest_lines<'a>(
        &self,
        key: &str,
        bytes: &'a [u8],
    ) -> Result<SealedReader<&'a [u8]>, FormatError> {
        let keys = self
            .keys
            .as_ref()
            .expect("only v2 manifests are sealed and hold trees");
        SealedReader::new(bytes, keys, ObjectKind::Manifest, key)
    }

    /// Fetches the stored bytes of the tree blobs `ids` the manifest under
    /// `key` names, grouped by pack.
    async fn fetch_trees(
        &self,
        key: &str,
        index: &ChunkIndex,
        ids: &[ChunkId],
        cancel: &CancellationToken,
    ) -> Result<HashMap<ChunkId, (PackEntry, Option<PackSealing>, Vec<u8>)>, RepositoryError> {
        let mut by_pack: HashMap<PackId, Vec<(PackEntry, Option<PackSealing>)>> = HashMap::new();
        for id in ids {
            let location = index.get(id).filter(|l| l.blob_type == BlobType::Tree);
            let Some(location) = location else {
                return Err(RepositoryError::format(
                    format!("manifest {key}"),
                    FormatError::Corrupt(format!(
                        "tree blob {id} is in no index of this repository (missing)"
                    )),
                ));
            };
            by_pack
                .entry(location.pack_id)
                .or_default()
                .push((location.entry(*id), location.sealing));
        }
        let reads = by_pack.into_iter().flat_map(|(pack, mut blobs)| {
            blobs.sort_by_key(|(entry, _)| entry.offset);
            neighbours(blobs).into_iter().map(move |run| (pack, run))
        });
        let fetched: Vec<Vec<_>> = stream::iter(reads)
            .map(|(pack, run)| self.fetch_run(pack, run, cancel))
            .buffer_unordered(TREE_FETCH_PARALLELISM)
            .try_collect()
            .await?;
        Ok(fetched
            .into_iter()
            .flatten()
            .map(|(entry, sealing, bytes)| (entry.chunk_id, (entry, sealing, bytes)))
            .collect())
    }

    /// Reads one run of neighbouring blobs of `pack` and cuts it apart.
    async fn fetch_run(
        &self,
        pack: PackId,
        run: Vec<(PackEntry, Option<PackSealing>)>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(PackEntry, Option<PackSealing>, Vec<u8>)>, RepositoryError> {
        let (Some((first, _)), Some((last, _))) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let start = u64::from(first.offset);
        let end = u64::from(last.offset) + u64::from(last.length);
        let bytes = self
            .store
            .get_range(&layout::pack_key(&pack), start, end - start, cancel)
            .await?;
        run.into_iter()
            .map(|(entry, sealing)| {
                let from = usize::try_from(u64::from(entry.offset) - start).unwrap_or(usize::MAX);
                let blob = from
                    .checked_add(entry.length as usize)
                    .and_then(|to| bytes.get(from..to))
                    .ok_or_else(|| {
                        RepositoryError::format(
                            format!("pack {pack}"),
                            FormatError::Corrupt(format!(
                                "tree blob {} lies beyond the bytes read",
                                entry.chunk_id
                            )),
                        )
                    })?
                    .to_vec();
                Ok((entry, sealing, blob))
            })
            .collect()
    }
}

/// Splits blobs sorted by offset into runs read at once: a blob joins the
/// run before it when it starts at most [`MAX_FETCH_GAP`] after its end.
fn neighbours(
    blobs: Vec<(PackEntry, Option<PackSealing>)>,
) -> Vec<Vec<(PackEntry, Option<PackSealing>)>> {
    let mut runs: Vec<Vec<(PackEntry, Option<PackSealing>)>> = Vec::new();
    for blob in blobs {
        let joins = runs
            .last()
            .and_then(|run| run.last())
            .is_some_and(|(prev, _)| {
                let prev_end = u64::from(prev.offset) + u64::from(prev.length);
                u64::from(blob.0.offset) <= prev_end + u64::from(MAX_FETCH_GAP)
            });
        match runs.last_mut() {
            Some(run) if joins => run.push(blob),
            _ => runs.push(vec![blob]),
        }
    }
    runs
}
