//! Reading snapshots: the files of one, and which is the latest of a job.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::error::from_sqlx;
use crate::catalog::objects::{after_object, VersionRow, VERSION_COLUMNS};
use crate::catalog::{on_pool, on_read_pool, Catalog, Page};
use crate::error::{DomainError, DomainResult};
use crate::model::object::{ObjectVersion, SnapshotFile};

/// A snapshot a new backup of the same job can be an incremental of.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SnapshotRef {
    /// The snapshot's run.
    pub id: Uuid,
    /// Storage key of its manifest.
    pub manifest_key: String,
}

#[derive(sqlx::FromRow)]
struct SnapshotFileRow {
    #[sqlx(flatten)]
    version: VersionRow,
    path_text: String,
}

/// What scopes a snapshot's files: its run's owner, job and bucket (and
/// the repository two snapshots must share to be compared).
#[derive(sqlx::FromRow)]
pub(super) struct RunScopeRow {
    pub(super) owner_id: Uuid,
    pub(super) job_id: Option<Uuid>,
    pub(super) target_bucket_id: Option<Uuid>,
    pub(super) repository_id: Option<Uuid>,
    state: String,
}

impl Catalog {
    /// Lists the files of the snapshot taken by `run_id`, by `(path_text,
    /// object id)`: the non-deleted versions valid in that run among the
    /// objects of the run's owner, job, bucket and repository. `NotFound` for a run
    /// outside `owner_scope`, `FailedPrecondition` unless it succeeded.
    pub async fn list_snapshot_files(
        &self,
        run_id: Uuid,
        owner_scope: Option<Uuid>,
        path_prefix: &str,
        page: Page,
    ) -> DomainResult<(Vec<SnapshotFile>, String)> {
        let run = self.snapshot_run(run_id, owner_scope).await?;
        let sql = format!(
            "SELECT {VERSION_COLUMNS}, o.path_text FROM object_versions v JOIN objects o ON o.id = v.object_id \
             WHERE o.owner_id = $1 AND ($2 IS NULL OR o.job_id = $2) AND ($3 IS NULL OR o.bucket_id = $3) \
             AND v.first_run_id <= $4 AND (v.last_run_id IS NULL OR v.last_run_id > $4) AND NOT v.deleted \
             AND substr(o.path_text, 1, length($5)) = $5 AND {} \
             AND ($8 IS NULL OR o.repository_id = $8) \
             ORDER BY o.path_text, o.id LIMIT $7",
            after_object(6)
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, SnapshotFileRow>(&sql)
            .bind(run.owner_id)
            .bind(run.job_id)
            .bind(run.target_bucket_id)
            .bind(run_id)
            .bind(path_prefix)
            .bind(page.after)
            .bind(page.limit())
            .bind(run.repository_id)
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "snapshot files"))?;
        let files = rows
            .into_iter()
            .map(|row| {
                Ok(SnapshotFile {
                    path_text: row.path_text,
                    version: ObjectVersion::try_from(row.version)?,
                })
            })
            .collect::<DomainResult<Vec<_>>>()?;
        Ok(page.finish(files, |file| file.version.object_id))
    }

    /// The scope of snapshot `run_id`: `NotFound` outside `owner_scope`,
    /// `FailedPrecondition` unless the run succeeded.
    pub(super) async fn snapshot_run(
        &self,
        run_id: Uuid,
        owner_scope: Option<Uuid>,
    ) -> DomainResult<RunScopeRow> {
        let run = on_read_pool!(self, |pool| sqlx::query_as::<_, RunScopeRow>(
            "SELECT owner_id, job_id, target_bucket_id, repository_id, state FROM runs \
             WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        )
        .bind(run_id)
        .bind(owner_scope)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "run"))?
        .ok_or_else(|| DomainError::not_found("run", run_id))?;
        if run.state != "succeeded" {
            return Err(DomainError::FailedPrecondition(format!(
                "run {run_id} is {}; only a succeeded run is a snapshot",
                run.state
            )));
        }
        Ok(run)
    }

    /// The last committed snapshot of `job_id` (or of ad-hoc runs, when
    /// `None`) in repository `repository_id`: the parent of the next
    /// incremental.
    pub async fn latest_snapshot(
        &self,
        repository_id: Uuid,
        job_id: Option<Uuid>,
    ) -> DomainResult<Option<SnapshotRef>> {
        on_pool!(self, |pool| sqlx::query_as::<_, SnapshotRef>(
            "SELECT id, manifest_key FROM runs \
             WHERE kind = 'backup' AND state = 'succeeded' AND repository_id = $1 \
             AND ((job_id IS NULL AND $2 IS NULL) OR job_id = $2) AND manifest_key <> '' \
             ORDER BY finish_time DESC, id DESC LIMIT 1"
        )
        .bind(repository_id)
        .bind(job_id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "snapshot"))
    }

    /// The newest succeeded backup of `job_id` finished at or before `as_of`.
    pub async fn job_snapshot_as_of(
        &self,
        job_id: Uuid,
        as_of: DateTime<Utc>,
    ) -> DomainResult<Option<Uuid>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM runs WHERE kind = 'backup' AND state = 'succeeded' AND job_id = $1 \
             AND manifest_key <> '' AND finish_time <= $2 ORDER BY finish_time DESC, id DESC LIMIT 1")
            .bind(job_id)
            .bind(as_of)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "snapshot"))
    }
}
