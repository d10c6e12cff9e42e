//! S3 Object Lock: writing objects with a retain-until date, extending it,
//! deleting versions of a versioned bucket, and the one rule that decides
//! what maintenance does with a locked object.
//!
//! A bucket that requires Object Lock is versioned (S3 enables versioning
//! with the lock). There a `DeleteObject` without a version id deletes
//! nothing: it only hides the object behind a delete marker, even when the
//! object is locked, and the data stays billed. So a store with a lock
//! deletes every version of a key by its id (and then its delete markers),
//! and a locked version makes the deletion fail with [`StoreError::Locked`]
//! naming the date, never half-hide the object.

use std::time::Duration;

use aws_sdk_s3::types::{
    ObjectLockEnabled, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
};
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::error::{cancellable, StoreError};
use super::s3::{s3_error, send, S3Store};

/// How a bucket's objects are locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete; Coffer never does.
    Governance,
    /// Nobody can delete or shorten the lock, not even the account's root.
    Compliance,
}

/// The Object Lock a repository's objects are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// The lock mode.
    pub mode: LockMode,
    /// How long after it is written (or extended) an object stays locked.
    pub retention: Duration,
}

impl ObjectLock {
    /// The retain-until date of an object written or extended at `now`:
    /// `now + retention`, rounded up to the second (S3 keeps whole seconds,
    /// and rounding down would lock for less than asked).
    pub fn retain_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let retention = TimeDelta::from_std(self.retention).unwrap_or(TimeDelta::MAX);
        let until = now
            .checked_add_signed(retention)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let whole = until.timestamp();
        let rounded = if until.timestamp_subsec_nanos() > 0 {
            whole.saturating_add(1)
        } else {
            whole
        };
        DateTime::from_timestamp(rounded, 0).unwrap_or(until)
    }

    /// How close to its end a needed object's lock is extended: half the
    /// retention, so that a maintenance run at least every half period
    /// keeps every needed object locked without a gap.
    pub fn extension_margin(&self) -> TimeDelta {
        TimeDelta::from_std(self.retention / 2).unwrap_or(TimeDelta::MAX)
    }
}

/// What maintenance does with one object of a locked repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAction {
    /// Needed, and its lock ends within the margin: extend it to this date.
    Extend(DateTime<Utc>),
    /// Needed, and locked long enough.
    Keep,
    /// Not needed, but locked until then: wait.
    WaitUntil(DateTime<Utc>),
    /// Not needed and no longer locked: delete it.
    Delete,
}

/// The one eligibility rule shared by lock extension and deletion
/// (garbage collection, retention): an object is extended **only while a
/// kept snapshot needs it**, and deleted only once nothing needs it and its
/// lock has passed. Because nothing unneeded is ever extended, every lock
/// on garbage runs out and the repository cannot grow without bound.
pub fn lock_action(
    lock: &ObjectLock,
    needed: bool,
    retain_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> LockAction {
    if needed {
        let horizon = now
            .checked_add_signed(lock.extension_margin())
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        return match retain_until {
            Some(until) if until > horizon => LockAction::Keep,
            _ => LockAction::Extend(lock.retain_until(now)),
        };
    }
    match retain_until {
        Some(until) if until > now => LockAction::WaitUntil(until),
        _ => LockAction::Delete,
    }
}

impl TryFrom<&coffer_proto::v1::ObjectLockSettings> for ObjectLock {
    type Error = StoreError;

    /// The lock a lease asks for; a lease naming no mode or no positive
    /// retention is refused rather than writing unlocked data.
    fn try_from(settings: &coffer_proto::v1::ObjectLockSettings) -> Result<Self, StoreError> {
        use coffer_proto::v1::ObjectLockMode as Mode;
        let mode = match Mode::try_from(settings.mode) {
            Ok(Mode::Governance) => LockMode::Governance,
            Ok(Mode::Compliance) => LockMode::Compliance,
            _ => {
                return Err(StoreError::Config(
                    "the lease requires Object Lock without a known mode".into(),
                ))
            }
        };
        let retention = settings
            .min_retention
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                StoreError::Config("the lease requires Object Lock without a retention".into())
            })?;
        Ok(ObjectLock { mode, retention })
    }
}

