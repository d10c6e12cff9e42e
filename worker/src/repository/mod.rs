//! A repository in a [`Store`]: its config, its chunk index and its
//! snapshot manifests, in the format `coffer-format` defines (v1, or v2
//! with every object sealed); and the [`packer`] that writes new packs into
//! it. The repository knows its version: the pipelines above it are the
//! same for both, and the few places where the formats differ (how an
//! object is encoded or opened) switch here.

mod access;
mod blobs;
pub mod key_slots;
mod manifests;
pub(crate) mod packer;
mod trees;

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use coffer_format::layout::{self, CONDEMNED_PREFIX, CONFIG_KEY, INDEX_PREFIX};
use coffer_format::{
    ChunkHasher, ChunkId, ChunkIndex, ChunkLocation, Chunker, ChunkerParams, CondemnedSet,
    FormatError, IndexFile, IndexId, ManifestReader, PackId, RepositoryConfig, RepositoryKeys,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

pub use access::{KeySlotSummary, NewFormat, PinnedGeneration, RepositoryAccess};
pub use blobs::BlobOpener;
pub use manifests::ManifestOutput;
pub use trees::FetchedManifest;

use crate::store::{Store, StoreError};

/// Index files fetched at once when loading the chunk index.
const INDEX_FETCH_PARALLELISM: usize = 8;

/// A manifest being read, of either format.
pub type StoredManifest = ManifestReader<Box<dyn Read + Send>>;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// An object is damaged or of an unknown format.
    #[error("{context}: {source}")]
    Format {
        /// What was being read, naming the object.
        context: String,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// The repository has no `config`.
    #[error("no Coffer repository at {0} (its `config` object is missing)")]
    Missing(String),
    /// The repository in storage is not the one the catalog means: another
    /// repository was reached by the same path (moved, replaced, or planted).
    #[error("the repository at {0} has another identity than the catalog's; refusing to use it")]
    OtherIdentity(String),
    /// The repository in storage disagrees with the catalog's record of it
    /// (its format, encryption or key generation).
    #[error("refusing the repository at {location}: {reason}")]
    Refused {
        /// Where the repository is.
        location: String,
        /// What disagrees.
        reason: String,
    },
}

impl RepositoryError {
    fn format(context: impl Into<String>, source: FormatError) -> Self {
        RepositoryError::Format {
            context: context.into(),
            source,
        }
    }

    fn refused(store: &Store, reason: &str) -> Self {
        RepositoryError::Refused {
            location: store.describe(),
            reason: reason.to_owned(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepositoryError::Store(error) => error.is_retryable(),
            RepositoryError::Format { .. }
            | RepositoryError::Missing(_)
            | RepositoryError::OtherIdentity(_)
            | RepositoryError::Refused { .. } => false,
        }
    }

    /// Whether the operation was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RepositoryError::Store(StoreError::Cancelled))
    }
}

/// What a loaded chunk index is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUse {
    /// Finding chunks to read (restore, verify): packs condemned by garbage
    /// collection are still found, after every other copy of a chunk.
    Read,
    /// Deduplicating new data (backup): condemned packs are left out, so a
    /// new snapshot never refers to a pack that is about to be deleted.
    Write,
}

/// How new data is cut, compressed and packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSettings {
    /// Chunk sizes.
    pub chunker: ChunkerParams,
    /// Pack size to aim for, in bytes.
    pub pack_target_size: u32,
    /// zstd level of chunks.
    pub compression_level: i32,
}

/// One index file as stored.
#[derive(Debug, Clone)]
pub struct StoredIndex {
    /// Its key.
    pub key: String,
    /// Its id (the hash its name carries).
    pub id: IndexId,
    /// Its content.
    pub file: IndexFile,
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    store: Arc<Store>,
    /// The identity in the repository's `config`.
    repository_id: String,
    settings: DataSettings,
    hasher: ChunkHasher,
    /// The keys of a v2 repository; `None` for v1.
    keys: Option<Arc<RepositoryKeys>>,
    /// The key slots of an encrypted v2 repository, as found when opened.
    key_slots: Vec<KeySlotSummary>,
}

impl Repository {
    /// Opens the repository in `store`, creating it as `access` says when
    /// it has no `config` yet (a backup). An existing repository is checked
    /// against `access` (identity; for v2 also encryption and the pinned
    /// key generation), whatever was asked to be created.
    pub async fn open_or_create(
        store: Arc<Store>,
        access: &RepositoryAccess,
        cancel: &CancellationToken,
    ) -> Result<Self, RepositoryError> {
        match Self::open(Arc::clone(&store), access, cancel).await {
            Err(RepositoryError::Missing(_)) => {}
            other => return other,
        }
        access::create(&store, access, cancel).await?;
        // Read back: if another writer created it first, its config is the
        // one on storage and the one to use.
        Self::open(store, access, cancel).await
    }

