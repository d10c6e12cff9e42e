//! Domain types for backup metadata: size, duration and details of a backup.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::check_len;
use crate::error::{DomainError, DomainResult, Violations};

/// Longest `details`, in characters.
pub const MAX_DETAILS_LEN: usize = 10_000;

/// Who wrote a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataSource {
    /// Written by the system when a run finished.
    Automatic,
    /// Written by a user.
    Manual,
}

impl MetadataSource {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MetadataSource::Automatic => "automatic",
            MetadataSource::Manual => "manual",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(value: &str) -> DomainResult<Self> {
        match value {
            "automatic" => Ok(MetadataSource::Automatic),
            "manual" => Ok(MetadataSource::Manual),
            other => Err(DomainError::Internal(format!(
                "unknown metadata source {other:?} in catalog"
            ))),
        }
    }
}

/// The measured values of a record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataValues {
    /// Size in bytes.
    pub size_bytes: i64,
    /// Duration in seconds.
    pub duration_seconds: f64,
    /// Free-form details.
    pub details: String,
}

impl MetadataValues {
    /// Checks every value; `prefix` is prepended to field names (e.g. `backup_metadata.`).
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_size(&format!("{prefix}size_bytes"), self.size_bytes));
        violations.absorb(check_duration(
            &format!("{prefix}duration_seconds"),
            self.duration_seconds,
        ));
        violations.absorb(check_details(&format!("{prefix}details"), &self.details));
        violations.finish()
    }
}

/// Checks a size (>= 0).
pub fn check_size(field: &str, value: i64) -> DomainResult<()> {
    if value < 0 {
        return Err(DomainError::invalid(field, "must not be negative"));
    }
    Ok(())
}

/// Checks a duration (finite, >= 0).
pub fn check_duration(field: &str, value: f64) -> DomainResult<()> {
    if !value.is_finite() || value < 0.0 {
        return Err(DomainError::invalid(
            field,
            "must be a finite, non-negative number",
        ));
    }
    Ok(())
}

/// Checks details (at most 10000 characters).
pub fn check_details(field: &str, value: &str) -> DomainResult<()> {
    check_len(field, value, 0, MAX_DETAILS_LEN)
}

/// A stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupMetadata {
    /// Id.
    pub id: Uuid,
    /// Owner (the job's or run's owner).
    pub owner_id: Uuid,
    /// The job, if any.
    pub job_id: Option<Uuid>,
    /// The run, if any.
    pub run_id: Option<Uuid>,
    /// The measured values.
    pub values: MetadataValues,
    /// Who wrote it.
    pub source: MetadataSource,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// Last modification time.
    pub update_time: DateTime<Utc>,
}

/// A record to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewBackupMetadata {
    /// Owner.
    pub owner_id: Uuid,
    /// The job, if any.
    pub job_id: Option<Uuid>,
    /// The run, if any.
    pub run_id: Option<Uuid>,
    /// The measured values.
    pub values: MetadataValues,
    /// Who writes it.
    pub source: MetadataSource,
}

/// Filters of ListBackupMetadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataFilter {
    /// Only records of this job.
    pub job_id: Option<Uuid>,
    /// Only records of this run.
    pub run_id: Option<Uuid>,
    /// Only records from this source.
    pub source: Option<MetadataSource>,
}
