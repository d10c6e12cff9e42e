//! The repository config: the one object written when a repository is
//! created (key [`crate::layout::CONFIG_KEY`]) and read before anything else.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{check_format, FormatError};
use crate::hash::ChunkHasher;
use crate::id::{parse_hex32, to_hex};
use crate::version::{FORMAT_NAME, FORMAT_VERSION};

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

/// Smallest `min_size` the chunker accepts (a limit of the FastCDC tables).
pub const MIN_CHUNK_MIN_SIZE: u32 = fastcdc::v2020::MINIMUM_MIN;
/// Smallest `avg_size` the chunker accepts.
pub const MIN_CHUNK_AVG_SIZE: u32 = fastcdc::v2020::AVERAGE_MIN;
/// Largest `avg_size` the chunker accepts.
pub const MAX_CHUNK_AVG_SIZE: u32 = fastcdc::v2020::AVERAGE_MAX;
/// Largest `max_size` the chunker accepts; also the largest chunk a pack
/// holds ([`crate::pack::MAX_CHUNK_SIZE`]).
pub const MAX_CHUNK_MAX_SIZE: u32 = fastcdc::v2020::MAXIMUM_MAX;

/// Content-defined chunking sizes, in bytes.
///
/// They are part of the repository: chunks cut with other sizes have other
/// boundaries and no longer deduplicate against existing data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No cut is made before this many bytes (except at the end of a stream).
    pub min_size: u32,
    /// The size the cut-point mask aims for.
    pub avg_size: u32,
    /// A cut is forced at this many bytes.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: large enough that a 1M-chunk index covers
    /// about 1 TiB, small enough that an edit rewrites only about 1 MiB.
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 * KIB,
            avg_size: MIB,
            max_size: 4 * MIB,
        }
    }
}

impl ChunkerParams {
    /// Checks the sizes are ordered and within what FastCDC supports.
    ///
    /// The FastCDC crate panics on out-of-range sizes; these sizes come from
    /// stored objects, so they are checked before use instead.
    pub fn validate(&self) -> Result<(), FormatError> {
        let ChunkerParams {
            min_size,
            avg_size,
            max_size,
        } = *self;
        let in_range = (MIN_CHUNK_MIN_SIZE..=fastcdc::v2020::MINIMUM_MAX).contains(&min_size)
            && (MIN_CHUNK_AVG_SIZE..=MAX_CHUNK_AVG_SIZE).contains(&avg_size)
            && (fastcdc::v2020::MAXIMUM_MIN..=MAX_CHUNK_MAX_SIZE).contains(&max_size);
        if in_range && min_size <= avg_size && avg_size <= max_size {
            return Ok(());
        }
        Err(FormatError::InvalidInput(format!(
            "chunker sizes {min_size}/{avg_size}/{max_size} must satisfy \
             {MIN_CHUNK_MIN_SIZE} <= min <= avg <= max <= {MAX_CHUNK_MAX_SIZE} \
             and {MIN_CHUNK_AVG_SIZE} <= avg <= {MAX_CHUNK_AVG_SIZE}"
        )))
    }
}

/// Settings fixed when a repository is created.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryConfig {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version the repository was created with.
    pub version: u32,
    /// Key for chunk ids and content hashes, stored as 64 hex digits. It is
    /// an identifier key, not an encryption key: see [`crate::hash`].
    #[serde(with = "hex_key")]
    pub chunk_key: [u8; 32],
    /// Content-defined chunking sizes.
    pub chunker: ChunkerParams,
    /// Writers seal a pack once its blob data reaches this many bytes.
    pub pack_target_size: u32,
    /// zstd level for blobs, index files and manifests.
    pub compression_level: i32,
    /// The identity the control plane's catalog gave the repository (a
    /// UUID), so a worker can tell one repository from another reached by
    /// the same path. Empty in configs written before identities existed,
    /// which stay readable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository_id: String,
}

/// Longest accepted [`RepositoryConfig::repository_id`].
pub const MAX_REPOSITORY_ID_LEN: usize = 64;

/// Only the fields every version must keep, read first so that a config of
/// a newer version is reported as unsupported rather than as bad JSON.
#[derive(Deserialize)]
struct FormatProbe {
    format: String,
    version: u32,
}

impl RepositoryConfig {
    /// Default pack size: large enough to keep object counts and request
    /// costs low, small enough to buffer a pack in memory before upload.
    pub const DEFAULT_PACK_TARGET_SIZE: u32 = 16 * MIB;
    /// Default zstd level: zstd's own default, fast with a fair ratio.
    pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

    /// A config for a new repository with the default sizes and level.
    pub fn new(chunk_key: [u8; 32]) -> Self {
        RepositoryConfig {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            chunk_key,
            chunker: ChunkerParams::default(),
            pack_target_size: Self::DEFAULT_PACK_TARGET_SIZE,
            compression_level: Self::DEFAULT_COMPRESSION_LEVEL,
            repository_id: String::new(),
        }
    }

    /// The same config naming the repository's identity.
    pub fn with_repository_id(mut self, repository_id: &str) -> Self {
        self.repository_id = repository_id.to_owned();
        self
    }

