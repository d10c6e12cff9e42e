//! The worker's own check of every local path a run touches.
//!
//! The control plane checks a run's paths against its owner's grants when
//! the run is created and sends the grants that allowed them with the
//! assignment. The worker does not take that on trust: before any I/O it
//! checks, with [`check_path_grant`], that the path is normalised, that a
//! grant for exactly that path and use came with the assignment and its
//! root contains the path, that the path lies beneath one of the worker's
//! own roots for that use (`--source-roots`, `--restore-roots`,
//! `--repository-roots`), and that it is not inside a protected path (the
//! control plane's and the worker's own state). A protected path *inside*
//! the run's path is not a refusal: the run skips it (see
//! [`AllowedPath::skip`]).

use std::path::{Path, PathBuf};

use coffer_proto::v1::{GrantUse, PathGrant};

use super::{is_within, normalise, relative_to, PathError};

/// What a run uses a local path for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUse {
    /// Read as a backup source.
    BackupSource,
    /// Written by a restore.
    RestoreDestination,
    /// Holds a filesystem or NFS repository.
    Repository,
}

impl PathUse {
    /// The request field the path came from, for errors.
    pub fn field(self) -> &'static str {
        match self {
            PathUse::BackupSource => "source_path",
            PathUse::RestoreDestination => "destination_path",
            PathUse::Repository => "target.filesystem_path",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PathUse::BackupSource => "backup source",
            PathUse::RestoreDestination => "restore destination",
            PathUse::Repository => "repository",
        }
    }

    /// Grant uses that allow this use, the more permissive first.
    fn grant_uses(self) -> &'static [GrantUse] {
        match self {
            PathUse::BackupSource => &[GrantUse::BackupSource],
            PathUse::RestoreDestination => {
                &[GrantUse::InPlaceRestore, GrantUse::RestoreDestination]
            }
            PathUse::Repository => &[GrantUse::Repository],
        }
    }
}

/// The worker's own limits on local paths, from its flags. An empty root
/// list allows any path for that use; protected paths are never allowed.
#[derive(Debug, Clone, Default)]
pub struct WorkerRoots {
    /// Roots backups may read.
    pub source: Vec<PathBuf>,
    /// Roots restores may write.
    pub restore: Vec<PathBuf>,
    /// Roots filesystem repositories may live in.
    pub repository: Vec<PathBuf>,
    /// Paths no run reads or writes (state directories, token files).
    pub protected: Vec<PathBuf>,
}

impl WorkerRoots {
    fn roots(&self, path_use: PathUse) -> &[PathBuf] {
        match path_use {
            PathUse::BackupSource => &self.source,
            PathUse::RestoreDestination => &self.restore,
            PathUse::Repository => &self.repository,
        }
    }
}

/// A path a run may use, with what its grant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPath {
    /// The normalised path.
    pub path: PathBuf,
    /// A trusted directory containing `path` (the grant's root or the
    /// worker's root, whichever is deeper): `path` is resolved beneath it
    /// without following symlinks.
    pub anchor: PathBuf,
    /// Protected paths inside `path`, relative to it: never read or written.
    pub skip: Vec<Vec<u8>>,
    /// The grant allows changing modes and owners of existing entries.
    pub in_place: bool,
    /// The grant allows restoring file owners.
    pub restore_ownership: bool,
    /// The grant allows restoring setuid, setgid and sticky bits.
    pub restore_special_bits: bool,
}

/// Why the worker refuses a path. Messages name the request field and the
/// path as sent, never anything read from this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    /// The path is not in its normal spelling.
    #[error("{field} {path:?} is refused: it {error}")]
    Malformed {
        /// The request field.
        field: &'static str,
        /// The path as sent.
        path: String,
        /// What is wrong with it.
        error: PathError,
    },
    /// No grant with the assignment allows the path for this use.
    #[error("{field} {path:?} is refused: no grant for it as a {what} came with the run")]
    NoGrant {
        /// The request field.
        field: &'static str,
        /// The path.
        path: String,
        /// The use.
        what: &'static str,
    },
    /// The path is outside every root this worker has for the use.
    #[error("{field} {path:?} is refused: it is outside this worker's {what} roots")]
    OutsideRoots {
        /// The request field.
        field: &'static str,
        /// The path.
        path: String,
        /// The use.
        what: &'static str,
    },
    /// The path is inside a protected path.
    #[error("{field} {path:?} is refused: it is inside a path this worker protects")]
    Protected {
        /// The request field.
        field: &'static str,
        /// The path.
        path: String,
    },
}

/// Checks `path`, used as `path_use`, against the assignment's `grants` and
/// the worker's `roots` (see the module documentation).
///
/// An assignment without a grant for the path is refused, whatever the
/// worker's own roots allow.
pub fn check_path_grant(
    grants: &[PathGrant],
    roots: &WorkerRoots,
    path: &str,
    path_use: PathUse,
) -> Result<AllowedPath, PathRefusal> {
    let field = path_use.field();
    let normal = normalise(path).map_err(|error| PathRefusal::Malformed {
        field,
        path: path.to_owned(),
        error,
    })?;
    if roots.protected.iter().any(|p| is_within(&normal, p)) {
        return Err(PathRefusal::Protected {
            field,
            path: path.to_owned(),
        });
    }
    let worker_roots = roots.roots(path_use);
    let worker_root = worker_roots
        .iter()
        .filter(|root| is_within(&normal, root))
        .max_by_key(|root| root.as_os_str().len());
    if !worker_roots.is_empty() && worker_root.is_none() {
        return Err(PathRefusal::OutsideRoots {
            field,
            path: path.to_owned(),
            what: path_use.describe(),
        });
    }
    let skip = roots
        .protected
        .iter()
        .filter_map(|protected| relative_to(protected, &normal))
        .collect();
    let (grant, grant_root) =
        find_grant(grants, &normal, path_use).ok_or_else(|| PathRefusal::NoGrant {
            field,
            path: path.to_owned(),
            what: path_use.describe(),
        })?;
    // The deeper of the grant's root and the worker's own root: resolution
    // starts there, so no component above it is looked up.
    let anchor = match worker_root {
        Some(root) if root.as_os_str().len() > grant_root.as_os_str().len() => root.clone(),
        _ => grant_root,
    };
    Ok(AllowedPath {
        path: normal,
        anchor,
        skip,
        in_place: grant.r#use() == GrantUse::InPlaceRestore,
        restore_ownership: grant.restore_ownership,
        restore_special_bits: grant.restore_special_bits,
    })
}

