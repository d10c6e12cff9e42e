//! Snapshot commits in two phases, so that committing a snapshot of a
//! million files neither holds the catalog for minutes nor loads the tree
//! into memory.
//!
//! 1. **Plan**, a batch at a time and mostly while the worker is still
//!    sending batches: the paths of the batch are looked up in the
//!    repository, [`crate::model::snapshot::plan::plan_snapshot`] decides
//!    every write, and the decisions are stored as `snapshot_commit_rows`
//!    under a commit key. Nothing here is visible through the API. A full snapshot adds, when it completes, a
//!    deletion marker for every current object it does not name (one
//!    anti-join, paged).
//! 2. **Apply**, in the transaction that marks the run succeeded: three
//!    set-based statements copy the plan into `objects` and
//!    `object_versions`, so readers see the whole snapshot or nothing.
//!
//! A plan is only valid against the repository state it read. Every apply
//! bumps the `(repository id, job)` counter in `repository_commits`; a plan
//! records the counter it started from and is applied only while the
//! counter still reads that value. A stale plan is made again from the
//! staged batches (see `Catalog::commit_attempt`).
//!
//! The rooms: `staging` takes a worker's batches (the one place the
//! catalog decodes the worker's protobuf records), `plan` turns them into
//! plan rows, `apply` copies a plan into the catalog, `completion` ends
//! a backup or rebuild attempt with its snapshot, `removal` takes
//! snapshots out again (retention), and `queries` reads them.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::DomainError;
use crate::model::object::SnapshotCommit;
use crate::model::run::{Run, RunSpec};

pub(crate) mod apply;
pub(crate) mod completion;
pub(crate) mod diff;
pub(crate) mod plan;
pub(crate) mod queries;
pub(crate) mod removal;
pub(crate) mod staging;

/// How many times a snapshot is planned before giving up on a repository
/// that keeps changing under it.
pub(crate) const PLAN_ATTEMPTS: usize = 5;

/// One lock per repository and job, taken from a commit's last planning to
/// its apply. Commits of one control plane then never invalidate each
/// other's plans; the generation check still guards against other replicas.
#[derive(Debug, Default)]
pub(crate) struct CommitLocks {
    locks: std::sync::Mutex<HashMap<RepositoryJob, Arc<tokio::sync::Mutex<()>>>>,
}

/// A repository id and a job key, as `repository_commits` keys them.
type RepositoryJob = (Uuid, String);

/// Where a snapshot goes: the run, and the repository and job its objects
/// are keyed by.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotScope {
    pub(crate) run_id: Uuid,
    pub(crate) owner_id: Uuid,
    pub(crate) bucket_id: Option<Uuid>,
    pub(crate) repository_id: Uuid,
    pub(crate) job_id: Option<Uuid>,
}

impl SnapshotScope {
    pub(crate) fn of_commit(commit: &SnapshotCommit) -> Self {
        SnapshotScope {
            run_id: commit.run_id,
            owner_id: commit.owner_id,
            bucket_id: commit.bucket_id,
            repository_id: commit.repository_id,
            job_id: commit.job_id,
        }
    }

    /// Where a backup run's snapshot goes: `None` for other runs, and for a
    /// run whose repository was never resolved (it was never leased).
    pub(crate) fn of_run(run: &Run) -> Option<Self> {
        let RunSpec::Backup(backup) = &run.spec else {
            return None;
        };
        Some(SnapshotScope {
            run_id: run.id,
            owner_id: run.owner_id,
            bucket_id: backup.target.bucket_id(),
            repository_id: run.repository_id?,
            job_id: run.job_id,
        })
    }

    /// The job as `repository_commits` keys it ('' for ad-hoc runs).
    pub(crate) fn job_key(&self) -> String {
        self.job_id.map(|id| id.to_string()).unwrap_or_default()
    }
}

/// The commit key of the plan made while a lease's batches arrive.
pub(crate) fn lease_commit_key(run_id: Uuid, lease_token: i64) -> String {
    format!("{run_id}/{lease_token}")
}

/// The commit key of a plan made in one go (a lease's re-plan, or with
/// `lease_token` 0 a rebuilt or directly applied snapshot).
pub(crate) fn fresh_commit_key(run_id: Uuid, lease_token: i64) -> String {
    format!("{run_id}/{lease_token}/{}", Uuid::new_v4().simple())
}

/// Where the deletion markers of a full snapshot's plan `key` are kept:
/// apart from the rows the worker's records planned, so that a completion
/// retried after a crash can tell the two apart.
pub(crate) fn deletions_key(key: &str) -> String {
    format!("{key}/deletions")
}

/// Maps a unique-key violation while storing or applying a plan to the
/// error it means: a path named twice by one snapshot.
pub(crate) fn duplicate_path(error: DomainError) -> DomainError {
    match error {
        DomainError::AlreadyExists(_) => {
            DomainError::invalid("entries.path", "a path appears twice in the snapshot")
        }
        other => other,
    }
}
