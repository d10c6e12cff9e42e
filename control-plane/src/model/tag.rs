//! Domain types for tags: key/value labels on runs, objects, object versions,
//! jobs and buckets.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::check_len;
use crate::error::{DomainError, DomainResult, Violations};

/// Most tags one resource may carry.
pub const MAX_TAGS_PER_RESOURCE: i64 = 64;
/// Longest tag key, in characters.
pub const MAX_KEY_LEN: usize = 128;
/// Longest tag value, in characters.
pub const MAX_VALUE_LEN: usize = 256;

/// The kind of resource a tag names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A run (a snapshot once it succeeded).
    Run,
    /// A backup object.
    Object,
    /// One version of a backup object.
    ObjectVersion,
    /// A backup job.
    Job,
    /// A bucket.
    Bucket,
}

impl ResourceKind {
    /// The catalog's spelling (`tags.resource_kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Run => "run",
            ResourceKind::Object => "object",
            ResourceKind::ObjectVersion => "object_version",
            ResourceKind::Job => "job",
            ResourceKind::Bucket => "bucket",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "run" => Ok(ResourceKind::Run),
            "object" => Ok(ResourceKind::Object),
            "object_version" => Ok(ResourceKind::ObjectVersion),
            "job" => Ok(ResourceKind::Job),
            "bucket" => Ok(ResourceKind::Bucket),
            other => Err(DomainError::Internal(format!(
                "unknown resource kind {other:?} in catalog"
            ))),
        }
    }
}

/// A typed reference to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    /// What `id` names.
    pub kind: ResourceKind,
    /// The resource's id.
    pub id: Uuid,
}

/// A stored tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    /// Id.
    pub id: Uuid,
    /// The tagged resource.
    pub resource: ResourceRef,
    /// The key, unique per resource.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
    /// The resource's owner.
    pub owner_id: Uuid,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// A tag to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTag {
    /// The resource to tag.
    pub resource: ResourceRef,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl NewTag {
    /// Validates key and value, reporting both at once.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_tag_key(&format!("{prefix}key"), &self.key));
        violations.absorb(check_tag_value(&format!("{prefix}value"), &self.value));
        violations.finish()
    }
}

/// Which tags a List call returns. `None` leaves a filter off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TagFilter {
    /// Only tags owned by this user (non-admin callers).
    pub owner_id: Option<Uuid>,
    /// Only tags on resources of this kind.
    pub kind: Option<ResourceKind>,
    /// Only tags on the resource with this id (used together with `kind`).
    pub resource_id: Option<Uuid>,
    /// Only tags with this key.
    pub key: Option<String>,
    /// Only tags with this value (needs `key`).
    pub value: Option<String>,
}

/// A tag condition as policies and list filters write it: `key` matches a
/// tag with that key and any value, `key=value` only that value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagMatch {
    /// The key the tag must have.
    pub key: String,
    /// The value it must have; `None` accepts any value.
    pub value: Option<String>,
}

impl TagMatch {
    /// Parses `key` or `key=value` (the first `=` separates them; the value
    /// may be empty). Validation is the caller's (see
    /// [`crate::model::retention::check_keep_tag`]).
    pub fn parse(text: &str) -> Self {
        match text.split_once('=') {
            Some((key, value)) => TagMatch {
                key: key.to_string(),
                value: Some(value.to_string()),
            },
            None => TagMatch {
                key: text.to_string(),
                value: None,
            },
        }
    }

    /// Whether a tag `key`/`value` satisfies the condition.
    pub fn matches(&self, key: &str, value: &str) -> bool {
        self.key == key && self.value.as_deref().is_none_or(|wanted| wanted == value)
    }
}

/// Checks a tag key: 1-128 characters of `[A-Za-z0-9_.:/-]`, starting with a letter.
pub fn check_tag_key(field: &str, key: &str) -> DomainResult<()> {
    check_len(field, key, 1, MAX_KEY_LEN)?;
    let valid_first = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let valid_rest = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'));
    if !valid_first || !valid_rest {
        return Err(DomainError::invalid(
            field,
            "may contain only letters, digits, '_', '.', ':', '/' and '-', and must start with a letter",
        ));
    }
    Ok(())
}

/// Checks a tag value: at most 256 characters, none of them control
/// characters (the rule of a policy's `keep_tags` values, so every value can
/// be kept by).
pub fn check_tag_value(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 0, MAX_VALUE_LEN)?;
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_alphabet() {
        assert!(check_tag_key("k", "env").is_ok());
        assert!(check_tag_key("k", "Team/app:tier-1_x.y").is_ok());
        assert!(check_tag_key("k", "").is_err());
        assert!(check_tag_key("k", "1abc").is_err());
        assert!(check_tag_key("k", "a b").is_err());
        assert!(check_tag_key("k", &"a".repeat(129)).is_err());
        assert!(check_tag_key("k", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn values_are_limited_and_printable() {
        assert!(check_tag_value("v", "").is_ok());
        assert!(check_tag_value("v", "release 1.2 (ünïcode)").is_ok());
        assert!(check_tag_value("v", &"v".repeat(256)).is_ok());
        assert!(check_tag_value("v", &"v".repeat(257)).is_err());
        assert!(check_tag_value("v", "line\nbreak").is_err());
        assert!(check_tag_value("v", "tab\there").is_err());
    }

    #[test]
    fn tag_match_takes_key_or_key_and_value() {
        let any = TagMatch::parse("release");
        assert!(any.matches("release", "v1"));
        assert!(any.matches("release", ""));
        assert!(!any.matches("releases", "v1"));
        let exact = TagMatch::parse("release=v1=rc");
        assert_eq!(exact.key, "release");
        assert!(exact.matches("release", "v1=rc"));
        assert!(!exact.matches("release", "v1"));
        let empty = TagMatch::parse("pinned=");
        assert!(empty.matches("pinned", ""));
        assert!(!empty.matches("pinned", "yes"));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            ResourceKind::Run,
            ResourceKind::Object,
            ResourceKind::ObjectVersion,
            ResourceKind::Job,
            ResourceKind::Bucket,
        ] {
            assert_eq!(ResourceKind::parse(kind.as_str()).ok(), Some(kind));
        }
    }
}
