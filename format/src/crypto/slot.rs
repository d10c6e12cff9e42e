//! Key slots (`keys/<slot id>`): an X25519 key pair whose private half is
//! sealed under a key-encryption key (KEK) derived from a passphrase
//! (Argon2id) or from a catalog key (HKDF).
//!
//! ```text
//! 0    4   "CFKS"
//! 4    1   version (= 2)
//! 5    1   kind: 1 = passphrase, 2 = catalog
//! 6    2   zero
//! 8    8   created, Unix seconds, i64 LE
//! 16   32  X25519 public key
//! 48   32  salt (Argon2id salt, or HKDF salt of a catalog slot)
//! 80   12  Argon2id m (KiB), t, p: u32 LE each (zero for a catalog slot)
//! 92   48  the X25519 private key sealed with AES-256-GCM under the KEK,
//!          nonce zero (the KEK seals nothing else), associated data
//!          bytes 0..92 ‖ the object key
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::cipher::ObjectCipher;
use super::kdf::{self, Secret};
use super::Encryption;
use crate::error::FormatError;
use crate::id::to_hex;
use crate::layout;

/// Magic of a key slot object.
pub const SLOT_MAGIC: [u8; 4] = *b"CFKS";
/// Bytes of a key slot object.
pub const SLOT_LEN: usize = 140;
const SLOT_VERSION: u8 = 2;
const PUBLIC_AT: usize = 16;
const SALT_AT: usize = 48;
const PARAMS_AT: usize = 80;
const SEALED_AT: usize = 92;

/// A key slot's identity: 16 random bytes, 32 lowercase hex digits in keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub [u8; 16]);

impl SlotId {
    /// A fresh random id.
    pub fn random<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        SlotId(id)
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotId({self})")
    }
}

impl FromStr for SlotId {
    type Err = FormatError;

    /// Exactly 32 lowercase hex digits, the only spelling keys use.
    fn from_str(text: &str) -> Result<Self, FormatError> {
        let lowercase_hex = text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lowercase_hex {
            return Err(FormatError::Corrupt(format!(
                "{text:?} is not a key slot id"
            )));
        }
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).expect("ascii hex");
            *byte = u8::from_str_radix(digits, 16).expect("checked hex");
        }
        Ok(SlotId(id))
    }
}

/// What unlocks a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A passphrase, through Argon2id.
    Passphrase,
    /// A 32-byte key the control plane keeps for the repository.
    Catalog,
}

/// Argon2id cost parameters, stored in a passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Params {
    /// What new slots use: 64 MiB, 3 passes, 1 lane (the second
    /// recommendation of RFC 9106), about a quarter second here.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// The most memory a stored slot may ask for: 256 MiB.
    pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
    /// The most passes a stored slot may ask for.
    pub const MAX_ITERATIONS: u32 = 10;
    /// The most lanes a stored slot may ask for.
    pub const MAX_PARALLELISM: u32 = 4;

    /// Refuses parameters that would make a reader spend more than the
    /// bounds above: slots are read from storage, which is untrusted.
    fn check_bounds(&self) -> Result<(), String> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(format!(
                "Argon2id parameters m={} KiB t={} p={} exceed the bounds \
                 (m <= {} KiB, t <= {}, p <= {})",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            ));
        }
        Ok(())
    }

    fn kek(&self, passphrase: &[u8], salt: &[u8; 32]) -> Result<Secret, String> {
        self.check_bounds()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|err| format!("Argon2id parameters: {err}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, kek.as_mut())
            .map_err(|err| format!("Argon2id: {err}"))?;
        Ok(kek)
    }
}

/// The secret that unlocks a slot, when creating one.
#[derive(Clone, Copy)]
pub enum SlotSecret<'a> {
    /// A passphrase and the Argon2id cost to store with it.
    Passphrase(&'a str, Argon2Params),
    /// The catalog's 32-byte key for this repository.
    Catalog(&'a [u8; 32]),
}

impl fmt::Debug for SlotSecret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotSecret::Passphrase(_, params) => f.debug_tuple("Passphrase").field(params).finish(),
            SlotSecret::Catalog(_) => f.write_str("Catalog"),
        }
    }
}

