//! Encryption of secrets at rest: the control plane's secrets key, the
//! keyring that holds it (and the keys it replaced), and sealing and opening
//! a secret's values with XChaCha20-Poly1305.
//!
//! Every sealed value has its own random 192-bit nonce, and the secret's id
//! and owner are the associated data: a row copied to another id or owner
//! fails its integrity check instead of decrypting. Each row records the
//! fingerprint of the key that sealed it ([`SecretKey::id`]), so a control
//! plane started with the wrong key says so rather than reporting garbage.

pub mod access;
pub mod notification;

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{DomainError, DomainResult};
use crate::model::secret::{Passphrase, S3CredentialValues};

/// Length of a secrets key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce in bytes.
const NONCE_LEN: usize = 24;
/// Prefix of the associated data; names the format so that a future one
/// can never be confused with it.
const AAD_CONTEXT: &[u8] = b"coffer.secret.v1\0";
/// Prefix of the associated data of a passphrase secret: a context of its
/// own, so an S3 secret's row relabelled as a passphrase (or the reverse)
/// fails its integrity check instead of being read as the other kind.
const PASSPHRASE_CONTEXT: &[u8] = b"coffer.passphrase.v1\0";
/// Prefix of the associated data of a repository's catalog key.
const CATALOG_KEY_CONTEXT: &[u8] = b"coffer.catalog-key.v1\0";

/// How to configure a key, for errors that must say it.
pub const HOW_TO_CONFIGURE: &str = "set COFFER_SECRETS_KEY_FILE to a file of mode 0600 holding \
     32 random bytes as base64 or hex (e.g. `openssl rand -base64 32`), or COFFER_SECRETS_KEY";

/// A 32-byte key, zeroed when dropped. `Debug` shows only its fingerprint.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        let digest = Sha256::new()
            .chain_update(b"coffer secrets key id\0")
            .chain_update(bytes.as_slice())
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        SecretKey { bytes, id }
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// Parses a key written as base64 (standard or URL-safe, padded or not)
    /// or as 64 hex digits. The error never repeats the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let decoded: Option<Zeroizing<Vec<u8>>> =
            if text.len() == 2 * KEY_LEN && text.chars().all(|c| c.is_ascii_hexdigit()) {
                (0..KEY_LEN)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(Zeroizing::new)
            } else {
                let engines = [
                    base64::engine::general_purpose::STANDARD,
                    base64::engine::general_purpose::STANDARD_NO_PAD,
                    base64::engine::general_purpose::URL_SAFE,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ];
                engines
                    .iter()
                    .find_map(|engine| engine.decode(text).ok())
                    .map(Zeroizing::new)
            };
        let Some(decoded) = decoded else {
            return Err("is neither base64 nor 64 hex digits".into());
        };
        let bytes: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            format!(
                "decodes to {} bytes; a secrets key is {KEY_LEN}",
                decoded.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key as base64, for the file the standalone mode keeps it in.
    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice()))
    }

    /// The key's fingerprint: 16 hex digits of a hash of it, safe to store
    /// and show; it identifies the key, it does not reveal it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.bytes.as_slice()))
    }
}

/// A secret's values as stored: which key sealed them, the nonce and the
/// ciphertext (with its tag).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Fingerprint of the sealing key.
    pub key_id: String,
    /// The random nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and authentication tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

#[derive(Debug)]
struct Keys {
    primary: SecretKey,
    previous: Vec<SecretKey>,
}

/// The keys the control plane seals and opens secrets with: the primary key
/// (every new value is sealed with it) and the keys it replaced (still
/// opened, so rotation of the key needs no downtime). Empty when no key is
/// configured: the secret calls then answer `FailedPrecondition`.
#[derive(Clone, Debug, Default)]
pub struct Keyring(Option<Arc<Keys>>);

impl Keyring {
    /// A keyring without keys: secrets are disabled.
    pub fn disabled() -> Self {
        Keyring(None)
    }

    /// A keyring sealing with `primary` and also opening with `previous`.
    pub fn new(primary: SecretKey, previous: Vec<SecretKey>) -> Self {
        Keyring(Some(Arc::new(Keys { primary, previous })))
    }

    /// Whether a key is configured.
    pub fn is_configured(&self) -> bool {
        self.0.is_some()
    }

    /// The fingerprint of the primary key, if any.
    pub fn primary_id(&self) -> Option<&str> {
        self.0.as_ref().map(|keys| keys.primary.id())
    }

    fn keys(&self) -> DomainResult<&Keys> {
        self.0.as_deref().ok_or_else(|| {
            DomainError::FailedPrecondition(format!(
                "secrets are disabled: this control plane has no secrets key; {HOW_TO_CONFIGURE}"
            ))
        })
    }

    /// Fails with `FailedPrecondition` (saying how to configure a key) when
    /// no key is configured.
    pub fn require(&self) -> DomainResult<()> {
        self.keys().map(|_| ())
    }

