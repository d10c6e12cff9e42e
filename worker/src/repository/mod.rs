//! A repository in a [`Store`]: its config, its chunk index and its
//! snapshot manifests, in the format `coffer-format` defines; and the
//! [`packer`] that writes new packs into it.

pub(crate) mod packer;

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Arc;

use coffer_format::layout::{self, CONDEMNED_PREFIX, CONFIG_KEY, INDEX_PREFIX};
use coffer_format::{
    decode_blob, ChunkHasher, ChunkId, ChunkIndex, ChunkLocation, CondemnedSet, FormatError,
    IndexFile, IndexId, ManifestReader, PackId, RepositoryConfig,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// Index files fetched at once when loading the chunk index.
const INDEX_FETCH_PARALLELISM: usize = 8;

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
}

impl RepositoryError {
    fn format(context: impl Into<String>, source: FormatError) -> Self {
        RepositoryError::Format {
            context: context.into(),
            source,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepositoryError::Store(error) => error.is_retryable(),
            RepositoryError::Format { .. }
            | RepositoryError::Missing(_)
            | RepositoryError::OtherIdentity(_) => false,
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
    config: Arc<RepositoryConfig>,
    hasher: ChunkHasher,
}

impl Repository {
    /// Opens the repository in `store`, creating it with `chunk_key` when it
    /// has no `config` yet. An existing config wins over `chunk_key` (it is
    /// what the repository's chunk ids were computed with).
    pub async fn open_or_create(
        store: Arc<Store>,
        chunk_key: &[u8],
        cancel: &CancellationToken,
    ) -> Result<Self, RepositoryError> {
        match Self::open(Arc::clone(&store), cancel).await {
            Err(RepositoryError::Missing(_)) => {}
            other => return other,
        }
        Self::create(store, chunk_key, "", cancel).await
    }

    /// Checks that the repository in `store` is the one the catalog names
    /// `repository_id` (a config without an identity, written before
    /// identities existed, is accepted). With `create_with_key` (a backup),
    /// a missing repository is created with that key and identity; without
    /// it, a missing repository is left for the run to report.
    pub async fn check_identity(
        store: Arc<Store>,
        repository_id: &str,
        create_with_key: Option<&[u8]>,
        cancel: &CancellationToken,
    ) -> Result<(), RepositoryError> {
        let opened = match Self::open(Arc::clone(&store), cancel).await {
            Err(RepositoryError::Missing(_)) => match create_with_key {
                Some(key) => Self::create(Arc::clone(&store), key, repository_id, cancel).await?,
                None => return Ok(()),
            },
            other => other?,
        };
        let stored = &opened.config.repository_id;
        if repository_id.is_empty() || stored.is_empty() || stored == repository_id {
            return Ok(());
        }
        Err(RepositoryError::OtherIdentity(store.describe()))
    }

    /// Makes the repository in `store` carry `repository_id`: a catalog
    /// rebuild (admin only) adopts the repository into the catalog that
    /// asked for it, e.g. after the catalog was lost and a new one gave the
    /// location a new identity. Only the identity changes; a missing
    /// repository is left for the rebuild to report.
    pub async fn adopt_identity(
        store: Arc<Store>,
        repository_id: &str,
        cancel: &CancellationToken,
    ) -> Result<(), RepositoryError> {
        let opened = match Self::open(Arc::clone(&store), cancel).await {
            Err(RepositoryError::Missing(_)) => return Ok(()),
            other => other?,
        };
        if repository_id.is_empty() || opened.config.repository_id == repository_id {
            return Ok(());
        }
        let config = opened
            .config
            .as_ref()
            .clone()
            .with_repository_id(repository_id);
        store
            .put_bytes(CONFIG_KEY, config.to_bytes(), cancel)
            .await?;
        Ok(())
    }

    /// Writes a new config with `chunk_key` and `repository_id`, then reads
    /// back whatever config won.
    async fn create(
        store: Arc<Store>,
        chunk_key: &[u8],
        repository_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Self, RepositoryError> {
        let key: [u8; 32] = chunk_key.try_into().map_err(|_| {
            RepositoryError::format(
                "creating the repository",
                FormatError::InvalidInput(format!(
                    "the control plane sent a chunk key of {} bytes, not 32",
                    chunk_key.len()
                )),
            )
        })?;
        let config = RepositoryConfig::new(key).with_repository_id(repository_id);
        store
            .put_bytes(CONFIG_KEY, config.to_bytes(), cancel)
            .await?;
        // Read back: if another writer created it first with a different key,
        // its config is the one on storage and the one to use.
        Self::open(store, cancel).await
    }

    /// Opens an existing repository.
    pub async fn open(
        store: Arc<Store>,
        cancel: &CancellationToken,
    ) -> Result<Self, RepositoryError> {
        let bytes = match store.get_bytes(CONFIG_KEY, cancel).await {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => {
                return Err(RepositoryError::Missing(store.describe()))
            }
            Err(other) => return Err(other.into()),
        };
        let config = RepositoryConfig::from_bytes(&bytes)
            .map_err(|e| RepositoryError::format("reading the repository config", e))?;
        Ok(Repository {
            store,
            hasher: config.hasher(),
            config: Arc::new(config),
        })
    }

    /// The store the repository lives in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The repository's parameters.
    pub fn config(&self) -> &RepositoryConfig {
        &self.config
    }

    /// The keyed hasher of chunk ids and content hashes.
    pub fn hasher(&self) -> &ChunkHasher {
        &self.hasher
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
            let set = CondemnedSet::from_bytes(&bytes)
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
        IndexFile::decode(&bytes)
            .map_err(|e| RepositoryError::format(format!("index file {key}"), e))
    }

    /// Opens the manifest stored under `key`.
    pub async fn read_manifest(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<ManifestReader<Cursor<Vec<u8>>>, RepositoryError> {
        let bytes = self.store.get_bytes(key, cancel).await?;
        ManifestReader::new(Cursor::new(bytes))
            .map_err(|e| RepositoryError::format(format!("manifest {key}"), e))
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
        let hasher = self.hasher.clone();
        tokio::task::spawn_blocking(move || decode_blob(&hasher, &location.entry(id), &blob))
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
