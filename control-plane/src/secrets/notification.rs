//! Sealing a notification channel's values (a webhook's signing secret and
//! headers) under the secrets key, bound to the channel's id and owner like
//! a secret's values, under an associated-data context of their own so a
//! sealed channel can never be opened as a secret or the other way round.

use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{Keyring, Sealed};
use crate::error::{DomainError, DomainResult};
use crate::model::notification::ChannelSecrets;

/// Prefix of the associated data of a channel's sealed values.
const CHANNEL_CONTEXT: &[u8] = b"coffer.notification-channel.v1\0";
/// Prefix of a signing secret, so one found in a log or a config file is
/// recognisable (and scanners can look for it).
const SIGNING_SECRET_PREFIX: &str = "whsec_";

fn associated_data(id: Uuid, owner: Uuid) -> Vec<u8> {
    [CHANNEL_CONTEXT, id.as_bytes(), owner.as_bytes()].concat()
}

/// A new signing secret: 256 random bits, URL-safe base64 after a prefix.
pub fn generate_signing_secret() -> String {
    use base64::Engine as _;
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(bytes.as_mut_slice());
    format!(
        "{SIGNING_SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice())
    )
}

impl Keyring {
    /// Seals the values of channel `id` of `owner` under the primary key.
    pub fn seal_channel(
        &self,
        id: Uuid,
        owner: Uuid,
        secrets: &ChannelSecrets,
    ) -> DomainResult<Sealed> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(secrets)
                .map_err(|e| DomainError::Internal(format!("encoding a channel's values: {e}")))?,
        );
        self.seal_bytes(&associated_data(id, owner), &plaintext)
    }

    /// Opens the values of channel `id` of `owner`; a row altered or moved
    /// to another channel or owner is `FailedPrecondition`.
    pub fn open_channel(
        &self,
        id: Uuid,
        owner: Uuid,
        sealed: &Sealed,
    ) -> DomainResult<ChannelSecrets> {
        let what = format!("notification channel {id}");
        let tampered = || {
            DomainError::FailedPrecondition(format!(
                "{what} failed its integrity check: its stored row was altered or moved \
                 to another id or owner; create the channel again"
            ))
        };
        let plaintext = self.open_bytes(&associated_data(id, owner), sealed, &what, tampered)?;
        serde_json::from_slice(&plaintext).map_err(|_| tampered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretKey;

    #[test]
    fn channel_values_open_only_for_their_channel() {
        let keyring = Keyring::new(SecretKey::generate(), Vec::new());
        let (id, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let values = ChannelSecrets {
            signing_secret: generate_signing_secret(),
            headers: Default::default(),
            smtp_password: "smtp-password".into(),
        };
        let sealed = keyring.seal_channel(id, owner, &values).expect("seal");
        assert_eq!(
            keyring.open_channel(id, owner, &sealed).expect("open"),
            values
        );
        assert!(keyring
            .open_channel(Uuid::now_v7(), owner, &sealed)
            .is_err());
        assert!(
            keyring.open(id, owner, &sealed).is_err(),
            "opened as a secret"
        );
        assert_ne!(generate_signing_secret(), generate_signing_secret());
    }
}