fn to_smithy(time: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(time.timestamp())
}

fn from_smithy(time: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}

impl From<LockMode> for ObjectLockMode {
    fn from(mode: LockMode) -> Self {
        match mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        }
    }
}

impl From<LockMode> for ObjectLockRetentionMode {
    fn from(mode: LockMode) -> Self {
        match mode {
            LockMode::Governance => ObjectLockRetentionMode::Governance,
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        }
    }
}

/// One version of an object: a data version or a delete marker.
struct Version {
    key: String,
    id: String,
    delete_marker: bool,
}

impl S3Store {
    /// The lock mode and retain-until date for an object written now, when
    /// the store writes with a lock.
    pub(super) fn lock_for_write(
        &self,
    ) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let lock = self.object_lock()?;
        Some((lock.mode.into(), to_smithy(lock.retain_until(Utc::now()))))
    }

    /// Checks that the bucket has Object Lock enabled
    /// (GetObjectLockConfiguration); a bucket without it fails clearly
    /// rather than taking writes that anyone could delete.
    pub async fn check_object_lock(&self, cancel: &CancellationToken) -> Result<(), StoreError> {
        let bucket = &self.location().bucket;
        let request = self
            .client()
            .get_object_lock_configuration()
            .bucket(bucket)
            .send();
        let not_enabled = || {
            StoreError::Config(format!(
                "bucket {bucket:?} requires Object Lock, but Object Lock is not enabled on it \
                 (create the bucket with Object Lock enabled)"
            ))
        };
        let answer = cancellable(cancel, async { Ok(request.await) }).await?;
        match answer {
            Ok(output) => {
                let enabled = output
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(not_enabled())
                }
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(not_enabled())
            }
            Err(e) => Err(s3_error("GetObjectLockConfiguration", bucket, e)),
        }
    }

    /// The retain-until date of the current version of `key`; `None` when
    /// it has none; [`StoreError::NotFound`] when the key does not exist.
    pub(super) async fn retain_until(
        &self,
        key: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let full_key = self.full_key(key);
        let request = self
            .client()
            .head_object()
            .bucket(&self.location().bucket)
            .key(&full_key)
            .send();
        match request.await {
            Ok(head) => Ok(head.object_lock_retain_until_date().and_then(from_smithy)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                Err(StoreError::NotFound { key: key.into() })
            }
            Err(e) => Err(s3_error("HeadObject", &full_key, e)),
        }
    }

    /// Sets the retain-until date of the current version of `key` to
    /// `until` (PutObjectRetention, in the store's mode). Only ever moves
    /// a lock later: S3 refuses to shorten a compliance lock, and Coffer
    /// never asks to.
    pub(super) async fn extend_lock(
        &self,
        key: &str,
        until: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let Some(lock) = self.object_lock() else {
            return Err(StoreError::Config(
                "extending a lock on a store without Object Lock".into(),
            ));
        };
        let full_key = self.full_key(key);
        let retention = ObjectLockRetention::builder()
            .mode(lock.mode.into())
            .retain_until_date(to_smithy(until))
            .build();
        let request = self
            .client()
            .put_object_retention()
            .bucket(&self.location().bucket)
            .key(&full_key)
            .retention(retention)
            .send();
        send(cancel, "PutObjectRetention", &full_key, request).await?;
        Ok(())
    }

    /// Every version and delete marker of every key starting with
    /// `full_prefix` (full keys, with the repository prefix).
    async fn list_versions(
        &self,
        full_prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<Version>, StoreError> {
        let mut versions = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let request = self
                .client()
                .list_object_versions()
                .bucket(&self.location().bucket)
                .prefix(full_prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send();
            let page = send(cancel, "ListObjectVersions", full_prefix, request).await?;
            let data = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id(), false));
            let markers = page
                .delete_markers()
                .iter()
                .map(|m| (m.key(), m.version_id(), true));
            versions.extend(data.chain(markers).filter_map(|(key, id, delete_marker)| {
                Some(Version {
                    key: key?.to_owned(),
                    id: id?.to_owned(),
                    delete_marker,
                })
            }));
            if !page.is_truncated().unwrap_or(false) {
                return Ok(versions);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(versions);
            }
        }
    }

    /// Deletes every version of `key`, data first and delete markers last,
    /// so that a locked version stops the deletion while the object is
    /// still visible. A locked version fails with [`StoreError::Locked`].
    pub(super) async fn delete_versions(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let full_key = self.full_key(key);
        let mut versions = self.list_versions(&full_key, cancel).await?;
        versions.retain(|v| v.key == full_key);
        versions.sort_by_key(|v| v.delete_marker);
        for version in versions {
            let request = self
                .client()
                .delete_object()
                .bucket(&self.location().bucket)
                .key(&full_key)
                .version_id(&version.id)
                .send();
            let answer = cancellable(cancel, async { Ok(request.await) }).await?;
            match answer {
                Ok(_) => {}
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                    let until = self.version_retain_until(&full_key, &version.id).await;
                    return Err(StoreError::Locked {
                        key: key.into(),
                        until: until.ok().flatten(),
                    });
                }
                Err(e) => return Err(s3_error("DeleteObject", &full_key, e)),
            }
        }
        Ok(())
    }

    async fn version_retain_until(
        &self,
        full_key: &str,
        version_id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let head = self
            .client()
            .head_object()
            .bucket(&self.location().bucket)
            .key(full_key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", full_key, e))?;
        Ok(head.object_lock_retain_until_date().and_then(from_smithy))
    }

    /// How many versions (data and delete markers) of keys below the
    /// repository exist: what the bucket really holds, hidden or not.
    pub async fn count_versions(&self, cancel: &CancellationToken) -> Result<usize, StoreError> {
        Ok(self.list_versions(&self.full_key(""), cancel).await?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    fn day_lock() -> ObjectLock {
        ObjectLock {
            mode: LockMode::Compliance,
            retention: 24 * HOUR,
        }
    }

    #[test]
    fn a_needed_object_is_extended_only_within_the_margin() {
        let lock = day_lock();
        let now = at(0);
        // Twenty hours left: more than half the retention.
        assert_eq!(
            lock_action(&lock, true, Some(at(20 * 3600)), now),
            LockAction::Keep
        );
        // Two hours left, or no lock at all: extended to a full period.
        assert_eq!(
            lock_action(&lock, true, Some(at(2 * 3600)), now),
            LockAction::Extend(at(24 * 3600))
        );
        assert_eq!(
            lock_action(&lock, true, None, now),
            LockAction::Extend(at(24 * 3600))
        );
    }

    #[test]
    fn an_unneeded_object_is_never_extended_and_deleted_after_its_lock() {
        let lock = day_lock();
        let now = at(0);
        assert_eq!(
            lock_action(&lock, false, Some(at(60)), now),
            LockAction::WaitUntil(at(60))
        );
        assert_eq!(
            lock_action(&lock, false, Some(at(0)), now),
            LockAction::Delete
        );
        assert_eq!(lock_action(&lock, false, None, now), LockAction::Delete);
    }

    #[test]
    fn retain_until_rounds_up_to_the_second() {
        let lock = ObjectLock {
            mode: LockMode::Governance,
            retention: Duration::from_secs(10),
        };
        let now = at(0) + TimeDelta::milliseconds(250);
        assert_eq!(lock.retain_until(now), at(11));
        assert_eq!(lock.retain_until(at(0)), at(10));
    }
}
