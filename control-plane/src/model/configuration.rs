//! Domain types for configurations: system-wide settings under a fixed set of
//! known keys, each with its own value rule.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{check_absolute_path, check_len};
use crate::error::{DomainError, DomainResult, Violations};

/// One configuration entry.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Configuration {
    /// Id.
    pub id: Uuid,
    /// One of [`KNOWN_KEYS`].
    pub key: String,
    /// The value, valid for its key.
    pub value: String,
    /// Note for operators.
    pub description: String,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// An entry to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewConfiguration {
    /// One of [`KNOWN_KEYS`].
    pub key: String,
    /// The value.
    pub value: String,
    /// Note for operators.
    pub description: String,
}

/// Changes to an entry; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigurationPatch {
    /// New value.
    pub value: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// How the value of a key is validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueRule {
    /// An absolute path.
    AbsolutePath,
    /// A decimal integer within an inclusive range.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// The UUID of an existing retention policy.
    RetentionPolicyId,
    /// `true` or `false`.
    Boolean,
    /// Comma-separated host patterns (see `model::endpoint`).
    HostPatterns,
    /// Comma-separated networks in CIDR notation (`127.0.0.0/8,10.1.0.0/16`).
    Networks,
}

/// A known configuration key and its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownKey {
    /// The key.
    pub key: &'static str,
    /// Its value rule.
    pub rule: ValueRule,
}

/// Root of `nfs_path` targets.
pub const NFS_MOUNT_PATH: &str = "nfs_mount_path";
/// Attempts before a run fails.
pub const DEFAULT_MAX_ATTEMPTS: &str = "default_max_attempts";
/// How long a lease lives.
pub const LEASE_TTL_SECONDS: &str = "lease_ttl_seconds";
/// First requeue delay.
pub const RETRY_BACKOFF_SECONDS: &str = "retry_backoff_seconds";
/// Hard limit of one attempt.
pub const RUN_DEADLINE_SECONDS: &str = "run_deadline_seconds";
/// Policy applied when neither object, job nor bucket names one.
pub const DEFAULT_RETENTION_POLICY_ID: &str = "default_retention_policy_id";

/// Whether a job's retention policy is applied after each of its backups.
pub const RETENTION_APPLY_AFTER_BACKUP: &str = "retention_apply_after_backup";

/// The shortest grace period a non-admin's garbage collection may ask for
/// (admins may go below it, down to zero).
pub const GC_MIN_GRACE_SECONDS: &str = "gc_min_grace_seconds";

/// [`GC_MIN_GRACE_SECONDS`] when it is not configured.
pub const DEFAULT_GC_MIN_GRACE_SECONDS: i64 = 3600;

/// Hosts buckets of non-admin owners may point at (empty or unset: any).
pub const S3_ENDPOINT_ALLOW: &str = "s3_endpoint_allow";
/// Hosts buckets of non-admin owners may not point at.
pub const S3_ENDPOINT_DENY: &str = "s3_endpoint_deny";

/// Largest file `DownloadService.DownloadFile` sends, in bytes; 0 turns
/// downloads off.
pub const DOWNLOAD_MAX_BYTES: &str = "download_max_bytes";
/// Download size limit when the configuration sets none: 4 GiB.
pub const DEFAULT_DOWNLOAD_MAX_BYTES: i64 = 4 << 30;

/// Every key a configuration entry may have.
pub const KNOWN_KEYS: &[KnownKey] = &[
    KnownKey {
        key: NFS_MOUNT_PATH,
        rule: ValueRule::AbsolutePath,
    },
    KnownKey {
        key: DEFAULT_MAX_ATTEMPTS,
        rule: ValueRule::Integer { min: 1, max: 100 },
    },
    KnownKey {
        key: LEASE_TTL_SECONDS,
        rule: ValueRule::Integer { min: 5, max: 3600 },
    },
    KnownKey {
        key: RETRY_BACKOFF_SECONDS,
        rule: ValueRule::Integer { min: 1, max: 3600 },
    },
    KnownKey {
        key: RUN_DEADLINE_SECONDS,
        rule: ValueRule::Integer {
            min: 60,
            max: 604_800,
        },
    },
    KnownKey {
        key: DEFAULT_RETENTION_POLICY_ID,
        rule: ValueRule::RetentionPolicyId,
    },
    KnownKey {
        key: RETENTION_APPLY_AFTER_BACKUP,
        rule: ValueRule::Boolean,
    },
    KnownKey {
        key: S3_ENDPOINT_ALLOW,
        rule: ValueRule::HostPatterns,
    },
    KnownKey {
        key: S3_ENDPOINT_DENY,
        rule: ValueRule::HostPatterns,
    },
    KnownKey {
        key: DOWNLOAD_MAX_BYTES,
        rule: ValueRule::Integer {
            min: 0,
            max: 1 << 50,
        },
    },
    KnownKey {
        key: GC_MIN_GRACE_SECONDS,
        rule: ValueRule::Integer {
            min: 0,
            max: 2_592_000,
        },
    },
];

/// Most runs a non-admin owner may have queued at once.
pub const MAX_QUEUED_RUNS_PER_OWNER: &str = "max_queued_runs_per_owner";
/// Most jobs a non-admin owner may have.
pub const MAX_JOBS_PER_OWNER: &str = "max_jobs_per_owner";
/// Most API tokens a non-admin user may have.
pub const MAX_API_TOKENS_PER_OWNER: &str = "max_api_tokens_per_owner";
/// Most `WatchRun` streams a non-admin user may hold open on one replica.
pub const MAX_WATCH_STREAMS_PER_OWNER: &str = "max_watch_streams_per_owner";
/// How long a run may wait for a worker before it fails (0: forever).
pub const QUEUE_TIMEOUT_SECONDS: &str = "queue_timeout_seconds";

