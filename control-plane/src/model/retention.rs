//! Domain types for retention: policies (which snapshots are kept) and object
//! retentions (holds on single objects or object versions).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::check_len;
use crate::error::{DomainError, DomainResult, Violations};

pub mod plan;

/// Longest policy name.
pub const MAX_POLICY_NAME_LEN: usize = 100;
/// Most tags a policy may keep by.
pub const MAX_KEEP_TAGS: usize = 100;

/// The keep rules of a policy; a snapshot is kept if any rule keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepRules {
    /// Newest N snapshots.
    pub keep_last: i32,
    /// One per hour for N hours.
    pub keep_hourly: i32,
    /// One per day for N days.
    pub keep_daily: i32,
    /// One per ISO week for N weeks.
    pub keep_weekly: i32,
    /// One per month for N months.
    pub keep_monthly: i32,
    /// One per year for N years.
    pub keep_yearly: i32,
    /// Everything younger than this many seconds (relative to the newest snapshot).
    pub keep_within_seconds: i64,
    /// Snapshots with one of these tags (`key` or `key=value`).
    pub keep_tags: Vec<String>,
    /// IANA time zone of the calendar buckets; empty is UTC.
    pub time_zone: String,
}

impl KeepRules {
    /// Whether any rule keeps anything.
    pub fn keeps_something(&self) -> bool {
        self.counts().iter().any(|(_, n)| *n > 0)
            || self.keep_within_seconds > 0
            || !self.keep_tags.is_empty()
    }

    fn counts(&self) -> [(&'static str, i32); 6] {
        [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ]
    }

    /// Validates every rule, recording violations under `prefix`.
    fn check(&self, violations: &mut Violations, prefix: &str) {
        for (name, value) in self.counts() {
            if value < 0 {
                violations.add(format!("{prefix}{name}"), "must not be negative");
            }
        }
        if self.keep_within_seconds < 0 {
            violations.add(format!("{prefix}keep_within"), "must not be negative");
        }
        if self.keep_tags.len() > MAX_KEEP_TAGS {
            violations.add(
                format!("{prefix}keep_tags"),
                format!("at most {MAX_KEEP_TAGS} tags"),
            );
        }
        for (index, tag) in self.keep_tags.iter().enumerate() {
            violations.absorb(check_keep_tag(&format!("{prefix}keep_tags[{index}]"), tag));
        }
        violations.absorb(check_time_zone(
            &format!("{prefix}time_zone"),
            &self.time_zone,
        ));
    }
}

/// A retention policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionPolicy {
    /// Id.
    pub id: Uuid,
    /// Everything except the id and the times.
    pub spec: PolicySpec,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// The writable fields of a policy: what Create stores and Update replaces.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Owner.
    pub owner_id: Uuid,
    /// Name, unique per owner.
    pub name: String,
    /// Description.
    pub description: String,
    /// The keep rules.
    pub rules: KeepRules,
}

impl PolicySpec {
    /// Validates every field, reporting all violations at once. Field paths
    /// start with `prefix` (e.g. `retention_policy.`).
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_len(
            &format!("{prefix}name"),
            &self.name,
            1,
            MAX_POLICY_NAME_LEN,
        ));
        if self.name.chars().any(char::is_control) {
            violations.add(
                format!("{prefix}name"),
                "must not contain control characters",
            );
        }
        violations.absorb(check_len(
            &format!("{prefix}description"),
            &self.description,
            0,
            1000,
        ));
        self.rules.check(&mut violations, prefix);
        if !self.rules.keeps_something() {
            violations.add(
                prefix.trim_end_matches('.'),
                "a policy that keeps nothing would delete every snapshot; \
                 set at least one keep_* rule, keep_within or keep_tags",
            );
        }
        violations.finish()
    }
}

/// Checks a keep tag: `key` or `key=value`, the key 1-128 characters of
/// `[A-Za-z0-9_.:/-]` starting with a letter, the value at most 256 characters.
pub fn check_keep_tag(field: &str, tag: &str) -> DomainResult<()> {
    let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
    let valid_key = (1..=128).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'));
    if !valid_key {
        return Err(DomainError::invalid(
            field,
            "must be `key` or `key=value` with a key of 1-128 characters of \
             [A-Za-z0-9_.:/-] starting with a letter",
        ));
    }
    if value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "the value must have at most 256 characters and no control characters",
        ));
    }
    Ok(())
}

/// Checks a policy's time zone: empty (UTC), `UTC`, or an IANA name from the
/// tz database compiled into the binary, so that every stored policy can be
/// planned.
pub fn check_time_zone(field: &str, value: &str) -> DomainResult<()> {
    crate::model::job::check_time_zone(field, value)
}

/// What an object retention holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetainedKind {
    /// A whole object (every version).
    Object,
    /// One object version.
    ObjectVersion,
}

impl RetainedKind {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetainedKind::Object => "object",
            RetainedKind::ObjectVersion => "object_version",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "object" => Ok(RetainedKind::Object),
            "object_version" => Ok(RetainedKind::ObjectVersion),
            other => Err(DomainError::Internal(format!(
                "unknown object retention kind {other:?} in catalog"
            ))),
        }
    }
}

/// A retained resource: an object or an object version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetainedResource {
    /// Its kind.
    pub kind: RetainedKind,
    /// Its id.
    pub id: Uuid,
}

/// A hold on an object or object version.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectRetention {
    /// Id.
    pub id: Uuid,
    /// The object's owner.
    pub owner_id: Uuid,
    /// What is held.
    pub resource: RetainedResource,
    /// Policy deciding which versions are kept.
    pub policy_id: Option<Uuid>,
    /// Never remove before this time.
    pub retain_until_time: Option<DateTime<Utc>>,
    /// Never remove while set.
    pub legal_hold: bool,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// The writable fields of an object retention.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldSpec {
    /// Policy deciding which versions are kept.
    pub policy_id: Option<Uuid>,
    /// Never remove before this time.
    pub retain_until_time: Option<DateTime<Utc>>,
    /// Never remove while set.
    pub legal_hold: bool,
}

impl HoldSpec {
    /// Whether the retention holds anything at all.
    pub fn holds_something(&self) -> bool {
        self.policy_id.is_some() || self.retain_until_time.is_some() || self.legal_hold
    }
}

impl ObjectRetention {
    /// The writable fields.
    pub fn hold(&self) -> HoldSpec {
        HoldSpec {
            policy_id: self.policy_id,
            retain_until_time: self.retain_until_time,
            legal_hold: self.legal_hold,
        }
    }

    /// Whether the retention still protects its resource at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.legal_hold || self.retain_until_time.is_some_and(|until| until > now)
    }

    /// Checks that `next` does not move an unexpired retain-until date earlier
    /// (or remove it).
    pub fn check_retain_until_change(
        &self,
        next: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> DomainResult<()> {
        match (self.retain_until_time, next) {
            (Some(current), Some(next)) if current > now && next < current => {
                Err(DomainError::FailedPrecondition(format!(
                    "retain_until_time may only be moved later (currently {current})"
                )))
            }
            (Some(current), None) if current > now => Err(DomainError::FailedPrecondition(
                format!("retain_until_time cannot be removed before it passes ({current})"),
            )),
            _ => Ok(()),
        }
    }
}
