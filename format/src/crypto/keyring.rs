//! Keyring objects (`keyring/<generation>.<slot id>`): a generation payload
//! sealed to one slot's X25519 public key, so a rotation can wrap a new
//! generation for every slot without knowing any slot's secret.
//!
//! ```text
//! 0    4   "CFKR"
//! 4    1   version (= 2)
//! 5    3   zero
//! 8    4   generation u32 LE
//! 12   16  slot id
//! 28   32  ephemeral X25519 public key
//! 60   ..  AES-256-GCM, key = HKDF(X25519(ephemeral, slot), salt =
//!          ephemeral public ‖ slot public, "coffer v2 keyring"), nonce
//!          zero, associated data bytes 0..60 ‖ the object key; plaintext:
//!          auth kind u8 (1 = slot, 2 = chain) ‖ auth tag [32] ‖ payload JSON
//! ```
//!
//! Sealing to a public key alone would let anyone who can write to storage
//! (and read the public slot) plant a generation whose keys they know, and
//! every later backup would be sealed under it. So each payload also
//! carries a tag only a legitimate writer can make: the slot's own holder
//! (kind 1, key derived from the slot's private key: slot creation and
//! adding a slot), or the holder of the previous generation (kind 2, key
//! derived from its `data_key`: a rotation). A reader accepts a kind-2
//! object only after it opened the previous generation with the same slot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroizing;

use super::cipher::{tags_equal, ObjectCipher, TAG_LEN};
use super::kdf::{self, Secret};
use super::keys::{GenerationKeys, GenerationPayload, RepositoryKeys};
use super::slot::{KeySlot, SlotId, SlotSecret, UnlockedSlot};
use super::{Encryption, StoredObject};
use crate::config_v2::RepositoryConfigV2;
use crate::error::FormatError;
use crate::layout;

/// Magic of a keyring object.
pub const KEYRING_MAGIC: [u8; 4] = *b"CFKR";
const KEYRING_VERSION: u8 = 2;
const KEYRING_HEADER_LEN: usize = 60;
/// Largest keyring object a reader accepts (a payload is a few hundred bytes).
const MAX_KEYRING_LEN: usize = 64 * 1024;
const AUTH_BY_SLOT: u8 = 1;
const AUTH_BY_CHAIN: u8 = 2;
const AUTH_LEN: usize = 1 + 32;