/// The fair-use keys: per-owner limits and the queue timeout. Kept apart from
/// [`KNOWN_KEYS`] so each group of settings reads as one list.
pub const FAIR_USE_KEYS: &[KnownKey] = &[
    KnownKey {
        key: MAX_QUEUED_RUNS_PER_OWNER,
        rule: ValueRule::Integer {
            min: 1,
            max: 1_000_000,
        },
    },
    KnownKey {
        key: MAX_JOBS_PER_OWNER,
        rule: ValueRule::Integer {
            min: 1,
            max: 1_000_000,
        },
    },
    KnownKey {
        key: MAX_API_TOKENS_PER_OWNER,
        rule: ValueRule::Integer {
            min: 1,
            max: 10_000,
        },
    },
    KnownKey {
        key: MAX_WATCH_STREAMS_PER_OWNER,
        rule: ValueRule::Integer {
            min: 1,
            max: 10_000,
        },
    },
    KnownKey {
        key: QUEUE_TIMEOUT_SECONDS,
        rule: ValueRule::Integer {
            min: 0,
            max: 30 * 86_400,
        },
    },
];

/// Internal networks (loopback, private, link-local, unique-local) that
/// notification channels may reach; none unless an admin lists them here.
pub const NOTIFICATION_ALLOWED_NETWORKS: &str = "notification_allowed_networks";
/// Attempts of a notification delivery before it fails (default 8).
pub const NOTIFICATION_MAX_ATTEMPTS: &str = "notification_max_attempts";
/// Seconds before a delivery's second attempt, doubling after each one up
/// to an hour (default 30).
pub const NOTIFICATION_RETRY_BASE_SECONDS: &str = "notification_retry_base_seconds";

/// The notification keys (issue 15).
pub const NOTIFICATION_KEYS: &[KnownKey] = &[
    KnownKey {
        key: NOTIFICATION_ALLOWED_NETWORKS,
        rule: ValueRule::Networks,
    },
    KnownKey {
        key: NOTIFICATION_MAX_ATTEMPTS,
        rule: ValueRule::Integer { min: 1, max: 30 },
    },
    KnownKey {
        key: NOTIFICATION_RETRY_BASE_SECONDS,
        rule: ValueRule::Integer { min: 1, max: 3600 },
    },
];

/// The networks listed in a [`ValueRule::Networks`] value; an error names
/// the first entry that is not one.
pub fn parse_networks(value: &str) -> Result<Vec<ipnet::IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{entry:?} is not a network (CIDR) or an address"))
        })
        .collect()
}

/// The rule of a known key, or an error on `field` listing the known keys.
pub fn rule_of(field: &str, key: &str) -> DomainResult<ValueRule> {
    let known_keys = || {
        KNOWN_KEYS
            .iter()
            .chain(FAIR_USE_KEYS)
            .chain(NOTIFICATION_KEYS)
    };
    known_keys()
        .find(|known| known.key == key)
        .map(|known| known.rule)
        .ok_or_else(|| {
            let names: Vec<&str> = known_keys().map(|known| known.key).collect();
            DomainError::invalid(
                field,
                format!("unknown key {key:?}; known keys: {}", names.join(", ")),
            )
        })
}

/// Checks a value against a rule. Returns the policy id a
/// [`ValueRule::RetentionPolicyId`] value names, which the caller must check exists.
pub fn check_value(field: &str, rule: ValueRule, value: &str) -> DomainResult<Option<Uuid>> {
    match rule {
        ValueRule::AbsolutePath => check_absolute_path(field, value).map(|()| None),
        ValueRule::Integer { min, max } => {
            let number: i64 = value.trim().parse().map_err(|_| {
                DomainError::invalid(field, format!("must be an integer from {min} to {max}"))
            })?;
            if number < min || number > max || value.trim() != value {
                return Err(DomainError::invalid(
                    field,
                    format!("must be an integer from {min} to {max}"),
                ));
            }
            Ok(None)
        }
        ValueRule::Boolean => match value {
            "true" | "false" => Ok(None),
            _ => Err(DomainError::invalid(field, "must be `true` or `false`")),
        },
        ValueRule::HostPatterns => super::endpoint::check_patterns(value)
            .map(|()| None)
            .map_err(|reason| DomainError::invalid(field, reason)),
        ValueRule::Networks => parse_networks(value)
            .map(|_| None)
            .map_err(|reason| DomainError::invalid(field, reason)),
        ValueRule::RetentionPolicyId => Uuid::parse_str(value)
            .map(Some)
            .map_err(|_| DomainError::invalid(field, "must be the UUID of a retention policy")),
    }
}

/// Checks a description.
pub fn check_description(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 0, 1000)
}

impl NewConfiguration {
    /// Validates every field, reporting all violations at once. Returns the
    /// retention policy the value names, if any, for an existence check.
    pub fn validate(&self, prefix: &str) -> DomainResult<Option<Uuid>> {
        let mut violations = Violations::new();
        let policy = violations
            .absorb(rule_of(&format!("{prefix}key"), &self.key))
            .and_then(|rule| {
                violations.absorb(check_value(&format!("{prefix}value"), rule, &self.value))
            })
            .flatten();
        violations.absorb(check_description(
            &format!("{prefix}description"),
            &self.description,
        ));
        violations.finish()?;
        Ok(policy)
    }
}
