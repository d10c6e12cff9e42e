//! Key derivation: every subkey of format v2 is HKDF-SHA256 with an `info`
//! string naming its one purpose, so no key is ever used for two things.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// A 32-byte secret that is wiped from memory when dropped.
pub(crate) type Secret = Zeroizing<[u8; 32]>;

/// `info` of the per-purpose key under a generation's `data_key`, for packs.
pub(crate) const INFO_PACK: &[u8] = b"coffer v2 pack";
/// ... for index files.
pub(crate) const INFO_INDEX: &[u8] = b"coffer v2 index";
/// ... for manifests.
pub(crate) const INFO_MANIFEST: &[u8] = b"coffer v2 manifest";
/// ... for condemned sets.
pub(crate) const INFO_CONDEMNED: &[u8] = b"coffer v2 condemned";
/// `info` of an object's own key, derived from a purpose key with the
/// object's salt as HKDF salt.
pub(crate) const INFO_OBJECT: &[u8] = b"coffer v2 object";
/// `info` of the chunk-id key (keyed BLAKE3) under `dedup_key`.
pub(crate) const INFO_CHUNK_ID: &[u8] = b"coffer v2 chunk id";
/// `info` of the gear-table key under `dedup_key`.
pub(crate) const INFO_GEAR: &[u8] = b"coffer v2 gear table";
/// `info` of a catalog slot's key-encryption key, from the catalog key
/// with the slot's salt as HKDF salt.
pub(crate) const INFO_CATALOG_SLOT: &[u8] = b"coffer v2 catalog slot";
/// `info` of a keyring object's AEAD key, from the X25519 shared secret.
pub(crate) const INFO_KEYRING: &[u8] = b"coffer v2 keyring";
/// `info` of the authentication key a slot's owner signs its keyring
/// objects with, from the slot's private key.
pub(crate) const INFO_KEYRING_SLOT_AUTH: &[u8] = b"coffer v2 keyring slot auth";
/// `info` of the authentication key a rotation signs the next
/// generation's keyring objects with, from the previous `data_key`.
pub(crate) const INFO_KEYRING_CHAIN_AUTH: &[u8] = b"coffer v2 keyring chain auth";
/// `info` of a generation's public fingerprint, from its `data_key`.
pub(crate) const INFO_FINGERPRINT: &[u8] = b"coffer v2 generation fingerprint";

/// HKDF-SHA256(ikm, salt, info) → 32 bytes.
pub(crate) fn derive(ikm: &[u8], salt: Option<&[u8]>, info: &[u8]) -> Secret {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out.as_mut())
        .expect("32 bytes is far below HKDF-SHA256's 8160-byte limit");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_info_string_is_distinct() {
        let infos = [
            INFO_PACK,
            INFO_INDEX,
            INFO_MANIFEST,
            INFO_CONDEMNED,
            INFO_OBJECT,
            INFO_CHUNK_ID,
            INFO_GEAR,
            INFO_CATALOG_SLOT,
            INFO_KEYRING,
            INFO_KEYRING_SLOT_AUTH,
            INFO_KEYRING_CHAIN_AUTH,
            INFO_FINGERPRINT,
        ];
        let unique: std::collections::HashSet<_> = infos.iter().collect();
        assert_eq!(unique.len(), infos.len());
        assert_ne!(
            *derive(&[1; 32], None, INFO_PACK),
            *derive(&[1; 32], None, INFO_INDEX)
        );
    }
}