    /// Seals the values of secret `id` of `owner` under the primary key.
    pub fn seal(&self, id: Uuid, owner: Uuid, values: &S3CredentialValues) -> DomainResult<Sealed> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(values)
                .map_err(|e| DomainError::Internal(format!("encoding secret values: {e}")))?,
        );
        self.seal_bytes(&associated_data(id, owner), &plaintext)
    }

    /// Opens the values of secret `id` of `owner`. A row sealed with a key
    /// this keyring lacks, or altered, moved or copied to another id or
    /// owner, is `FailedPrecondition` with a message that says which.
    pub fn open(&self, id: Uuid, owner: Uuid, sealed: &Sealed) -> DomainResult<S3CredentialValues> {
        let what = format!("secret {id}");
        let tampered = || {
            DomainError::FailedPrecondition(format!(
                "{what} failed its integrity check: its stored row was altered or \
                 moved to another id or owner; create the secret again"
            ))
        };
        let plaintext = self.open_bytes(&associated_data(id, owner), sealed, &what, tampered)?;
        serde_json::from_slice(&plaintext).map_err(|_| tampered())
    }

    /// Seals the passphrase of passphrase secret `id` of `owner` under the
    /// primary key.
    pub fn seal_passphrase(
        &self,
        id: Uuid,
        owner: Uuid,
        passphrase: &Passphrase,
    ) -> DomainResult<Sealed> {
        self.seal_bytes(
            &passphrase_associated_data(id, owner),
            passphrase.expose().as_bytes(),
        )
    }

    /// Opens the passphrase of passphrase secret `id` of `owner`; a row
    /// altered, moved, or holding another kind of secret is
    /// `FailedPrecondition`.
    pub fn open_passphrase(
        &self,
        id: Uuid,
        owner: Uuid,
        sealed: &Sealed,
    ) -> DomainResult<Passphrase> {
        let what = format!("secret {id}");
        let tampered = || {
            DomainError::FailedPrecondition(format!(
                "{what} failed its integrity check: its stored row was altered or \
                 moved to another id, owner or kind; create the secret again"
            ))
        };
        let plaintext = self.open_bytes(
            &passphrase_associated_data(id, owner),
            sealed,
            &what,
            tampered,
        )?;
        let text = String::from_utf8(plaintext.to_vec()).map_err(|_| tampered())?;
        Passphrase::new("passphrase", text).map_err(|_| tampered())
    }

    /// Seals the catalog key of repository `repository_id` (the key that
    /// opens its catalog slot), bound to that repository.
    pub fn seal_catalog_key(&self, repository_id: Uuid, key: &[u8]) -> DomainResult<Sealed> {
        self.seal_bytes(&catalog_key_associated_data(repository_id), key)
    }

    /// Opens the catalog key of repository `repository_id`; a row altered or
    /// moved to another repository is `FailedPrecondition`.
    pub fn open_catalog_key(
        &self,
        repository_id: Uuid,
        sealed: &Sealed,
    ) -> DomainResult<Zeroizing<Vec<u8>>> {
        let what = format!("the catalog key of repository {repository_id}");
        let tampered = || {
            DomainError::FailedPrecondition(format!(
                "{what} failed its integrity check: its stored row was altered or moved \
                 to another repository"
            ))
        };
        self.open_bytes(
            &catalog_key_associated_data(repository_id),
            sealed,
            &what,
            tampered,
        )
    }

    fn seal_bytes(&self, aad: &[u8], plaintext: &[u8]) -> DomainResult<Sealed> {
        let key = &self.keys()?.primary;
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| DomainError::Internal("sealing a secret failed".into()))?;
        Ok(Sealed {
            key_id: key.id().to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens `sealed` with the key that sealed it; `what` names the value in
    /// the error when that key is missing, `tampered` is the error when it
    /// does not authenticate.
    fn open_bytes(
        &self,
        aad: &[u8],
        sealed: &Sealed,
        what: &str,
        tampered: impl Fn() -> DomainError,
    ) -> DomainResult<Zeroizing<Vec<u8>>> {
        let keys = self.keys()?;
        let key = std::iter::once(&keys.primary)
            .chain(&keys.previous)
            .find(|key| key.id() == sealed.key_id)
            .ok_or_else(|| {
                DomainError::FailedPrecondition(format!(
                    "{what} was sealed with secrets key {}, which this control plane \
                     does not have (its key is {}); start it with that key, as the primary \
                     key or in COFFER_SECRETS_PREVIOUS_KEY_FILES",
                    sealed.key_id,
                    keys.primary.id()
                ))
            })?;
        if sealed.nonce.len() != NONCE_LEN {
            return Err(tampered());
        }
        key.cipher()
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| tampered())
    }
}

