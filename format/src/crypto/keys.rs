//! Key generations and the key set of an opened repository.
//!
//! A generation payload holds the secrets of one key generation: a random
//! `data_key` (new at every rotation) under which every object is sealed,
//! and a `dedup_key` (kept across rotations) from which chunk ids and the
//! chunker's gear table are derived. [`RepositoryKeys`] is what a worker
//! holds once it opened every generation its key slot can read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::cipher::ObjectCipher;
use super::kdf::{self, Secret};
use super::{Encryption, ObjectKind, Salt};
use crate::chunker::{Chunker, GearTable};
use crate::config::{check_settings, ChunkerParams, RepositoryConfig};
use crate::error::FormatError;
use crate::hash::ChunkHasher;
use crate::id::to_hex;

/// The secrets and settings of one key generation, as sealed in every
/// keyring object of that generation (JSON, see the format README).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationPayload {
    /// The repository's identity; checked against the public config and
    /// the catalog, so a keyring of another repository is refused.
    pub repository_id: String,
    /// The generation number, 1 for the first; checked against the key of
    /// the object it was read from.
    pub generation: u32,
    /// Whether objects are encrypted; checked against the public config.
    pub encryption: Encryption,
    /// Seals every object written under this generation.
    #[serde(with = "hex_secret")]
    pub data_key: Secret,
    /// Chunk ids and the gear table derive from it; the same in every
    /// generation until a full re-key.
    #[serde(with = "hex_secret")]
    pub dedup_key: Secret,
    /// Content-defined chunking sizes.
    pub chunker: ChunkerParams,
    /// Writers seal a pack once its blob data reaches this many bytes.
    pub pack_target_size: u32,
    /// zstd level for blobs.
    pub compression_level: i32,
    /// When the generation was made.
    pub created: DateTime<Utc>,
}

impl GenerationPayload {
    /// Generation 1 of a new repository, with fresh random keys and the
    /// default settings.
    pub fn first<R: rand::RngCore + rand::CryptoRng>(
        repository_id: &str,
        encryption: Encryption,
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Self {
        GenerationPayload {
            repository_id: repository_id.to_owned(),
            generation: 1,
            encryption,
            data_key: random_secret(rng),
            dedup_key: random_secret(rng),
            chunker: ChunkerParams::default(),
            pack_target_size: RepositoryConfig::DEFAULT_PACK_TARGET_SIZE,
            compression_level: RepositoryConfig::DEFAULT_COMPRESSION_LEVEL,
            created,
        }
    }

    /// The next generation: a new `data_key`, everything else kept.
    pub fn next<R: rand::RngCore + rand::CryptoRng>(
        &self,
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Self {
        GenerationPayload {
            generation: self.generation + 1,
            data_key: random_secret(rng),
            created,
            ..self.clone()
        }
    }

    /// The payload as JSON, in memory wiped on drop.
    pub(crate) fn to_json(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            serde_json::to_vec(self).expect("a struct of strings and numbers serializes"),
        )
    }

    /// Parses and checks a payload read from storage.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, FormatError> {
        let payload: GenerationPayload = serde_json::from_slice(bytes)
            .map_err(|err| FormatError::Corrupt(format!("generation payload: {err}")))?;
        payload
            .check()
            .map_err(|reason| FormatError::Corrupt(format!("generation payload: {reason}")))?;
        Ok(payload)
    }

    fn check(&self) -> Result<(), String> {
        if self.generation == 0 {
            return Err("generation 0 does not exist".to_owned());
        }
        check_settings(
            &self.chunker,
            self.pack_target_size,
            self.compression_level,
            &self.repository_id,
        )
    }
}

impl fmt::Debug for GenerationPayload {
    // Keys never appear in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationPayload")
            .field("repository_id", &self.repository_id)
            .field("generation", &self.generation)
            .field("encryption", &self.encryption)
            .field("data_key", &"<redacted>")
            .field("dedup_key", &"<redacted>")
            .field("chunker", &self.chunker)
            .field("pack_target_size", &self.pack_target_size)
            .field("compression_level", &self.compression_level)
            .field("created", &self.created)
            .finish()
    }
}

pub(crate) fn random_secret<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Secret {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    secret
}