    /// The config as pretty-printed JSON, for people reading the bucket.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("a struct of strings and numbers serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a stored config, rejecting other formats and newer versions
    /// with [`FormatError::UnsupportedFormat`] and invalid settings with
    /// [`FormatError::Corrupt`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let probe: FormatProbe = serde_json::from_slice(bytes)?;
        check_format(&probe.format, probe.version)?;
        let config: RepositoryConfig = serde_json::from_slice(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// A hasher keyed with this repository's `chunk_key`.
    pub fn hasher(&self) -> ChunkHasher {
        ChunkHasher::new(self.chunk_key)
    }

    fn validate(&self) -> Result<(), FormatError> {
        check_settings(
            &self.chunker,
            self.pack_target_size,
            self.compression_level,
            &self.repository_id,
        )
        .map_err(|reason| FormatError::Corrupt(format!("config: {reason}")))
    }
}

/// Checks the settings a stored config (v1) or generation payload (v2)
/// fixes: chunker sizes, a non-zero pack size, a zstd level and a plain
/// repository id (hex digits and hyphens, as a UUID is written).
pub(crate) fn check_settings(
    chunker: &ChunkerParams,
    pack_target_size: u32,
    compression_level: i32,
    repository_id: &str,
) -> Result<(), String> {
    chunker.validate().map_err(|err| err.to_string())?;
    if pack_target_size == 0 {
        return Err("pack_target_size is 0".to_owned());
    }
    if !is_plain_repository_id(repository_id) {
        return Err("repository_id is not a plain identifier".to_owned());
    }
    if !zstd::compression_level_range().contains(&compression_level) {
        return Err(format!(
            "compression_level {compression_level} is outside zstd's range"
        ));
    }
    Ok(())
}

/// At most [`MAX_REPOSITORY_ID_LEN`] hex digits and hyphens.
pub(crate) fn is_plain_repository_id(repository_id: &str) -> bool {
    repository_id.len() <= MAX_REPOSITORY_ID_LEN
        && repository_id
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl fmt::Debug for RepositoryConfig {
    // The key never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("format", &self.format)
            .field("version", &self.version)
            .field("chunk_key", &"<redacted>")
            .field("chunker", &self.chunker)
            .field("pack_target_size", &self.pack_target_size)
            .field("compression_level", &self.compression_level)
            .field("repository_id", &self.repository_id)
            .finish()
    }
}

/// Serde for the 32-byte key as hex text.
pub(crate) mod hex_key {
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::{parse_hex32, to_hex};

    pub fn serialize<S: Serializer>(key: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_hex(key))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_hex32(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = i as u8;
        }
        key
    }

    #[test]
    fn config_round_trips_through_json() {
        let mut config = RepositoryConfig::new(key());
        config.compression_level = 9;
        let bytes = config.to_bytes();
        let text = std::str::from_utf8(&bytes).expect("json is utf-8");
        assert!(text.contains("\"format\": \"coffer\""));
        assert!(text.contains(&to_hex(&key())));
        let back = RepositoryConfig::from_bytes(&bytes).expect("parses");
        assert_eq!(back, config);
        assert_eq!(back.chunker, ChunkerParams::default());
        assert_eq!(back.pack_target_size, 16 * 1024 * 1024);
        assert_eq!(
            back.hasher().chunk_id(b"x"),
            ChunkHasher::new(key()).chunk_id(b"x")
        );
    }

    #[test]
    fn other_format_name_is_unsupported() {
        let mut config = RepositoryConfig::new(key());
        config.format = "restic".to_owned();
        let err = RepositoryConfig::from_bytes(&config.to_bytes()).expect_err("must reject");
        assert!(
            matches!(err, FormatError::UnsupportedFormat { ref format, version: 1 } if format == "restic"),
            "{err}"
        );
    }

    #[test]
    fn newer_version_is_unsupported_even_with_unknown_fields() {
        let json = br#"{"format":"coffer","version":2,"something_new":{"x":1}}"#;
        let err = RepositoryConfig::from_bytes(json).expect_err("must reject");
        assert!(
            matches!(err, FormatError::UnsupportedFormat { version: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn invalid_chunker_sizes_are_rejected_not_panicked_on() {
        let mut config = RepositoryConfig::new(key());
        config.chunker.min_size = 8 * 1024 * 1024;
        let err = RepositoryConfig::from_bytes(&config.to_bytes()).expect_err("must reject");
        assert!(err.is_corruption(), "{err}");
    }

    #[test]
    fn the_repository_id_round_trips_and_old_configs_stay_readable() {
        let id = "0190a0c4-8a1e-7b52-9c3d-3f0e5a6b7c8d";
        let config = RepositoryConfig::new(key()).with_repository_id(id);
        let back = RepositoryConfig::from_bytes(&config.to_bytes()).expect("parses");
        assert_eq!(back.repository_id, id);
        let old = RepositoryConfig::new(key()).to_bytes();
        assert!(!std::str::from_utf8(&old)
            .expect("utf-8")
            .contains("repository_id"));
        let back = RepositoryConfig::from_bytes(&old).expect("a config without an id parses");
        assert!(back.repository_id.is_empty());
    }

    #[test]
    fn a_repository_id_that_is_not_an_identifier_is_corrupt() {
        for bad in ["../x".to_owned(), "a".repeat(65), "id\n".to_owned()] {
            let config = RepositoryConfig::new(key()).with_repository_id(&bad);
            let err = RepositoryConfig::from_bytes(&config.to_bytes()).expect_err(&bad);
            assert!(err.is_corruption(), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let config = RepositoryConfig::new([0xab; 32]);
        assert!(!format!("{config:?}").contains("abab"));
    }
}