/// A parsed key slot: its public half, and its sealed private half.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySlot {
    id: SlotId,
    bytes: [u8; SLOT_LEN],
}

impl KeySlot {
    /// Parses `keys/<slot id>`, checking the layout and, for a passphrase
    /// slot, that its Argon2id cost is within bounds.
    pub fn parse(object_key: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        let corrupt = |what: String| FormatError::Corrupt(format!("key slot {object_key}: {what}"));
        let id = layout::parse_slot_key(object_key)
            .ok_or_else(|| corrupt("not a key slot key".to_owned()))?;
        let bytes: [u8; SLOT_LEN] = bytes
            .try_into()
            .map_err(|_| corrupt(format!("{} bytes, a slot has {SLOT_LEN}", bytes.len())))?;
        if bytes[..4] != SLOT_MAGIC || bytes[4] != SLOT_VERSION || bytes[6..8] != [0, 0] {
            return Err(corrupt("bad magic, version or reserved bytes".to_owned()));
        }
        let slot = KeySlot { id, bytes };
        match bytes[5] {
            1 => slot.argon2_params().check_bounds().map_err(corrupt)?,
            2 if bytes[PARAMS_AT..SEALED_AT] == [0; 12] => {}
            other => return Err(corrupt(format!("unknown kind {other}"))),
        }
        Ok(slot)
    }

    /// Makes a new slot for `secret` around a fresh key pair; returns the
    /// slot and its unlocked form.
    pub(crate) fn create<R: rand::RngCore + rand::CryptoRng>(
        secret: SlotSecret<'_>,
        created: DateTime<Utc>,
        rng: &mut R,
    ) -> Result<(KeySlot, UnlockedSlot), FormatError> {
        let id = SlotId::random(rng);
        let private = StaticSecret::random_from_rng(&mut *rng);
        let public = PublicKey::from(&private);
        let mut bytes = [0u8; SLOT_LEN];
        bytes[..4].copy_from_slice(&SLOT_MAGIC);
        bytes[4] = SLOT_VERSION;
        bytes[8..16].copy_from_slice(&created.timestamp().to_le_bytes());
        bytes[PUBLIC_AT..SALT_AT].copy_from_slice(public.as_bytes());
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        bytes[SALT_AT..PARAMS_AT].copy_from_slice(&salt);
        let kind = match secret {
            SlotSecret::Passphrase(_, params) => {
                bytes[5] = 1;
                for (at, value) in [params.memory_kib, params.iterations, params.parallelism]
                    .into_iter()
                    .enumerate()
                {
                    bytes[PARAMS_AT + 4 * at..PARAMS_AT + 4 * at + 4]
                        .copy_from_slice(&value.to_le_bytes());
                }
                SlotKind::Passphrase
            }
            SlotSecret::Catalog(_) => {
                bytes[5] = 2;
                SlotKind::Catalog
            }
        };
        let slot = KeySlot { id, bytes };
        let kek = slot.kek(secret, kind).map_err(FormatError::InvalidInput)?;
        let sealed = ObjectCipher::new(Encryption::Aes256Gcm, &kek).seal_to_vec(
            &[0; 12],
            &slot.aad(),
            Zeroizing::new(private.to_bytes()).as_ref(),
        );
        let mut slot = slot;
        slot.bytes[SEALED_AT..].copy_from_slice(&sealed);
        let unlocked = UnlockedSlot {
            id,
            private,
            public,
        };
        Ok((slot, unlocked))
    }

    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.id
    }

    /// The slot's storage key, `keys/<slot id>`.
    pub fn key(&self) -> String {
        layout::slot_key(self.id)
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What unlocks it.
    pub fn kind(&self) -> SlotKind {
        if self.bytes[5] == 1 {
            SlotKind::Passphrase
        } else {
            SlotKind::Catalog
        }
    }

    /// When it was made.
    pub fn created(&self) -> DateTime<Utc> {
        let seconds = i64::from_le_bytes(self.bytes[8..16].try_into().expect("8 bytes"));
        DateTime::from_timestamp(seconds, 0).unwrap_or(DateTime::UNIX_EPOCH)
    }

    /// Its X25519 public key: what a rotation seals the next generation to.
    pub fn public_key(&self) -> PublicKey {
        let bytes: [u8; 32] = self.bytes[PUBLIC_AT..SALT_AT].try_into().expect("32 bytes");
        PublicKey::from(bytes)
    }

    /// The Argon2id cost (all zero for a catalog slot).
    pub fn argon2_params(&self) -> Argon2Params {
        let word = |at: usize| {
            u32::from_le_bytes(
                self.bytes[PARAMS_AT + 4 * at..PARAMS_AT + 4 * at + 4]
                    .try_into()
                    .expect("4 bytes"),
            )
        };
        Argon2Params {
            memory_kib: word(0),
            iterations: word(1),
            parallelism: word(2),
        }
    }

    fn salt(&self) -> [u8; 32] {
        self.bytes[SALT_AT..PARAMS_AT].try_into().expect("32 bytes")
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = self.bytes[..SEALED_AT].to_vec();
        aad.extend_from_slice(self.key().as_bytes());
        aad
    }

    fn kek(&self, secret: SlotSecret<'_>, kind: SlotKind) -> Result<Secret, String> {
        match (secret, kind) {
            (SlotSecret::Passphrase(passphrase, _), SlotKind::Passphrase) => self
                .argon2_params()
                .kek(passphrase.as_bytes(), &self.salt()),
            (SlotSecret::Catalog(key), SlotKind::Catalog) => {
                Ok(kdf::derive(key, Some(&self.salt()), kdf::INFO_CATALOG_SLOT))
            }
            _ => Err("the secret is not of the slot's kind".to_owned()),
        }
    }

    /// Unlocks this slot with `secret`; `None` when it does not open it.
    fn unlock(&self, secret: SlotSecret<'_>) -> Option<UnlockedSlot> {
        let kek = self.kek(secret, self.kind()).ok()?;
        let private = Zeroizing::new(ObjectCipher::new(Encryption::Aes256Gcm, &kek).open_to_vec(
            &[0; 12],
            &self.aad(),
            &self.bytes[SEALED_AT..],
        )?);
        let private: [u8; 32] = private.as_slice().try_into().ok()?;
        let private = StaticSecret::from(private);
        let public = PublicKey::from(&private);
        // A slot whose public key is not its private key's would take
        // rotations it cannot read.
        (public == self.public_key()).then_some(UnlockedSlot {
            id: self.id,
            private,
            public,
        })
    }
}

