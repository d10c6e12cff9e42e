//! A repository in a [`Store`]: its config, its chunk index and its
//! snapshot manifests, in the format `coffer-format` defines.

use std::io::Cursor;
use std::sync::Arc;

use coffer_format::layout::{self, CONFIG_KEY, INDEX_PREFIX};
use coffer_format::{
    decode_blob, ChunkHasher, ChunkId, ChunkIndex, ChunkLocation, FormatError, IndexFile, IndexId,
    ManifestReader, RepositoryConfig,
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
            RepositoryError::Format { .. } | RepositoryError::Missing(_) => false,
        }
    }

    /// Whether the operation was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RepositoryError::Store(StoreError::Cancelled))
    }
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
        let key: [u8; 32] = chunk_key.try_into().map_err(|_| {
            RepositoryError::format(
                "creating the repository",
                FormatError::InvalidInput(format!(
                    "the control plane sent a chunk key of {} bytes, not 32",
                    chunk_key.len()
                )),
            )
        })?;
        let config = RepositoryConfig::new(key);
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

    /// Loads every index file into one chunk index. Each file is checked
    /// against its name, so a damaged index is an error, not a wrong answer.
    pub async fn load_index(
        &self,
        cancel: &CancellationToken,
    ) -> Result<ChunkIndex, RepositoryError> {
        let keys = self.store.list(INDEX_PREFIX, cancel).await?;
        let files: Vec<IndexFile> = stream::iter(
            keys.into_iter()
                .filter_map(|key| layout::parse_index_key(&key).map(|id| (key, id))),
        )
        .map(|(key, id)| async move { self.read_index_file(&key, id, cancel).await })
        .buffer_unordered(INDEX_FETCH_PARALLELISM)
        .try_collect()
        .await?;
        let mut index = ChunkIndex::new();
        for file in &files {
            index.add_file(file);
        }
        Ok(index)
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
