//! Domain types for secrets: S3 credentials and repository passphrases owned
//! by a user. The values are input only: stored sealed (see
//! `crate::secrets`), never returned, and their `Debug` output is redacted.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::configuration::check_description;
use super::{check_len, check_name};
use crate::error::{DomainResult, Violations};

/// Longest secret name.
pub const MAX_NAME_LEN: usize = 63;
/// Characters of the access key id shown as a hint.
pub const HINT_LEN: usize = 4;

/// Shortest passphrase accepted, in bytes.
pub const MIN_PASSPHRASE_LEN: usize = 8;
/// Longest passphrase accepted, in bytes: Argon2id takes any length, and
/// this bounds what a request may make the control plane seal and a worker
/// hash.
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// What a secret holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// S3 credentials.
    S3,
    /// A repository passphrase.
    Passphrase,
}

impl SecretKind {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::S3 => "s3",
            SecretKind::Passphrase => "passphrase",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(text: &str) -> DomainResult<Self> {
        match text {
            "s3" => Ok(SecretKind::S3),
            "passphrase" => Ok(SecretKind::Passphrase),
            other => Err(crate::error::DomainError::Internal(format!(
                "unknown secret kind {other:?} in catalog"
            ))),
        }
    }

    /// What the kind is called in messages.
    pub fn describe(self) -> &'static str {
        match self {
            SecretKind::S3 => "an S3 credentials secret",
            SecretKind::Passphrase => "a passphrase secret",
        }
    }
}

/// A repository passphrase, zeroed when dropped. `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// Takes `text` as a passphrase if it is 8-1024 bytes without control
    /// characters; the error names `field` and never repeats the text.
    pub fn new(field: &str, text: String) -> DomainResult<Self> {
        let passphrase = Passphrase(text);
        let length = passphrase.0.len();
        if !(MIN_PASSPHRASE_LEN..=MAX_PASSPHRASE_LEN).contains(&length) {
            return Err(crate::error::DomainError::invalid(
                field,
                format!(
                    "must be {MIN_PASSPHRASE_LEN}-{MAX_PASSPHRASE_LEN} bytes long (it is {length})"
                ),
            ));
        }
        if passphrase.0.chars().any(char::is_control) {
            return Err(crate::error::DomainError::invalid(
                field,
                "must not contain control characters",
            ));
        }
        Ok(passphrase)
    }

    /// The passphrase, for sealing it or handing it to a lease.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The values of an S3 credential, zeroed when dropped. `Debug` shows none
/// of them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct S3CredentialValues {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials; empty when none.
    #[serde(default)]
    pub session_token: String,
}

impl fmt::Debug for S3CredentialValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3CredentialValues")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .finish()
    }
}

impl S3CredentialValues {
    /// Validates the values; the descriptions never repeat them.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        let mut check = |field: &str, value: &str, min: usize, max: usize| {
            let field = format!("{prefix}{field}");
            if let Err(error) = check_len(&field, value, min, max) {
                violations.absorb::<()>(Err(error));
            } else if !value.chars().all(|c| c.is_ascii_graphic()) {
                violations.add(&field, "must be printable ASCII without spaces");
            }
        };
        check("access_key_id", &self.access_key_id, 1, 128);
        check("secret_access_key", &self.secret_access_key, 1, 1024);
        check("session_token", &self.session_token, 0, 8192);
        violations.finish()
    }

    /// The first [`HINT_LEN`] characters of the access key id.
    pub fn hint(&self) -> String {
        self.access_key_id.chars().take(HINT_LEN).collect()
    }
}

/// The writable metadata of a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    /// Owner.
    pub owner_id: Uuid,
    /// Name, unique per owner.
    pub name: String,
    /// Description.
    pub description: String,
}

impl SecretSpec {
    /// Validates every field, reporting all violations at once.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_name(
            &format!("{prefix}name"),
            &self.name,
            MAX_NAME_LEN,
        ));
        violations.absorb(check_description(
            &format!("{prefix}description"),
            &self.description,
        ));
        violations.finish()
    }
}

/// A secret as the API shows it: metadata only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// Id.
    pub id: Uuid,
    /// Owner, name and description.
    pub spec: SecretSpec,
    /// What it holds.
    pub kind: SecretKind,
    /// The first characters of the access key id.
    pub access_key_id_hint: String,
    /// Whether a session token is stored.
    pub has_session_token: bool,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// When the values were last written.
    pub update_time: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_value() {
        let values = S3CredentialValues {
            access_key_id: "AKIAIDVISIBLE".into(),
            secret_access_key: "wJalrXUtnFEMI-secret".into(),
            session_token: "session-token-value".into(),
        };
        let shown = format!("{values:?} {values:#?}");
        for value in [
            "AKIAIDVISIBLE",
            "wJalrXUtnFEMI-secret",
            "session-token-value",
        ] {
            assert!(!shown.contains(value), "{shown}");
        }
        assert_eq!(values.hint(), "AKIA");
    }

    #[test]
    fn passphrases_are_bounded_named_by_field_and_never_shown() {
        let good = Passphrase::new("passphrase.passphrase", "correct horse battery".into())
            .expect("valid");
        assert!(!format!("{good:?}").contains("horse"));
        let short = Passphrase::new("passphrase.passphrase", "short".into())
            .expect_err("too short")
            .to_string();
        assert!(short.contains("passphrase.passphrase"), "{short}");
        assert!(!short.contains("short\""), "{short}");
        let long = Passphrase::new("p", "x".repeat(MAX_PASSPHRASE_LEN + 1)).expect_err("long");
        assert!(long.to_string().contains("1025"), "{long}");
        let control = Passphrase::new("p", "tab\there-secret".into()).expect_err("control");
        assert!(!control.to_string().contains("here-secret"), "{control}");
        assert!(Passphrase::new("p", "x".repeat(MAX_PASSPHRASE_LEN)).is_ok());
    }

    #[test]
    fn bad_values_are_named_by_field_without_their_content() {
        let values = S3CredentialValues {
            access_key_id: String::new(),
            secret_access_key: "has space".into(),
            session_token: String::new(),
        };
        let error = values.validate("s3.").expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("s3.access_key_id"), "{text}");
        assert!(text.contains("s3.secret_access_key"), "{text}");
        assert!(!text.contains("has space"), "{text}");
    }
}