/// The first grant for exactly `path` whose use allows `path_use` (more
/// permissive uses first) and whose normalised root contains the path.
fn find_grant<'a>(
    grants: &'a [PathGrant],
    path: &Path,
    path_use: PathUse,
) -> Option<(&'a PathGrant, PathBuf)> {
    path_use.grant_uses().iter().find_map(|wanted| {
        grants.iter().find_map(|grant| {
            if grant.r#use() != *wanted || normalise(&grant.path).ok()? != path {
                return None;
            }
            let root = normalise(&grant.root).ok()?;
            is_within(path, &root).then_some((grant, root))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(path: &str, root: &str, grant_use: GrantUse) -> PathGrant {
        PathGrant {
            path: path.into(),
            r#use: grant_use as i32,
            root: root.into(),
            grant_id: "g1".into(),
            restore_ownership: false,
            restore_special_bits: false,
        }
    }

    fn roots() -> WorkerRoots {
        WorkerRoots {
            source: vec!["/srv".into()],
            restore: vec!["/restore".into()],
            repository: Vec::new(),
            protected: vec!["/srv/state".into()],
        }
    }

    #[test]
    fn a_path_needs_a_matching_grant_and_a_worker_root() {
        let grants = [grant("/srv/a/b", "/srv/a", GrantUse::BackupSource)];
        let allowed = check_path_grant(&grants, &roots(), "/srv/a/b", PathUse::BackupSource)
            .expect("granted and within the roots");
        assert_eq!(allowed.anchor, PathBuf::from("/srv/a"));
        assert!(!allowed.in_place);
        // Wrong use, other path, root not containing it.
        for (path, path_use) in [
            ("/srv/a/b", PathUse::RestoreDestination),
            ("/srv/a/c", PathUse::BackupSource),
        ] {
            assert!(check_path_grant(&grants, &roots(), path, path_use).is_err());
        }
        let bad_root = [grant("/srv/a/b", "/srv/x", GrantUse::BackupSource)];
        assert!(matches!(
            check_path_grant(&bad_root, &roots(), "/srv/a/b", PathUse::BackupSource),
            Err(PathRefusal::NoGrant { .. })
        ));
    }

    #[test]
    fn the_worker_refuses_a_granted_path_outside_its_roots() {
        let grants = [grant("/etc", "/", GrantUse::BackupSource)];
        assert!(matches!(
            check_path_grant(&grants, &roots(), "/etc", PathUse::BackupSource),
            Err(PathRefusal::OutsideRoots {
                field: "source_path",
                ..
            })
        ));
    }

    #[test]
    fn protected_paths_are_refused_or_skipped() {
        let grants = [
            grant("/srv/state/x", "/srv", GrantUse::BackupSource),
            grant("/srv", "/", GrantUse::BackupSource),
        ];
        assert!(matches!(
            check_path_grant(&grants, &roots(), "/srv/state/x", PathUse::BackupSource),
            Err(PathRefusal::Protected { .. })
        ));
        let allowed = check_path_grant(&grants, &roots(), "/srv", PathUse::BackupSource)
            .expect("the protected path inside is skipped");
        assert_eq!(allowed.skip, vec![b"state".to_vec()]);
    }

    #[test]
    fn unnormalised_paths_are_refused_before_anything_else() {
        let grants = [grant("/srv/a", "/srv", GrantUse::BackupSource)];
        for path in ["/srv/a/../../etc", "/srv//a", "srv/a", "/srv/./a"] {
            assert!(matches!(
                check_path_grant(&grants, &roots(), path, PathUse::BackupSource),
                Err(PathRefusal::Malformed { .. })
            ));
        }
    }

    #[test]
    fn in_place_grants_and_their_permissions_are_passed_on() {
        let mut in_place = grant("/restore/x", "/restore", GrantUse::InPlaceRestore);
        in_place.restore_ownership = true;
        in_place.restore_special_bits = true;
        let allowed = check_path_grant(
            &[in_place],
            &roots(),
            "/restore/x",
            PathUse::RestoreDestination,
        )
        .expect("allowed");
        assert!(allowed.in_place && allowed.restore_ownership && allowed.restore_special_bits);
    }

    #[test]
    fn assignments_without_grants_are_refused_whatever_the_roots() {
        for roots in [roots(), WorkerRoots::default()] {
            let refused = check_path_grant(&[], &roots, "/srv/a", PathUse::BackupSource);
            assert!(
                matches!(refused, Err(PathRefusal::NoGrant { .. })),
                "{refused:?}"
            );
        }
    }
}