/// One generation's payload and its per-purpose keys.
pub struct GenerationKeys {
    payload: GenerationPayload,
    pack: Secret,
    index: Secret,
    manifest: Secret,
    condemned: Secret,
}

impl GenerationKeys {
    pub(crate) fn new(payload: GenerationPayload) -> Self {
        let key = |info| kdf::derive(payload.data_key.as_ref(), None, info);
        GenerationKeys {
            pack: key(kdf::INFO_PACK),
            index: key(kdf::INFO_INDEX),
            manifest: key(kdf::INFO_MANIFEST),
            condemned: key(kdf::INFO_CONDEMNED),
            payload,
        }
    }

    /// The generation number.
    pub fn generation(&self) -> u32 {
        self.payload.generation
    }

    /// The generation's payload.
    pub fn payload(&self) -> &GenerationPayload {
        &self.payload
    }

    /// The key of one object: HKDF(purpose key, salt, "coffer v2 object").
    pub(crate) fn object_key(&self, kind: ObjectKind, salt: &Salt) -> Secret {
        let purpose = match kind {
            ObjectKind::Pack => &self.pack,
            ObjectKind::Index => &self.index,
            ObjectKind::Manifest => &self.manifest,
            ObjectKind::Condemned => &self.condemned,
        };
        kdf::derive(purpose.as_ref(), Some(salt), kdf::INFO_OBJECT)
    }

    pub(crate) fn cipher(&self, kind: ObjectKind, salt: &Salt) -> ObjectCipher {
        ObjectCipher::new(self.payload.encryption, &self.object_key(kind, salt))
    }

    /// A public 32-byte fingerprint of the generation (HKDF of its
    /// `data_key`), which a catalog can record to pin the generation it
    /// expects: a keyring forged by someone who once held an older
    /// generation then shows a different fingerprint.
    pub fn fingerprint(&self) -> String {
        to_hex(kdf::derive(self.payload.data_key.as_ref(), None, kdf::INFO_FINGERPRINT).as_ref())
    }

    pub(crate) fn data_key(&self) -> &Secret {
        &self.payload.data_key
    }
}

impl fmt::Debug for GenerationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationKeys")
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

/// The keys of an opened v2 repository: every generation the opening slot
/// can read, the chunk-id hasher and the gear table. New data is sealed
/// under the highest generation; objects name the generation they were
/// sealed under, so older data stays readable.
pub struct RepositoryKeys {
    repository_id: String,
    encryption: Encryption,
    generations: BTreeMap<u32, GenerationKeys>,
    hasher: ChunkHasher,
    gear: Arc<GearTable>,
}

impl RepositoryKeys {
    /// The key set of the given generations (in any order). They must all
    /// belong to one repository with one `encryption` and one `dedup_key`;
    /// anything else means the keyring objects were mixed up or forged,
    /// and is [`FormatError::Corrupt`].
    pub fn from_generations(
        payloads: impl IntoIterator<Item = GenerationPayload>,
    ) -> Result<Self, FormatError> {
        let mut generations = BTreeMap::new();
        for payload in payloads {
            generations.insert(payload.generation, GenerationKeys::new(payload));
        }
        let first = generations.values().next().ok_or_else(|| {
            FormatError::KeyRejected("no key generation could be opened".to_owned())
        })?;
        let first = &first.payload;
        let mismatch = generations.values().any(|keys| {
            keys.payload.repository_id != first.repository_id
                || keys.payload.encryption != first.encryption
                || *keys.payload.dedup_key != *first.dedup_key
        });
        if mismatch {
            return Err(FormatError::Corrupt(
                "keyring: generations disagree on the repository, encryption or dedup key"
                    .to_owned(),
            ));
        }
        let chunk_key = kdf::derive(first.dedup_key.as_ref(), None, kdf::INFO_CHUNK_ID);
        let gear_key = kdf::derive(first.dedup_key.as_ref(), None, kdf::INFO_GEAR);
        Ok(RepositoryKeys {
            repository_id: first.repository_id.clone(),
            encryption: first.encryption,
            hasher: ChunkHasher::new(*chunk_key),
            gear: Arc::new(GearTable::from_key(&gear_key)),
            generations,
        })
    }

    /// The repository's identity, as every generation payload names it.
    pub fn repository_id(&self) -> &str {
        &self.repository_id
    }

    /// Whether objects are encrypted.
    pub fn encryption(&self) -> Encryption {
        self.encryption
    }