    /// Checks that the repository in `store` is the one `access` names,
    /// and returns its key slots (none for v1, unencrypted or missing).
    /// With `create` (a backup), a missing repository is created; without
    /// it, a missing repository is left for the run to report.
    pub async fn check_identity(
        store: Arc<Store>,
        access: &RepositoryAccess,
        create: bool,
        cancel: &CancellationToken,
    ) -> Result<Vec<KeySlotSummary>, RepositoryError> {
        let opened = if create {
            Self::open_or_create(store, access, cancel).await
        } else {
            Self::open(store, access, cancel).await
        };
        match opened {
            Ok(repository) => Ok(repository.key_slots),
            Err(RepositoryError::Missing(_)) => Ok(Vec::new()),
            Err(other) => Err(other),
        }
    }

    /// Makes a v1 repository in `store` carry `access.repository_id`: a
    /// catalog rebuild (admin only) adopts the repository into the catalog
    /// that asked for it, e.g. after the catalog was lost and a new one gave
    /// the location a new identity. Only the identity changes; a missing
    /// repository is left for the rebuild to report. A v2 repository's
    /// identity is sealed in its keys and cannot be rewritten: it is opened
    /// under its own (`access.adopt`), which the rebuild reports for the
    /// catalog to record.
    ///
    /// Returns the key slots of a v2 repository, as [`Self::check_identity`].
    pub async fn adopt_identity(
        store: Arc<Store>,
        access: &RepositoryAccess,
        cancel: &CancellationToken,
    ) -> Result<Vec<KeySlotSummary>, RepositoryError> {
        let repository_id = access.repository_id.as_str();
        let bytes = match store.get_bytes(CONFIG_KEY, cancel).await {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            Err(other) => return Err(other.into()),
        };
        let Ok(config) = RepositoryConfig::from_bytes(&bytes) else {
            return Self::check_identity(store, access, false, cancel).await;
        };
        if repository_id.is_empty() || config.repository_id == repository_id {
            return Ok(Vec::new());
        }
        let config = config.with_repository_id(repository_id);
        store
            .put_bytes(CONFIG_KEY, config.to_bytes(), cancel)
            .await?;
        Ok(Vec::new())
    }

    /// Opens an existing repository as `access` allows.
    pub async fn open(
        store: Arc<Store>,
        access: &RepositoryAccess,
        cancel: &CancellationToken,
    ) -> Result<Self, RepositoryError> {
        Ok(match access::open(&store, access, cancel).await? {
            access::Opened::V1(config) => Repository {
                hasher: config.hasher(),
                repository_id: config.repository_id.clone(),
                settings: DataSettings {
                    chunker: config.chunker,
                    pack_target_size: config.pack_target_size,
                    compression_level: config.compression_level,
                },
                keys: None,
                key_slots: Vec::new(),
                store,
            },
            access::Opened::V2(keys, key_slots) => {
                let payload = keys.current().payload();
                Repository {
                    hasher: keys.hasher().clone(),
                    repository_id: keys.repository_id().to_owned(),
                    settings: DataSettings {
                        chunker: payload.chunker,
                        pack_target_size: payload.pack_target_size,
                        compression_level: payload.compression_level,
                    },
                    keys: Some(Arc::new(keys)),
                    key_slots,
                    store,
                }
            }
        })
    }

    /// The store the repository lives in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// How new data is cut, compressed and packed.
    pub fn settings(&self) -> DataSettings {
        self.settings
    }

    /// The format version: 1 or 2.
    pub fn version(&self) -> u32 {
        if self.keys.is_some() {
            2
        } else {
            1
        }
    }

    /// The identity the repository carries in storage (empty for a v1
    /// repository from before identities).
    pub fn repository_id(&self) -> &str {
        &self.repository_id
    }

    /// The keys of a v2 repository.
    pub fn keys(&self) -> Option<&Arc<RepositoryKeys>> {
        self.keys.as_ref()
    }

    /// The current key generation of a v2 repository, as the catalog pins it.
    pub fn generation(&self) -> Option<PinnedGeneration> {
        self.keys.as_ref().map(|keys| PinnedGeneration {
            generation: keys.current().generation(),
            fingerprint: keys.current().fingerprint(),
        })
    }

    /// The keyed hasher of chunk ids and content hashes.
    pub fn hasher(&self) -> &ChunkHasher {
        &self.hasher
    }

    /// A chunker for new data: v1's public gear table, or v2's keyed one.
    pub fn chunker(&self) -> Chunker {
        match &self.keys {
            Some(keys) => keys.chunker(),
            None => Chunker::new(self.settings.chunker),
        }
    }

    /// Opens blobs of this repository (on any thread).
    pub fn blob_opener(&self) -> BlobOpener {
        BlobOpener::new(self.hasher.clone(), self.keys.clone())
    }

    /// Encodes an index file naming `packs` (sealed in v2); returns its id
    /// and bytes, to store under [`layout::index_key`].
    pub fn encode_index(&self, file: &IndexFile) -> Result<(IndexId, Vec<u8>), FormatError> {
        match &self.keys {
            Some(keys) => file.encode_v2(keys, &mut rand::rngs::OsRng),
            None => file.encode(),
        }
    }

