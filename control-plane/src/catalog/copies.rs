//! Snapshot copies: where a snapshot exists besides its own repository.
//! A row is written by the transaction that records its copy run's success
//! (`Catalog::finish_attempt`), so only a copy whose manifest is stored is
//! ever listed or read from.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{from_json, on_read_pool, to_json, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::run::{CopySpec, Run, Target};

/// A committed copy of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCopy {
    /// Id of the copy.
    pub id: Uuid,
    /// The snapshot (backup run) copied.
    pub snapshot_run_id: Uuid,
    /// Where the copy lives.
    pub target: Target,
    /// The repository there.
    pub repository_id: Uuid,
    /// The copy run that made it.
    pub copy_run_id: Uuid,
    /// Storage key of the copy's manifest.
    pub manifest_key: String,
    /// When it was committed.
    pub create_time: DateTime<Utc>,
}

type CopyRow = (Uuid, Uuid, String, Uuid, Uuid, String, DateTime<Utc>);

impl SnapshotCopy {
    fn from_row(row: CopyRow) -> DomainResult<Self> {
        let (id, snapshot_run_id, target, repository_id, copy_run_id, manifest_key, create_time) =
            row;
        Ok(SnapshotCopy {
            id,
            snapshot_run_id,
            target: from_json(&target, "snapshot_copies.target")?,
            repository_id,
            copy_run_id,
            manifest_key,
            create_time,
        })
    }
}

/// What a succeeded copy run records, in the transaction of its success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyCommit {
    /// The snapshot copied.
    pub snapshot_run_id: Uuid,
    /// The repository it was copied into (the run's own).
    pub repository_id: Uuid,
    /// The run's target, as JSON.
    pub target_json: String,
}

impl CopyCommit {
    /// The record of the copy run `run` (spec `copy`), whose lease resolved
    /// its repository.
    pub fn of_run(run: &Run, copy: &CopySpec) -> DomainResult<Self> {
        let repository_id = run.repository_id.ok_or_else(|| {
            DomainError::Internal(format!(
                "copy run {} succeeded without a recorded repository",
                run.id
            ))
        })?;
        Ok(CopyCommit {
            snapshot_run_id: copy.snapshot.run_id,
            repository_id,
            target_json: to_json(&copy.target),
        })
    }
}

const SELECT_COPIES: &str = "SELECT id, snapshot_run_id, target, repository_id, copy_run_id, \
     manifest_key, create_time FROM snapshot_copies";

impl Catalog {
    /// The copies of a snapshot, oldest first.
    pub async fn list_snapshot_copies(
        &self,
        snapshot_run_id: Uuid,
    ) -> DomainResult<Vec<SnapshotCopy>> {
        let sql = format!("{SELECT_COPIES} WHERE snapshot_run_id = $1 ORDER BY create_time, id");
        let rows: Vec<CopyRow> = on_read_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(snapshot_run_id)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| from_sqlx(e, "snapshot copies"))?;
        rows.into_iter().map(SnapshotCopy::from_row).collect()
    }

    /// The copy of a snapshot in one repository, if there is one.
    pub async fn snapshot_copy_in(
        &self,
        snapshot_run_id: Uuid,
        repository_id: Uuid,
    ) -> DomainResult<Option<SnapshotCopy>> {
        let sql = format!("{SELECT_COPIES} WHERE snapshot_run_id = $1 AND repository_id = $2");
        let row: Option<CopyRow> = on_read_pool!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(snapshot_run_id)
                .bind(repository_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| from_sqlx(e, "snapshot copy"))?;
        row.map(SnapshotCopy::from_row).transpose()
    }
}