    /// The highest generation: new data is sealed under it, and its
    /// settings (chunker, pack size, compression) apply to new data.
    pub fn current(&self) -> &GenerationKeys {
        self.generations
            .values()
            .next_back()
            .expect("a key set holds at least one generation")
    }

    /// The keys of generation `generation`, or [`FormatError::KeyRejected`]
    /// when the slot that opened this key set cannot read it (a slot
    /// removed before that generation was made).
    pub fn generation(&self, generation: u32) -> Result<&GenerationKeys, FormatError> {
        self.generations.get(&generation).ok_or_else(|| {
            FormatError::KeyRejected(format!(
                "key generation {generation} cannot be opened with this key slot"
            ))
        })
    }

    /// Every generation held, lowest first.
    pub fn generations(&self) -> impl Iterator<Item = &GenerationKeys> {
        self.generations.values()
    }

    /// Chunk ids and content hashes: keyed BLAKE3 under
    /// HKDF(`dedup_key`, "coffer v2 chunk id").
    pub fn hasher(&self) -> &ChunkHasher {
        &self.hasher
    }

    /// The gear table derived from `dedup_key`.
    pub fn gear_table(&self) -> &Arc<GearTable> {
        &self.gear
    }

    /// A chunker with the current generation's sizes and this repository's
    /// gear table.
    pub fn chunker(&self) -> Chunker {
        Chunker::with_gear(self.current().payload.chunker, Arc::clone(&self.gear))
    }

    /// Checks the key set belongs to the repository the caller expects
    /// (the catalog's id, or the public config's).
    pub fn check_repository_id(&self, expected: &str) -> Result<(), FormatError> {
        if self.repository_id == expected {
            return Ok(());
        }
        Err(FormatError::Corrupt(format!(
            "keyring names repository {:?}, expected {expected:?}",
            self.repository_id
        )))
    }
}

impl fmt::Debug for RepositoryKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryKeys")
            .field("repository_id", &self.repository_id)
            .field("encryption", &self.encryption)
            .field("generations", &self.generations.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Serde for a secret as 64 hex digits; the text is wiped too.
mod hex_secret {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    use super::Secret;
    use crate::id::{parse_hex32, to_hex};

    pub fn serialize<S: Serializer>(key: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(to_hex(key.as_ref()));
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        parse_hex32(&text)
            .map(Zeroizing::new)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_rng::FixedRng;

    #[test]
    fn payload_round_trips_and_its_debug_hides_the_keys() {
        let mut rng = FixedRng::new(b"payload");
        let payload = GenerationPayload::first(
            "0123-abcd",
            Encryption::Aes256Gcm,
            DateTime::UNIX_EPOCH,
            &mut rng,
        );
        let json = payload.to_json();
        let back = GenerationPayload::from_json(&json).expect("parses");
        assert!(back == payload);
        let debug = format!("{payload:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&to_hex(payload.data_key.as_ref())[..16]));
        let next = payload.next(DateTime::UNIX_EPOCH, &mut rng);
        assert_eq!(next.generation, 2);
        assert_ne!(*next.data_key, *payload.data_key);
        assert_eq!(*next.dedup_key, *payload.dedup_key);
    }

    #[test]
    fn generations_of_different_repositories_do_not_mix() {
        let mut rng = FixedRng::new(b"mix");
        let one =
            GenerationPayload::first("aa", Encryption::Aes256Gcm, DateTime::UNIX_EPOCH, &mut rng);
        let mut other =
            GenerationPayload::first("aa", Encryption::Aes256Gcm, DateTime::UNIX_EPOCH, &mut rng);
        other.generation = 2;
        let err =
            RepositoryKeys::from_generations([one.clone(), other]).expect_err("two dedup keys");
        assert!(err.is_corruption(), "{err}");
        let keys = RepositoryKeys::from_generations([
            one.clone(),
            one.next(DateTime::UNIX_EPOCH, &mut rng),
        ])
        .expect("one repository");
        assert_eq!(keys.current().generation(), 2);
        assert!(matches!(
            keys.generation(3),
            Err(FormatError::KeyRejected(_))
        ));
        assert_ne!(
            keys.generation(1).expect("held").fingerprint(),
            keys.current().fingerprint()
        );
    }
}
