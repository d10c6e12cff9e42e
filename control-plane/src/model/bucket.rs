//! Domain types for buckets: storage targets on S3-compatible services or on
//! a filesystem. An S3 bucket's credentials are a secret of its owner
//! (`model::secret`), or for admins' buckets where a worker finds them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::path::check_normalised_relative;
use super::{check_absolute_path, check_len, check_name};
use crate::error::{DomainError, DomainResult, Violations};

/// Longest bucket name.
pub const MAX_NAME_LEN: usize = 63;

/// An S3-compatible bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Location {
    /// Endpoint URL; empty means AWS.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region; empty means `us-east-1`.
    pub region: String,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// `env:NAME`, `file:/path` or empty; only for buckets of admins.
    pub credentials_ref: String,
    /// The owner's secret holding the credentials.
    pub secret_id: Option<Uuid>,
    /// The S3 storage class packs are written in; empty means the default.
    pub pack_storage_class: String,
}

/// The S3 storage classes a bucket or job may put packs in.
pub const STORAGE_CLASSES: [&str; 8] = [
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];

/// Checks a storage class: empty (the default) or one of [`STORAGE_CLASSES`].
pub fn check_storage_class(field: &str, class: &str) -> DomainResult<()> {
    if class.is_empty() || STORAGE_CLASSES.contains(&class) {
        return Ok(());
    }
    Err(DomainError::invalid(
        field,
        format!("must be empty or one of {}", STORAGE_CLASSES.join(", ")),
    ))
}

/// Where a bucket's data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An S3-compatible bucket.
    S3(S3Location),
    /// A filesystem path (absolute).
    Filesystem {
        /// Repository root.
        path: String,
    },
}

impl Location {
    /// The catalog's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::S3(_) => "s3",
            Location::Filesystem { .. } => "filesystem",
        }
    }
}

/// How the format v2 repositories created in a bucket protect their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepositoryEncryption {
    /// AES-256-GCM with key slots (the default).
    #[default]
    Aes256Gcm,
    /// Framed and checksummed, not encrypted: an explicit choice.
    None,
}

impl RepositoryEncryption {
    /// The catalog's spelling (also the format's, in a repository `config`).
    pub fn as_str(self) -> &'static str {
        match self {
            RepositoryEncryption::Aes256Gcm => "aes-256-gcm",
            RepositoryEncryption::None => "none",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(text: &str) -> DomainResult<Self> {
        match text {
            "aes-256-gcm" => Ok(RepositoryEncryption::Aes256Gcm),
            "none" => Ok(RepositoryEncryption::None),
            other => Err(DomainError::Internal(format!(
                "unknown repository encryption {other:?} in catalog"
            ))),
        }
    }
}

/// A registered storage target.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// Id.
    pub id: Uuid,
    /// Everything except the id and the times.
    pub spec: BucketSpec,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// The writable fields of a bucket: what Create stores and Update replaces.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketSpec {
    /// Owner.
    pub owner_id: Uuid,
    /// Name, unique per owner.
    pub name: String,
    /// Description.
    pub description: String,
    /// Where the data lives.
    pub location: Location,
    /// Key prefix inside the location.
    pub prefix: String,
    /// Default retention policy of the bucket's snapshots.
    pub retention_policy_id: Option<Uuid>,
    /// The S3 Object Lock everything written must carry (S3 only).
    pub object_lock: Option<ObjectLockSettings>,
    /// The owner's secret with the delete-capable credentials that
    /// retention and garbage collection use (S3 only); `None`: every run
    /// uses the location's credentials.
    pub maintenance_secret_id: Option<Uuid>,
    /// How repositories created in the bucket protect their data; fixed
    /// when the bucket is created.
    pub encryption: RepositoryEncryption,
    /// The owner's passphrase secret: encrypted repositories created in the
    /// bucket get a key slot for it beside the catalog's.
    pub passphrase_secret_id: Option<Uuid>,
}

/// Shortest lock a bucket may require.
pub const MIN_LOCK_RETENTION: Duration = Duration::from_secs(1);
/// Longest lock a bucket may require: 100 years (S3's own limit).
pub const MAX_LOCK_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How S3 Object Lock protects an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Deletable only with `s3:BypassGovernanceRetention` (never used by Coffer).
    Governance,
    /// Deletable by nobody until the lock ends.
    Compliance,
}

impl LockMode {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }

    /// Parses the catalog's spelling; `None` for anything else (no lock).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

/// The S3 Object Lock a bucket requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLockSettings {
    /// The mode.
    pub mode: LockMode,
    /// The shortest lock any object gets.
    pub min_retention: Duration,
}

impl ObjectLockSettings {
    /// The lock objects of a snapshot are written with: the bucket's
    /// minimum, or the policy's `keep_within` when that is longer (a
    /// snapshot is sure to be kept that long after it was taken, so its
    /// objects can be locked that long at once). Other rules (keep-last,
    /// keep-daily, ...) promise no time: for them the minimum applies and
    /// maintenance extends the locks while the snapshot is kept.
    pub fn write_retention(&self, keep_within: Option<Duration>) -> Duration {
        keep_within.map_or(self.min_retention, |within| {
            within.max(self.min_retention).min(MAX_LOCK_RETENTION)
        })
    }
}