fn catalog_key_associated_data(repository_id: Uuid) -> Vec<u8> {
    [CATALOG_KEY_CONTEXT, repository_id.as_bytes()].concat()
}

fn passphrase_associated_data(id: Uuid, owner: Uuid) -> Vec<u8> {
    [PASSPHRASE_CONTEXT, id.as_bytes(), owner.as_bytes()].concat()
}

fn associated_data(id: Uuid, owner: Uuid) -> Vec<u8> {
    [AAD_CONTEXT, id.as_bytes(), owner.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> S3CredentialValues {
        S3CredentialValues {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: String::new(),
        }
    }

    #[test]
    fn sealed_values_open_only_under_their_id_owner_and_key() {
        let keyring = Keyring::new(SecretKey::generate(), Vec::new());
        let (id, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = keyring.seal(id, owner, &values()).expect("seal");
        assert!(!sealed
            .ciphertext
            .windows(b"very-secret-value".len())
            .any(|w| w == b"very-secret-value"));
        assert_eq!(keyring.open(id, owner, &sealed).expect("open"), values());
        assert!(keyring.open(id, Uuid::now_v7(), &sealed).is_err());
        assert!(keyring.open(Uuid::now_v7(), owner, &sealed).is_err());
        let other = Keyring::new(SecretKey::generate(), Vec::new());
        let error = other.open(id, owner, &sealed).expect_err("wrong key");
        assert!(error.to_string().contains(&sealed.key_id), "{error}");
    }

    #[test]
    fn a_previous_key_still_opens_what_it_sealed() {
        let old = SecretKey::generate();
        let (id, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = Keyring::new(old.clone(), Vec::new())
            .seal(id, owner, &values())
            .expect("seal");
        let rotated = Keyring::new(SecretKey::generate(), vec![old]);
        assert_eq!(rotated.open(id, owner, &sealed).expect("open"), values());
    }

    #[test]
    fn a_catalog_key_opens_only_for_its_repository() {
        let keyring = Keyring::new(SecretKey::generate(), Vec::new());
        let repository = Uuid::now_v7();
        let key = [9u8; 32];
        let sealed = keyring.seal_catalog_key(repository, &key).expect("seal");
        assert!(!sealed.ciphertext.windows(32).any(|w| w == key));
        let opened = keyring.open_catalog_key(repository, &sealed).expect("open");
        assert_eq!(opened.as_slice(), key.as_slice());
        assert!(keyring.open_catalog_key(Uuid::now_v7(), &sealed).is_err());
        // A secret's associated data differs: a sealed catalog key is no secret.
        assert!(keyring.open(repository, repository, &sealed).is_err());
    }

    #[test]
    fn a_passphrase_opens_only_as_a_passphrase_of_its_id_and_owner() {
        let keyring = Keyring::new(SecretKey::generate(), Vec::new());
        let (id, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let passphrase =
            Passphrase::new("p", "correct horse battery staple".into()).expect("valid");
        let sealed = keyring
            .seal_passphrase(id, owner, &passphrase)
            .expect("seal");
        assert!(!sealed.ciphertext.windows(5).any(|w| w == b"horse"));
        assert_eq!(
            keyring.open_passphrase(id, owner, &sealed).expect("open"),
            passphrase
        );
        assert!(keyring
            .open_passphrase(id, Uuid::now_v7(), &sealed)
            .is_err());
        // Relabelled as S3 credentials, the row fails its integrity check.
        assert!(keyring.open(id, owner, &sealed).is_err());
        let s3 = keyring.seal(id, owner, &values()).expect("seal");
        assert!(keyring.open_passphrase(id, owner, &s3).is_err());
    }

    #[test]
    fn two_seals_of_the_same_values_differ() {
        let keyring = Keyring::new(SecretKey::generate(), Vec::new());
        let (id, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let a = keyring.seal(id, owner, &values()).expect("seal");
        let b = keyring.seal(id, owner, &values()).expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn keys_parse_from_base64_and_hex_and_never_echo_the_text() {
        let key = SecretKey::generate();
        let parsed = SecretKey::parse(&key.encode()).expect("base64");
        assert_eq!(parsed.id(), key.id());
        let hex: String = key.bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(SecretKey::parse(&hex).expect("hex").id(), key.id());
        let error = SecretKey::parse("c2hvcnQta2V5").expect_err("too short");
        assert!(!error.contains("c2hvcnQta2V5"), "{error}");
        assert!(!format!("{key:?}").contains(key.encode().as_str()));
    }

    #[test]
    fn without_a_key_secrets_are_a_failed_precondition_that_says_how() {
        let error = Keyring::disabled()
            .seal(Uuid::now_v7(), Uuid::now_v7(), &values())
            .expect_err("no key");
        assert!(matches!(error, DomainError::FailedPrecondition(_)));
        assert!(error.to_string().contains("COFFER_SECRETS_KEY_FILE"));
    }
}
