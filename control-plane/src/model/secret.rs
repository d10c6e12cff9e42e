//! Domain types for secrets: S3 credentials owned by a user. The values are
//! input only: stored sealed (see `crate::secrets`), never returned, and their
//! `Debug` output is redacted.

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
