//! Grant checks: every local path a job or run touches must lie beneath a
//! grant of its owner allowing that use. Admission refuses a run no grant
//! covers and widens its worker selector with the grants' labels; the lease
//! session checks again against the leased worker and hands the matched
//! grants to it (`RunAssignment.path_grants`).

use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::Location;
use crate::model::configuration::NFS_MOUNT_PATH;
use crate::model::grant::{match_grants, Grant, GrantUse, GrantedPath, PathNeed};
use crate::model::path::{check_normalised_absolute, join};
use crate::model::run::{Labels, RunSpec, Target};

/// The local directory a target's repository lives in, if it is local (a
/// filesystem or NFS path, or a filesystem bucket); `None` for S3. `field`
/// is the proto path of the target (e.g. `job.target`).
pub async fn local_repository(
    catalog: &Catalog,
    field: &str,
    target: &Target,
) -> DomainResult<Option<PathNeed>> {
    let (field, path) = match target {
        Target::Filesystem { path } => (format!("{field}.filesystem_path"), path.clone()),
        Target::Nfs { path } => {
            let Some(root) = catalog.configuration_value(NFS_MOUNT_PATH).await? else {
                // Admission refuses NFS targets without the mount (`check_nfs`).
                return Ok(None);
            };
            (format!("{field}.nfs_path"), join(&root, path))
        }
        Target::Bucket { bucket_id, prefix } => {
            let bucket = catalog.get_bucket(*bucket_id, None).await?;
            let Location::Filesystem { path } = &bucket.spec.location else {
                return Ok(None);
            };
            let below = [bucket.spec.prefix.as_str(), prefix.as_str()]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            (format!("{field}.bucket.bucket_id"), join(path, &below))
        }
    };
    check_normalised_absolute(&field, &path)?;
    Ok(Some(PathNeed {
        field,
        path,
        uses: vec![GrantUse::Repository],
    }))
}

/// Every local path `spec` touches, with the uses that allow it; `prefix`
/// leads the field names (`job.`, `backup.`, `restore.`...).
///
/// A restore whose destination is the snapshot's own source path is an
/// in-place restore and needs IN_PLACE_RESTORE: it rewrites the very tree
/// the backup read, existing entries included. Any other destination needs
/// RESTORE_DESTINATION, or IN_PLACE_RESTORE, which allows more.
pub async fn path_needs(
    catalog: &Catalog,
    prefix: &str,
    spec: &RunSpec,
) -> DomainResult<Vec<PathNeed>> {
    let mut needs = Vec::with_capacity(2);
    match spec {
        // A backup of command sources alone reads no local path.
        RunSpec::Backup(backup) if backup.source_path.is_empty() => {}
        RunSpec::Backup(backup) | RunSpec::BackupDryRun(backup) => {
            let field = format!("{prefix}source_path");
            check_normalised_absolute(&field, &backup.source_path)?;
            needs.push(PathNeed {
                field,
                path: backup.source_path.clone(),
                uses: vec![GrantUse::BackupSource],
            });
        }
        RunSpec::Restore(restore) => {
            let field = format!("{prefix}destination_path");
            check_normalised_absolute(&field, &restore.destination_path)?;
            let uses = if restore.destination_path == restore.snapshot.source_path {
                vec![GrantUse::InPlaceRestore]
            } else {
                vec![GrantUse::RestoreDestination, GrantUse::InPlaceRestore]
            };
            needs.push(PathNeed {
                field,
                path: restore.destination_path.clone(),
                uses,
            });
        }
        // A copy reads the snapshot's repository (and writes its target,
        // below): both are checked when local.
        RunSpec::Copy(copy) => {
            let field = format!("{prefix}snapshot_run_id");
            if let Some(source) = local_repository(catalog, &field, &copy.snapshot.target).await? {
                needs.push(source);
            }
        }
        RunSpec::Verify(_)
        | RunSpec::Download(_)
        | RunSpec::RebuildCatalog(_)
        | RunSpec::Retention(_)
        | RunSpec::GarbageCollection(_)
        | RunSpec::KeySlots(_) => {}
    }
    let target_field = match spec {
        RunSpec::Backup(_)
        | RunSpec::BackupDryRun(_)
        | RunSpec::RebuildCatalog(_)
        | RunSpec::GarbageCollection(_)
        | RunSpec::Copy(_) => format!("{prefix}target"),
        RunSpec::KeySlots(_) => format!("{prefix}target"),
        _ => format!("{prefix}snapshot_run_id"),
    };
    if let Some(repository) = local_repository(catalog, &target_field, spec.target()).await? {
        needs.push(repository);
    }
    Ok(needs)
}

/// Checks `spec` against the grants of `owner_id` and widens its worker
/// selector with the labels the matched grants require, so that leasing
/// only offers the run to workers the grants cover.
pub async fn admit(
    catalog: &Catalog,
    prefix: &str,
    owner_id: Uuid,
    spec: &mut RunSpec,
) -> DomainResult<Vec<GrantedPath>> {
    let needs = path_needs(catalog, prefix, spec).await?;
    if needs.is_empty() {
        return Ok(Vec::new());
    }
    let grants = catalog.grants_of(owner_id).await?;
    let (granted, widened) = match_grants(&grants, &needs, spec.worker_selector())?;
    if let Some(selector) = spec.worker_selector_mut() {
        *selector = widened;
    }
    Ok(granted)
}

/// The grants that allow a leased run on a worker with `labels`: the
/// owner's grants as they are now (a grant deleted since admission no
/// longer counts), restricted to those whose selector the worker meets.
pub async fn for_worker(
    catalog: &Catalog,
    owner_id: Uuid,
    spec: &RunSpec,
    labels: &Labels,
) -> DomainResult<Vec<GrantedPath>> {
    let needs = path_needs(catalog, "run.spec.", spec).await?;
    if needs.is_empty() {
        return Ok(Vec::new());
    }
    let grants: Vec<Grant> = catalog
        .grants_of(owner_id)
        .await?
        .into_iter()
        .filter(|g| g.admits_worker(labels))
        .collect();
    let (granted, _) = match_grants(&grants, &needs, labels).map_err(|error| match error {
        DomainError::PermissionDenied(message) => DomainError::FailedPrecondition(format!(
            "no grant covers this run on this worker any more: {message}"
        )),
        other => other,
    })?;
    Ok(granted)
}