impl fmt::Debug for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySlot")
            .field("id", &self.id)
            .field("kind", &self.kind())
            .field("created", &self.created())
            .finish_non_exhaustive()
    }
}

/// Tries every slot of the secret's kind and returns the first that opens.
/// A failure says only that no slot opened: never which, or why, so it
/// helps no one guess a passphrase slot by slot. Each passphrase slot
/// costs one Argon2id run.
pub fn unlock_slot(slots: &[KeySlot], secret: SlotSecret<'_>) -> Result<UnlockedSlot, FormatError> {
    let kind = match secret {
        SlotSecret::Passphrase(..) => SlotKind::Passphrase,
        SlotSecret::Catalog(_) => SlotKind::Catalog,
    };
    slots
        .iter()
        .filter(|slot| slot.kind() == kind)
        .find_map(|slot| slot.unlock(secret))
        .ok_or_else(|| {
            FormatError::KeyRejected(match kind {
                SlotKind::Passphrase => "no key slot opens with this passphrase".to_owned(),
                SlotKind::Catalog => "no key slot opens with the catalog's key".to_owned(),
            })
        })
}

/// A slot whose private key is in memory: it opens keyring objects.
pub struct UnlockedSlot {
    pub(crate) id: SlotId,
    pub(crate) private: StaticSecret,
    pub(crate) public: PublicKey,
}

impl UnlockedSlot {
    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.id
    }

    /// The key that authenticates keyring objects the slot's own holder
    /// wrote (at creation, or when the slot was added).
    pub(crate) fn own_auth_key(&self) -> Secret {
        kdf::derive(
            Zeroizing::new(self.private.to_bytes()).as_ref(),
            None,
            kdf::INFO_KEYRING_SLOT_AUTH,
        )
    }
}

impl fmt::Debug for UnlockedSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnlockedSlot")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
