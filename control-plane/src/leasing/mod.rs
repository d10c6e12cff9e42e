//! Leasing runs to workers: the control-plane side of `WorkerService/LeaseSession`.
//!
//! Each worker session is one task (see `session.rs`) that owns the stream
//! and fences every write the worker makes on its lease token. One
//! coordinator per replica (`dispatch.rs`) leases queued runs to the
//! sessions whose workers have credit. A background reaper (`run_reaper`)
//! ends leases whose TTL or deadline passed, by the catalog's clock. The
//! coordinator learns about new runs, and sessions about cancellations,
//! from [`Catalog::subscribe_runs`].

pub mod dispatch;
pub mod key_slots;
pub mod object_lock;
pub mod session;
pub mod settings;
pub mod waiting;

use std::time::Duration;

use coffer_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::api::convert::target_to_proto;
use crate::catalog::leases::{Candidate, LeaseSettings};
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::Location;
use crate::model::run::{RunSpec, Target};
use crate::model::worker_class::{self, WorkerClass};
use crate::secrets::{access::lease_credentials, Keyring};

/// Longest pause between two reaper passes, so that a TTL shortened in the
/// configuration is enforced soon even after a pass under a long one.
const MAX_REAPER_PERIOD: Duration = Duration::from_secs(5);

/// Ends expired leases, and fails queued runs past the queue timeout, every
/// third of a TTL (at most every [`MAX_REAPER_PERIOD`]) until `cancel` fires;
/// the TTL and backoff are the ones in effect at each pass (`base`
/// overridden by the configuration, see [`settings::current`]).
pub async fn run_reaper(catalog: Catalog, base: LeaseSettings, cancel: CancellationToken) {
    loop {
        let settings = settings::current(&catalog, base).await;
        let period = (settings.ttl / 3).clamp(Duration::from_millis(200), MAX_REAPER_PERIOD);
        match catalog.expire_leases(&settings).await {
            Ok(changed) => {
                for id in changed {
                    tracing::info!(run = %id, "lease ended without completion; run requeued, failed or cancelled");
                    crate::monitoring::attempt_ended(&catalog, id, true).await;
                }
            }
            Err(error) => tracing::warn!(%error, "lease reaper could not scan the catalog"),
        }
        if let Err(error) = waiting::fail_overdue_runs(&catalog, settings.ttl).await {
            tracing::warn!(%error, "lease reaper could not apply the queue timeout");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// The replica through which a candidate must be leased, if it names one:
/// a download, whose caller waits on that replica for the bytes.
pub fn required_replica(candidate: &Candidate) -> Option<uuid::Uuid> {
    // Only a download's spec names a replica; the others are not parsed.
    if !candidate.spec.starts_with("{\"Download\"") {
        return None;
    }
    match serde_json::from_str::<RunSpec>(&candidate.spec) {
        Ok(RunSpec::Download(download)) => Some(download.replica),
        _ => None,
    }
}

/// What a worker announced about itself, used to decide which runs it may take.
#[derive(Clone, Debug, Default)]
pub struct WorkerProfile {
    /// Labels matched against run selectors.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Source roots it may read (empty: any).
    pub source_roots: Vec<String>,
    /// Which runs it takes: a backup worker none that delete.
    pub class: WorkerClass,
}

impl WorkerProfile {
    /// Whether this worker may run the candidate: every selector label
    /// matches, its class runs the candidate's kind, and the local path it
    /// touches (a backup's source, a restore's destination) lies under one
    /// of the worker's roots.
    pub fn accepts(&self, candidate: &Candidate) -> bool {
        self.labels_match(candidate) && self.class_takes(candidate) && self.roots_contain(candidate)
    }

    /// Whether every selector label of the candidate matches.
    fn labels_match(&self, candidate: &Candidate) -> bool {
        candidate
            .worker_selector
            .iter()
            .all(|(key, value)| self.labels.get(key) == Some(value))
    }

    /// Whether the worker's class runs the candidate's kind (a backup
    /// worker no retention or garbage collection).
    pub fn class_takes(&self, candidate: &Candidate) -> bool {
        if self.class != WorkerClass::Backup {
            return true;
        }
        // A spec that does not parse is not leased to an append-only worker.
        serde_json::from_str::<RunSpec>(&candidate.spec)
            .is_ok_and(|spec| worker_class::runs(self.class, spec.kind()))
    }

    /// Whether the local path the candidate touches lies under a root.
    fn roots_contain(&self, candidate: &Candidate) -> bool {
        if self.source_roots.is_empty() {
            return true;
        }
        let Ok(spec) = serde_json::from_str::<RunSpec>(&candidate.spec) else {
            return true;
        };
        let Some(path) = spec.local_path() else {
            return true;
        };
        self.source_roots
            .iter()
            .any(|root| path_is_under(path, root))
    }
}

/// Whether `path` is `root` or below it, comparing whole components.
pub fn path_is_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return true;
    }
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Looks up everything a worker needs to reach a run's target.
pub async fn resolve_target(
    catalog: &Catalog,
    keyring: &Keyring,
    spec: &RunSpec,
) -> DomainResult<pb::ResolvedTarget> {
    resolve(catalog, keyring, spec.target(), spec.kind().deletes()).await
}

/// Looks up everything a worker needs to reach `target`, including the
/// bucket's credentials: decrypted from its secret, for this lease only, or
/// (admins' buckets) the word that the worker may use its own. A run that
/// deletes (`maintenance`) gets the bucket's maintenance secret when it has
/// one; every other run only the write credentials.
pub async fn resolve(
    catalog: &Catalog,
    keyring: &Keyring,
    target: &Target,
    maintenance: bool,
) -> DomainResult<pb::ResolvedTarget> {
    let target_proto = target_to_proto(target);
    let mut resolved = pb::ResolvedTarget {
        target: Some(target_proto),
        ..Default::default()
    };
    match target {
        Target::Filesystem { path } => resolved.filesystem_path = path.clone(),
        Target::Nfs { path } => {
            let root = catalog
                .configuration_value("nfs_mount_path")
                .await?
                .ok_or_else(|| {
                    DomainError::FailedPrecondition(
                        "configuration nfs_mount_path is not set".to_string(),
                    )
                })?;
            resolved.filesystem_path = join_path(&root, path);
        }
        Target::Bucket { bucket_id, prefix } => {
            let bucket = catalog.get_bucket(*bucket_id, None).await?;
            let repository_prefix = join_key(&bucket.spec.prefix, prefix);
            let mut resolved_bucket = pb::ResolvedBucket {
                id: bucket.id.to_string(),
                prefix: repository_prefix.clone(),
                ..Default::default()
            };
            match &bucket.spec.location {
                Location::S3(s3) => {
                    resolved_bucket.endpoint = s3.endpoint.clone();
                    resolved_bucket.bucket = s3.bucket.clone();
                    resolved_bucket.region = s3.region.clone();
                    resolved_bucket.force_path_style = s3.force_path_style;
                    resolved_bucket.pack_storage_class = s3.pack_storage_class.clone();
                    let maintenance_secret =
                        bucket.spec.maintenance_secret_id.filter(|_| maintenance);
                    lease_credentials(
                        catalog,
                        keyring,
                        bucket.spec.owner_id,
                        s3,
                        maintenance_secret,
                        &mut resolved_bucket,
                    )
                    .await?;
                }
                Location::Filesystem { path } => {
                    resolved_bucket.filesystem_path = path.clone();
                    resolved.filesystem_path = join_path(path, &repository_prefix);
                }
            }
            resolved.bucket = Some(resolved_bucket);
        }
    }
    Ok(resolved)
}

fn join_path(root: &str, relative: &str) -> String {
    let relative = relative.trim_matches('/');
    if relative.is_empty() {
        root.to_string()
    } else {
        format!("{}/{}", root.trim_end_matches('/'), relative)
    }
}

fn join_key(left: &str, right: &str) -> String {
    let left = left.trim_matches('/');
    let right = right.trim_matches('/');
    match (left.is_empty(), right.is_empty()) {
        (true, _) => right.to_string(),
        (_, true) => left.to_string(),
        _ => format!("{left}/{right}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_compared_by_component() {
        assert!(path_is_under("/data/src", "/data"));
        assert!(path_is_under("/data", "/data/"));
        assert!(!path_is_under("/database", "/data"));
        assert!(path_is_under("/anything", "/"));
    }

    #[test]
    fn keys_join_without_double_slashes() {
        assert_eq!(join_key("", "daily"), "daily");
        assert_eq!(join_key("repo/", "/daily"), "repo/daily");
        assert_eq!(join_key("repo", ""), "repo");
        assert_eq!(join_path("/mnt/nfs/", "user1/x"), "/mnt/nfs/user1/x");
    }
}
