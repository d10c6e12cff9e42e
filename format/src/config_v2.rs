//! The public config of a format v2 repository (key [`crate::layout::CONFIG_KEY`]).
//!
//! ```json
//! {"format": "coffer", "version": 2, "repository_id": "<uuid>", "encryption": "aes-256-gcm"}
//! ```
//!
//! It holds no secret and nothing a reader trusts on its own: `format` and
//! `version` select the parser, and `repository_id` and `encryption` are
//! checked against the sealed generation payloads (and the catalog). An
//! unencrypted repository (`"encryption": "none"`) also holds its only
//! generation payload, keys included, under `"generation"`.

use serde::{Deserialize, Serialize};

use crate::config::{is_plain_repository_id, RepositoryConfig};
use crate::crypto::{Encryption, GenerationPayload, RepositoryKeys};
use crate::error::{check_any_format, FormatError};
use crate::version::{FORMAT_NAME, FORMAT_VERSION_2};

/// The public config of a v2 repository.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfigV2 {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Always 2.
    pub version: u32,
    /// The identity the catalog gave the repository.
    pub repository_id: String,
    /// Whether objects are encrypted.
    pub encryption: Encryption,
    /// For `encryption: none` only: the one generation, keys in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationPayload>,
}

impl RepositoryConfigV2 {
    /// The config of an encrypted repository.
    pub fn encrypted(repository_id: &str) -> Result<Self, FormatError> {
        if repository_id.is_empty() || !is_plain_repository_id(repository_id) {
            return Err(FormatError::InvalidInput(format!(
                "{repository_id:?} is not a plain repository id"
            )));
        }
        Ok(RepositoryConfigV2 {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION_2,
            repository_id: repository_id.to_owned(),
            encryption: Encryption::Aes256Gcm,
            generation: None,
        })
    }

    /// An unencrypted repository with fresh keys (objects are framed and
    /// checksummed as in an encrypted one, but anyone can read them), and
    /// its key set.
    pub fn unencrypted<R: rand::RngCore + rand::CryptoRng>(
        repository_id: &str,
        created: chrono::DateTime<chrono::Utc>,
        rng: &mut R,
    ) -> Result<(Self, RepositoryKeys), FormatError> {
        let mut config = Self::encrypted(repository_id)?;
        config.encryption = Encryption::None;
        let payload = GenerationPayload::first(repository_id, Encryption::None, created, rng);
        config.generation = Some(payload.clone());
        Ok((config, RepositoryKeys::from_generations([payload])?))
    }

    /// The config as pretty JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes =
            serde_json::to_vec_pretty(self).expect("a struct of strings and numbers serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a stored v2 config; anything that is not one is corrupt or unsupported.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let probe: FormatProbe = serde_json::from_slice(bytes)?;
        check_any_format(&probe.format, probe.version)?;
        if probe.version != FORMAT_VERSION_2 {
            return Err(FormatError::InvalidInput(format!(
                "a version {} config is not a v2 config",
                probe.version
            )));
        }
        let config: RepositoryConfigV2 = serde_json::from_slice(bytes)
            .map_err(|err| FormatError::Corrupt(format!("config: {err}")))?;
        config
            .check()
            .map_err(|reason| FormatError::Corrupt(format!("config: {reason}")))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.repository_id.is_empty() || !is_plain_repository_id(&self.repository_id) {
            return Err("repository_id is not a plain identifier".to_owned());
        }
        match (&self.generation, self.encryption) {
            (None, Encryption::Aes256Gcm) => Ok(()),
            (Some(payload), Encryption::None) => {
                if payload.encryption != Encryption::None
                    || payload.repository_id != self.repository_id
                    || payload.generation != 1
                {
                    return Err("the clear generation disagrees with the config".to_owned());
                }
                Ok(())
            }
            (Some(_), Encryption::Aes256Gcm) => {
                Err("an encrypted repository's config holds keys".to_owned())
            }
            (None, Encryption::None) => {
                Err("an unencrypted repository's config holds no keys".to_owned())
            }
        }
    }

    /// The key set of an unencrypted repository. Refused for an encrypted
    /// one, so a worker cannot be talked into skipping its key slot.
    pub fn unencrypted_keys(&self) -> Result<RepositoryKeys, FormatError> {
        match &self.generation {
            Some(payload) if self.encryption == Encryption::None => {
                RepositoryKeys::from_generations([payload.clone()])
            }
            _ => Err(FormatError::InvalidInput(
                "the repository is encrypted: open it with a key slot".to_owned(),
            )),
        }
    }

    /// Checks the config against the catalog's view of the repository: its
    /// id, and whether it must be encrypted. A config switched to
    /// `encryption: none` by someone with write access to storage would
    /// otherwise make the worker write readable backups.
    pub fn check_expected(&self, repository_id: &str, encrypted: bool) -> Result<(), FormatError> {
        if self.repository_id != repository_id {
            return Err(FormatError::Corrupt(format!(
                "config: names repository {:?}, the catalog expects {repository_id:?}",
                self.repository_id
            )));
        }
        if encrypted != (self.encryption == Encryption::Aes256Gcm) {
            return Err(FormatError::Corrupt(format!(
                "config: says encryption {:?}, the catalog expects {}",
                self.encryption,
                if encrypted {
                    "encrypted"
                } else {
                    "unencrypted"
                }
            )));
        }
        Ok(())
    }

    /// Checks an opened key set belongs to this config: same repository
    /// and encryption, so a changed config is detected.
    pub(crate) fn check_keys(&self, keys: &RepositoryKeys) -> Result<(), FormatError> {
        keys.check_repository_id(&self.repository_id)?;
        if keys.encryption() != self.encryption {
            return Err(FormatError::Corrupt(
                "config: encryption differs from the keyring's".to_owned(),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct FormatProbe {
    format: String,
    version: u32,
}

/// A stored config of either version.
#[derive(Debug, Clone)]
pub enum AnyConfig {
    /// A format v1 repository.
    V1(RepositoryConfig),
    /// A format v2 repository.
    V2(RepositoryConfigV2),
}

impl AnyConfig {
    /// Parses a stored config of any version this build reads.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let probe: FormatProbe = serde_json::from_slice(bytes)?;
        check_any_format(&probe.format, probe.version)?;
        if probe.version == FORMAT_VERSION_2 {
            return RepositoryConfigV2::from_bytes(bytes).map(AnyConfig::V2);
        }
        RepositoryConfig::from_bytes(bytes).map(AnyConfig::V1)
    }
}