impl BucketSpec {
    /// Validates every field, reporting all violations at once. Field paths
    /// start with `prefix` (e.g. `bucket.`). Does not check the retention policy.
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_name(
            &format!("{prefix}name"),
            &self.name,
            MAX_NAME_LEN,
        ));
        violations.absorb(check_len(
            &format!("{prefix}description"),
            &self.description,
            0,
            1000,
        ));
        match &self.location {
            Location::S3(s3) => check_s3(&mut violations, &format!("{prefix}s3."), s3),
            Location::Filesystem { path } => {
                violations.absorb(check_absolute_path(
                    &format!("{prefix}filesystem.path"),
                    path,
                ));
            }
        }
        violations.absorb(check_normalised_relative(
            &format!("{prefix}prefix"),
            &self.prefix,
        ));
        let on_s3 = matches!(self.location, Location::S3(_));
        if let Some(lock) = &self.object_lock {
            if !on_s3 {
                violations.add(
                    format!("{prefix}object_lock"),
                    "requires an S3 location: a filesystem cannot lock objects",
                );
            }
            if !(MIN_LOCK_RETENTION..=MAX_LOCK_RETENTION).contains(&lock.min_retention) {
                violations.add(
                    format!("{prefix}object_lock.min_retention"),
                    "must be between 1 second and 100 years",
                );
            }
        }
        if self.passphrase_secret_id.is_some() && self.encryption == RepositoryEncryption::None {
            violations.add(
                format!("{prefix}passphrase_secret_id"),
                "requires an encrypted bucket: repositories with encryption NONE have no key slots",
            );
        }
        if self.maintenance_secret_id.is_some() && !on_s3 {
            violations.add(
                format!("{prefix}maintenance_secret_id"),
                "requires an S3 location",
            );
        }
        violations.finish()
    }
}

fn check_s3(violations: &mut Violations, prefix: &str, s3: &S3Location) {
    violations.absorb(check_s3_bucket_name(&format!("{prefix}bucket"), &s3.bucket));
    violations.absorb(check_endpoint(&format!("{prefix}endpoint"), &s3.endpoint));
    violations.absorb(check_region(&format!("{prefix}region"), &s3.region));
    violations.absorb(check_credentials_ref(
        &format!("{prefix}credentials_ref"),
        &s3.credentials_ref,
    ));
    violations.absorb(check_storage_class(
        &format!("{prefix}pack_storage_class"),
        &s3.pack_storage_class,
    ));
}

/// Checks an S3 bucket name: 3-63 characters of lowercase letters, digits,
/// `.` and `-`, starting and ending with a letter or digit.
pub fn check_s3_bucket_name(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = (3..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| alphanumeric(c) || matches!(c, '.' | '-'))
        && value.starts_with(alphanumeric)
        && value.ends_with(alphanumeric)
        && !value.contains("..");
    if valid {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "must be 3-63 characters of lowercase letters, digits, '.' and '-', \
             starting and ending with a letter or digit (S3 naming rules)",
        ))
    }
}

/// Checks an endpoint: empty, or an `http://` or `https://` URL with a host.
pub fn check_endpoint(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Ok(());
    }
    check_len(field, value, 0, 2048)?;
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let host = rest.and_then(|rest| rest.split(['/', '?', '#']).next());
    match host {
        Some(host) if !host.is_empty() && !value.chars().any(char::is_whitespace) => {
            super::endpoint::check_endpoint_form(value)
                .map_err(|reason| DomainError::invalid(field, reason))
        }
        _ => Err(DomainError::invalid(
            field,
            "must be empty (AWS) or an http:// or https:// URL, e.g. http://minio:9000",
        )),
    }
}

/// Checks a region: empty or 1-64 characters of `[a-z0-9-]`.
pub fn check_region(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 0, 64)?;
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            "may contain only letters, digits, '-' and '_'",
        ))
    }
}

/// Checks a credentials reference: empty, `env:NAME` with NAME matching
/// `[A-Z][A-Z0-9_]*`, or `file:` followed by an absolute path.
pub fn check_credentials_ref(field: &str, value: &str) -> DomainResult<()> {
    if value.is_empty() {
        return Ok(());
    }
    check_len(field, value, 0, 1024)?;
    if let Some(name) = value.strip_prefix("env:") {
        let valid = name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        return if valid {
            Ok(())
        } else {
            Err(DomainError::invalid(
                field,
                "env: must be followed by a variable name prefix like MINIO ([A-Z][A-Z0-9_]*)",
            ))
        };
    }
    if let Some(path) = value.strip_prefix("file:") {
        return check_absolute_path(field, path).map_err(|_| {
            DomainError::invalid(field, "file: must be followed by an absolute path")
        });
    }
    Err(DomainError::invalid(
        field,
        "must be empty, env:NAME or file:/absolute/path (never the credentials themselves)",
    ))
}

/// Checks where an S3 bucket's credentials come from, given whether its
/// owner is an admin: a secret (`secret_id`) or, for admins only, the
/// worker's own (`credentials_ref` or its default keys). Non-admins naming a
/// worker's variable, file or default keys get `PermissionDenied` before
/// anything is looked up, so the answer cannot tell whether it exists.
/// Whether the secret belongs to the owner is checked against the catalog.
pub fn check_credentials_source(
    prefix: &str,
    s3: &S3Location,
    owner_is_admin: bool,
) -> DomainResult<()> {
    if s3.secret_id.is_some() && !s3.credentials_ref.is_empty() {
        return Err(DomainError::invalid(
            format!("{prefix}credentials_ref"),
            "credentials_ref and secret_id are alternatives; set at most one",
        ));
    }
    if owner_is_admin {
        return Ok(());
    }
    const HOW: &str = "only buckets of admins may use a worker's credentials (env:, file: or \
                       its default keys); store the credentials as a secret of the bucket's \
                       owner (SecretService) and set secret_id";
    if !s3.credentials_ref.is_empty() {
        return Err(DomainError::PermissionDenied(format!(
            "{prefix}credentials_ref: {HOW}"
        )));
    }
    if s3.secret_id.is_none() {
        return Err(DomainError::PermissionDenied(format!(
            "{prefix}secret_id: is required: {HOW}"
        )));
    }
    Ok(())
}