/// Who vouches for a keyring object.
enum Author<'a> {
    /// The holder of the slot's private key.
    Slot(&'a UnlockedSlot),
    /// The holder of the previous generation.
    Chain(&'a GenerationKeys),
}

fn chain_auth_key(previous: &GenerationKeys) -> Secret {
    kdf::derive(
        previous.data_key().as_ref(),
        None,
        kdf::INFO_KEYRING_CHAIN_AUTH,
    )
}

fn auth_tag(key: &Secret, object_key: &str, payload: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(object_key.as_bytes());
    hasher.update(&[0]);
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

fn keyring_cipher(shared: &[u8; 32], ephemeral: &PublicKey, slot: &PublicKey) -> ObjectCipher {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(slot.as_bytes());
    ObjectCipher::new(
        Encryption::Aes256Gcm,
        &kdf::derive(shared, Some(&salt), kdf::INFO_KEYRING),
    )
}

/// Seals `payload` to `slot_public`, as `keyring/<generation>.<slot>`.
fn seal_keyring<R: rand::RngCore + rand::CryptoRng>(
    payload: &GenerationPayload,
    slot: SlotId,
    slot_public: &PublicKey,
    author: Author<'_>,
    rng: &mut R,
) -> StoredObject {
    let object_key = layout::keyring_key(payload.generation, slot);
    let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(slot_public);
    let mut header = Vec::with_capacity(KEYRING_HEADER_LEN);
    header.extend_from_slice(&KEYRING_MAGIC);
    header.extend_from_slice(&[KEYRING_VERSION, 0, 0, 0]);
    header.extend_from_slice(&payload.generation.to_le_bytes());
    header.extend_from_slice(&slot.0);
    header.extend_from_slice(ephemeral_public.as_bytes());
    debug_assert_eq!(header.len(), KEYRING_HEADER_LEN);

    let json = payload.to_json();
    let (kind, auth_key) = match author {
        Author::Slot(unlocked) => (AUTH_BY_SLOT, unlocked.own_auth_key()),
        Author::Chain(previous) => (AUTH_BY_CHAIN, chain_auth_key(previous)),
    };
    let mut plaintext = Zeroizing::new(Vec::with_capacity(AUTH_LEN + json.len()));
    plaintext.push(kind);
    plaintext.extend_from_slice(&auth_tag(&auth_key, &object_key, &json));
    plaintext.extend_from_slice(&json);

    let mut aad = header.clone();
    aad.extend_from_slice(object_key.as_bytes());
    let sealed = keyring_cipher(shared.as_bytes(), &ephemeral_public, slot_public)
        .seal_to_vec(&[0; 12], &aad, &plaintext);
    header.extend_from_slice(&sealed);
    (object_key, header)
}

/// What opening one keyring object gave.
struct Opened {
    payload: GenerationPayload,
    auth_kind: u8,
    auth: [u8; 32],
    json: Zeroizing<Vec<u8>>,
}

fn open_keyring(
    slot: &UnlockedSlot,
    generation: u32,
    object_key: &str,
    bytes: &[u8],
) -> Result<Opened, FormatError> {
    let corrupt = |what: &str| FormatError::Corrupt(format!("keyring object {object_key}: {what}"));
    if bytes.len() > MAX_KEYRING_LEN || bytes.len() < KEYRING_HEADER_LEN + AUTH_LEN + TAG_LEN {
        return Err(corrupt("implausible length"));
    }
    let header = &bytes[..KEYRING_HEADER_LEN];
    if header[..4] != KEYRING_MAGIC || header[4..8] != [KEYRING_VERSION, 0, 0, 0] {
        return Err(corrupt("bad magic, version or reserved bytes"));
    }
    if header[8..12] != generation.to_le_bytes() || header[12..28] != slot.id.0 {
        return Err(corrupt(
            "header names another generation or slot than its key",
        ));
    }
    let ephemeral: [u8; 32] = header[28..60].try_into().expect("32 bytes");
    let ephemeral = PublicKey::from(ephemeral);
    let shared = slot.private.diffie_hellman(&ephemeral);
    let mut aad = header.to_vec();
    aad.extend_from_slice(object_key.as_bytes());
    let plaintext = Zeroizing::new(
        keyring_cipher(shared.as_bytes(), &ephemeral, &slot.public)
            .open_to_vec(&[0; 12], &aad, &bytes[KEYRING_HEADER_LEN..])
            .ok_or_else(|| {
                corrupt("does not authenticate (damaged, or not sealed to this slot)")
            })?,
    );
    if plaintext.len() < AUTH_LEN {
        return Err(corrupt("payload shorter than its tag"));
    }
    let json = Zeroizing::new(plaintext[AUTH_LEN..].to_vec());
    let payload = GenerationPayload::from_json(&json)?;
    if payload.generation != generation {
        return Err(corrupt("payload names another generation"));
    }
    Ok(Opened {
        payload,
        auth_kind: plaintext[0],
        auth: plaintext[1..AUTH_LEN].try_into().expect("32 bytes"),
        json,
    })
}

/// A new repository: its key set, and the objects to write (the config
/// last, since it is what makes the repository exist).
#[derive(Debug)]
pub struct NewRepository {
    /// The key set of generation 1.
    pub keys: RepositoryKeys,
    /// The catalog slot's id.
    pub catalog_slot: SlotId,
    /// The passphrase slot's id, when one was asked for.
    pub passphrase_slot: Option<SlotId>,
    /// `(key, bytes)` of every key slot and keyring object.
    pub objects: Vec<StoredObject>,
    /// The public config, to write under [`layout::CONFIG_KEY`] last.
    pub config: Vec<u8>,
}

impl RepositoryKeys {
    /// Creates an encrypted repository: generation 1, a catalog slot for
    /// `catalog_key`, and a passphrase slot when `passphrase` is given.
    pub fn create<R: rand::RngCore + rand::CryptoRng>(
        repository_id: &str,
        catalog_key: &[u8; 32],
        passphrase: Option<(&str, super::Argon2Params)>,
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Result<NewRepository, FormatError> {
        let config = RepositoryConfigV2::encrypted(repository_id)?;
        let payload = GenerationPayload::first(repository_id, Encryption::Aes256Gcm, created, rng);
        let keys = RepositoryKeys::from_generations([payload])?;
        let (catalog_slot, mut objects) =
            keys.add_slot(SlotSecret::Catalog(catalog_key), created, rng)?;
        let passphrase_slot = match passphrase {
            Some((passphrase, params)) => {
                let (id, more) =
                    keys.add_slot(SlotSecret::Passphrase(passphrase, params), created, rng)?;
                objects.extend(more);
                Some(id)
            }
            None => None,
        };
        Ok(NewRepository {
            keys,
            catalog_slot,
            passphrase_slot,
            objects,
            config: config.to_bytes(),
        })
    }

    /// Adds a key slot for `secret` and seals every generation this key
    /// set holds to it, so the new slot reads all the data this one does.
    /// Returns the slot's id and the objects to write (the slot last: a
    /// slot without its keyring objects would open nothing).
    pub fn add_slot<R: rand::RngCore + rand::CryptoRng>(
        &self,
        secret: SlotSecret<'_>,
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Result<(SlotId, Vec<StoredObject>), FormatError> {
        self.require_encrypted()?;
        let (slot, unlocked) = KeySlot::create(secret, created, rng)?;
        let mut objects: Vec<StoredObject> = self
            .generations()
            .map(|generation| {
                seal_keyring(
                    generation.payload(),
                    slot.id(),
                    &slot.public_key(),
                    Author::Slot(&unlocked),
                    rng,
                )
            })
            .collect();
        objects.push((slot.key(), slot.bytes().to_vec()));
        Ok((slot.id(), objects))
    }

    /// Starts generation `current + 1` (a new `data_key`, the same
    /// `dedup_key`) sealed to each of `recipients`, with no secret of
    /// theirs needed. A slot left out (a removed slot) cannot read
    /// anything sealed under the new generation. Returns the key set with
    /// the new generation and the keyring objects to write.
    ///
    /// The caller must list `keyring/` first and rotate only when no
    /// generation above [`RepositoryKeys::current`] exists (keys are
    /// create-only: a duplicate write fails rather than fork the keyring).
    pub fn rotate<R: rand::RngCore + rand::CryptoRng>(
        &self,
        recipients: &[KeySlot],
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Result<(RepositoryKeys, Vec<StoredObject>), FormatError> {
        self.require_encrypted()?;
        if recipients.is_empty() {
            return Err(FormatError::InvalidInput(
                "a rotation needs at least one key slot to seal to".to_owned(),
            ));
        }
        let current = self.current();
        let next = current.payload().next(created, rng);
        let objects = recipients
            .iter()
            .map(|slot| {
                seal_keyring(
                    &next,
                    slot.id(),
                    &slot.public_key(),
                    Author::Chain(current),
                    rng,
                )
            })
            .collect();
        let payloads = self
            .generations()
            .map(|keys| keys.payload().clone())
            .chain([next]);
        Ok((RepositoryKeys::from_generations(payloads)?, objects))
    }

    /// Opens every keyring object of `slot` among `objects` (`(key,
    /// bytes)` of a listing of `keyring/`; other slots' objects are
    /// skipped), checking each one's author, and returns the key set.
    pub fn open(
        config: &RepositoryConfigV2,
        slot: &UnlockedSlot,
        objects: &[StoredObject],
    ) -> Result<RepositoryKeys, FormatError> {
        let mut mine = BTreeMap::new();
        for (key, bytes) in objects {
            match layout::parse_keyring_key(key) {
                Some((generation, id)) if id == slot.id => {
                    mine.insert(generation, (key.as_str(), bytes.as_slice()));
                }
                _ => {}
            }
        }
        let mut opened: BTreeMap<u32, GenerationKeys> = BTreeMap::new();
        let mut payloads = Vec::new();
        for (generation, (key, bytes)) in mine {
            let object = open_keyring(slot, generation, key, bytes)?;
            let auth_key = match object.auth_kind {
                AUTH_BY_SLOT => slot.own_auth_key(),
                AUTH_BY_CHAIN => match generation
                    .checked_sub(1)
                    .and_then(|previous| opened.get(&previous))
                {
                    Some(previous) => chain_auth_key(previous),
                    None => {
                        return Err(FormatError::Corrupt(format!(
                        "keyring object {key}: vouched for by a generation this slot does not hold"
                    )))
                    }
                },
                _ => {
                    return Err(FormatError::Corrupt(format!(
                        "keyring object {key}: unknown author kind"
                    )))
                }
            };
            let expected = auth_tag(&auth_key, key, &object.json);
            if !tags_equal(&expected, &object.auth) {
                return Err(FormatError::Corrupt(format!(
                    "keyring object {key}: not written by the slot's holder or the previous generation's"
                )));
            }
            opened.insert(generation, GenerationKeys::new(object.payload.clone()));
            payloads.push(object.payload);
        }
        let keys = RepositoryKeys::from_generations(payloads)?;
        config.check_keys(&keys)?;
        Ok(keys)
    }

    fn require_encrypted(&self) -> Result<(), FormatError> {
        if self.encryption() == Encryption::Aes256Gcm {
            return Ok(());
        }
        Err(FormatError::InvalidInput(
            "an unencrypted repository has no key slots".to_owned(),
        ))
    }
}