    /// Encodes a condemned set (sealed and bound to its key in v2).
    pub fn encode_condemned(&self, set: &CondemnedSet) -> Result<Vec<u8>, FormatError> {
        match &self.keys {
            Some(keys) => set.to_sealed(keys, &mut rand::rngs::OsRng),
            None => set.to_bytes(),
        }
    }

    /// Loads every index file into one chunk index, for `purpose`. Each file
    /// is checked against its name, so a damaged index is an error, not a
    /// wrong answer.
    pub async fn load_index(
        &self,
        purpose: IndexUse,
        cancel: &CancellationToken,
    ) -> Result<ChunkIndex, RepositoryError> {
        let files = self.read_index_files(cancel).await?;
        let condemned: HashSet<PackId> = self
            .condemned_sets(cancel)
            .await?
            .iter()
            .flat_map(|set| set.packs.iter().map(|pack| pack.pack_id))
            .collect();
        let mut index = ChunkIndex::new();
        let packs = || files.iter().flat_map(|stored| stored.file.packs.iter());
        for pack in packs().filter(|pack| !condemned.contains(&pack.pack_id)) {
            index.add_pack(pack);
        }
        if purpose == IndexUse::Read {
            for pack in packs().filter(|pack| condemned.contains(&pack.pack_id)) {
                index.add_pack(pack);
            }
        }
        Ok(index)
    }

    /// Reads every index file, checking each against its name.
    pub async fn read_index_files(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<StoredIndex>, RepositoryError> {
        let keys = self.store.list(INDEX_PREFIX, cancel).await?;
        stream::iter(
            keys.into_iter()
                .filter_map(|key| layout::parse_index_key(&key).map(|id| (key, id))),
        )
        .map(|(key, id)| async move {
            let file = self.read_index_file(&key, id, cancel).await?;
            Ok(StoredIndex { key, id, file })
        })
        .buffer_unordered(INDEX_FETCH_PARALLELISM)
        .try_collect()
        .await
    }

    /// Every condemned set garbage collection left waiting, oldest first.
    pub async fn condemned_sets(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<CondemnedSet>, RepositoryError> {
        let mut sets = Vec::new();
        for key in self.store.list(CONDEMNED_PREFIX, cancel).await? {
            if layout::parse_condemned_key(&key).is_none() {
                continue;
            }
            let bytes = match self.store.get_bytes(&key, cancel).await {
                Ok(bytes) => bytes,
                // Finished and removed by a collection since the listing.
                Err(StoreError::NotFound { .. }) => continue,
                Err(other) => return Err(other.into()),
            };
            let set = match &self.keys {
                Some(keys) => CondemnedSet::from_sealed(keys, &key, &bytes),
                None => CondemnedSet::from_bytes(&bytes),
            }
            .map_err(|e| RepositoryError::format(format!("condemned set {key}"), e))?;
            sets.push(set);
        }
        sets.sort_by_key(|set| set.marked);
        Ok(sets)
    }

    async fn read_index_file(
        &self,
        key: &str,
        id: IndexId,
        cancel: &CancellationToken,
    ) -> Result<IndexFile, RepositoryError> {
        let bytes = self.store.get_bytes(key, cancel).await?;
        if IndexId::compute(&bytes) != id {
            return Err(RepositoryError::format(
                format!("index file {key}"),
                FormatError::Corrupt("its content does not match its name".into()),
            ));
        }
        let decoded = match &self.keys {
            Some(keys) => IndexFile::decode_v2(keys, key, &bytes),
            None => IndexFile::decode(&bytes),
        };
        decoded.map_err(|e| RepositoryError::format(format!("index file {key}"), e))
    }

    /// Opens the manifest stored under `key`, with the tree blobs it names
    /// located in `index` (loaded when `None` and needed).
    pub async fn read_manifest(
        &self,
        key: &str,
        index: Option<&ChunkIndex>,
        cancel: &CancellationToken,
    ) -> Result<StoredManifest, RepositoryError> {
        let fetched = self.fetch_manifest(key, cancel).await?;
        self.open_manifest(fetched, index, cancel).await
    }

    /// Fetches one chunk from its pack and checks it against its id.
    pub async fn read_chunk(
        &self,
        id: ChunkId,
        location: ChunkLocation,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, RepositoryError> {
        let key = layout::pack_key(&location.pack_id);
        let blob = self
            .store
            .get_range(
                &key,
                u64::from(location.offset),
                u64::from(location.length),
                cancel,
            )
            .await?;
        let opener = self.blob_opener();
        tokio::task::spawn_blocking(move || opener.open(id, &location, &blob))
            .await
            .map_err(|e| {
                RepositoryError::format(
                    format!("chunk {id}"),
                    FormatError::Corrupt(format!("decoding task failed: {e}")),
                )
            })?
            .map_err(|e| RepositoryError::format(format!("chunk {id} in {key}"), e))
    }
}
