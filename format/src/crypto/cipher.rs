//! The one AEAD interface every v2 object is sealed through: AES-256-GCM
//! for encrypted repositories, or a keyed BLAKE3 tag (a checksum, not
//! protection) for repositories created with `encryption: none`.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use zeroize::Zeroizing;

use super::kdf::Secret;
use super::Encryption;

/// Bytes of an authentication tag, for both algorithms.
pub const TAG_LEN: usize = 16;
/// Bytes of a nonce.
pub(crate) const NONCE_LEN: usize = 12;

/// A key ready to seal and open, for one object.
pub(crate) enum ObjectCipher {
    Aes(Box<Aes256Gcm>),
    /// Plaintext with a keyed BLAKE3 tag: detects accidents only, since
    /// the key of an unencrypted repository is in its public config.
    Checksum(Secret),
}

impl ObjectCipher {
    pub(crate) fn new(encryption: Encryption, key: &Secret) -> Self {
        match encryption {
            Encryption::Aes256Gcm => {
                ObjectCipher::Aes(Box::new(Aes256Gcm::new(key.as_ref().into())))
            }
            Encryption::None => ObjectCipher::Checksum(Zeroizing::new(**key)),
        }
    }

    /// Seals `buffer` in place and returns its tag.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match self {
            ObjectCipher::Aes(cipher) => cipher
                .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buffer)
                .expect("every sealed piece is far below AES-GCM's 64 GiB limit")
                .into(),
            ObjectCipher::Checksum(key) => checksum_tag(key, nonce, aad, buffer),
        }
    }

    /// Opens `buffer` in place; `false` (and `buffer` unspecified) when the
    /// tag does not match.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        match self {
            ObjectCipher::Aes(cipher) => cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(nonce),
                    aad,
                    buffer,
                    Tag::from_slice(tag),
                )
                .is_ok(),
            ObjectCipher::Checksum(key) => {
                // Constant time is not needed for a checksum, but costs nothing.
                tags_equal(&checksum_tag(key, nonce, aad, buffer), tag)
            }
        }
    }

    /// Seals `plaintext` into a new vector: ciphertext then tag.
    pub(crate) fn seal_to_vec(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens ciphertext-then-tag into a new vector, `None` when it does not
    /// authenticate (or is shorter than a tag).
    pub(crate) fn open_to_vec(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        let split = sealed.len().checked_sub(TAG_LEN)?;
        let (body, tag) = sealed.split_at(split);
        let mut out = body.to_vec();
        let tag: &[u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN from the end");
        self.open(nonce, aad, &mut out, tag).then_some(out)
    }
}

/// Equality of two tags in time independent of where they differ.
pub(crate) fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `BLAKE3-keyed(key, nonce ‖ len(aad) as u64 LE ‖ aad ‖ data)[..16]`.
fn checksum_tag(key: &Secret, nonce: &[u8; NONCE_LEN], aad: &[u8], data: &[u8]) -> [u8; TAG_LEN] {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(nonce);
    hasher.update(&(aad.len() as u64).to_le_bytes());
    hasher.update(aad);
    hasher.update(data);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_LEN]);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_round_trip_and_reject_any_change() {
        let key = Zeroizing::new([7u8; 32]);
        for encryption in [Encryption::Aes256Gcm, Encryption::None] {
            let cipher = ObjectCipher::new(encryption, &key);
            let sealed = cipher.seal_to_vec(&[1; 12], b"aad", b"secret message");
            assert_eq!(
                cipher.open_to_vec(&[1; 12], b"aad", &sealed).as_deref(),
                Some(&b"secret message"[..])
            );
            assert!(cipher.open_to_vec(&[2; 12], b"aad", &sealed).is_none());
            assert!(cipher.open_to_vec(&[1; 12], b"aaD", &sealed).is_none());
            for byte in 0..sealed.len() {
                let mut flipped = sealed.clone();
                flipped[byte] ^= 0x01;
                assert!(
                    cipher.open_to_vec(&[1; 12], b"aad", &flipped).is_none(),
                    "{byte}"
                );
            }
            assert!(cipher
                .open_to_vec(&[1; 12], b"aad", &sealed[..10])
                .is_none());
            let encrypted = encryption == Encryption::Aes256Gcm;
            assert_eq!(sealed.starts_with(b"secret"), !encrypted);
        }
    }
}
