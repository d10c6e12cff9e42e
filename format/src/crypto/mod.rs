//! Format v2's cryptography: key generations, key slots and keyrings,
//! and the sealed-object framing every encrypted object uses.
//!
//! Every primitive comes from a maintained crate: AES-256-GCM (`aes-gcm`),
//! HKDF-SHA256 (`hkdf`, `sha2`), Argon2id (`argon2`), X25519
//! (`x25519-dalek`) and keyed BLAKE3 (`blake3`). The byte layouts and the
//! reasons for them are in the format README ("Version 2").

pub(crate) mod cipher;
mod kdf;
pub mod keyring;
pub mod keys;
pub mod sealed;
pub mod slot;

#[cfg(test)]
pub(crate) mod test_rng;
#[cfg(test)]
mod vectors;

use serde::{Deserialize, Serialize};

pub use cipher::TAG_LEN;
pub use keyring::NewRepository;
pub use keys::{GenerationKeys, GenerationPayload, RepositoryKeys};
pub use sealed::{open_object, seal_object, SealedReader, SealedWriter};
pub use slot::{unlock_slot, Argon2Params, KeySlot, SlotId, SlotKind, SlotSecret, UnlockedSlot};

/// An object to write or one read from a listing: its key and its bytes.
pub type StoredObject = (String, Vec<u8>);

/// The 32 random bytes in the header of every pack and sealed object, from
/// which the object's own key is derived.
pub type Salt = [u8; 32];

/// How a v2 repository protects its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM: confidentiality and authenticity.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption: the same framing with a keyed BLAKE3 tag whose key is
    /// public, a checksum against accidents and no protection at all.
    #[serde(rename = "none")]
    None,
}

impl Encryption {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Encryption::None => 0,
            Encryption::Aes256Gcm => 1,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Encryption::None),
            1 => Some(Encryption::Aes256Gcm),
            _ => None,
        }
    }
}

/// What a sealed object is; each kind has its own purpose key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A pack (its blobs and its trailer).
    Pack,
    /// An index file.
    Index,
    /// A snapshot manifest.
    Manifest,
    /// A condemned set of garbage collection.
    Condemned,
}

impl ObjectKind {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            ObjectKind::Pack => 1,
            ObjectKind::Index => 2,
            ObjectKind::Manifest => 3,
            ObjectKind::Condemned => 4,
        }
    }

    /// What the kind is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index file",
            ObjectKind::Manifest => "manifest",
            ObjectKind::Condemned => "condemned set",
        }
    }

    /// Whether the object's storage key is authenticated with it. Objects
    /// named by a run id are; objects named by the hash of their stored
    /// bytes (packs, index files) cannot know their name before they are
    /// sealed, and the reader checks that name against the hash instead.
    pub(crate) fn binds_key(self) -> bool {
        matches!(self, ObjectKind::Manifest | ObjectKind::Condemned)
    }
}
