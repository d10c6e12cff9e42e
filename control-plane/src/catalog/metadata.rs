//! Catalog queries for backup metadata.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{new_id, now_micros, on_pool, Catalog, Page};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::metadata::{
    BackupMetadata, MetadataFilter, MetadataSource, MetadataValues, NewBackupMetadata,
};
use crate::model::run::Run;

const METADATA_COLUMNS: &str = "id, owner_id, job_id, run_id, size_bytes, duration_seconds, \
     details, source, create_time, update_time";

#[derive(sqlx::FromRow)]
struct MetadataRow {
    id: Uuid,
    owner_id: Uuid,
    job_id: Option<Uuid>,
    run_id: Option<Uuid>,
    size_bytes: i64,
    duration_seconds: f64,
    details: String,
    source: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<MetadataRow> for BackupMetadata {
    type Error = DomainError;

    fn try_from(row: MetadataRow) -> DomainResult<Self> {
        Ok(BackupMetadata {
            id: row.id,
            owner_id: row.owner_id,
            job_id: row.job_id,
            run_id: row.run_id,
            values: MetadataValues {
                size_bytes: row.size_bytes,
                duration_seconds: row.duration_seconds,
                details: row.details,
            },
            source: MetadataSource::parse(&row.source)?,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

impl Catalog {
    /// Stores a record.
    pub async fn create_backup_metadata(
        &self,
        new: &NewBackupMetadata,
    ) -> DomainResult<BackupMetadata> {
        let id = new_id();
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO backup_metadata (id, owner_id, job_id, run_id, size_bytes, duration_seconds, \
             details, source, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)")
            .bind(id)
            .bind(new.owner_id)
            .bind(new.job_id)
            .bind(new.run_id)
            .bind(new.values.size_bytes)
            .bind(new.values.duration_seconds)
            .bind(&new.values.details)
            .bind(new.source.as_str())
            .bind(now_micros())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "backup metadata"))?;
        self.get_backup_metadata(id).await
    }

    /// Records the automatic metadata of a finished backup run (called on completion).
    pub async fn record_automatic_metadata(
        &self,
        run: &Run,
        values: MetadataValues,
    ) -> DomainResult<BackupMetadata> {
        self.create_backup_metadata(&NewBackupMetadata {
            owner_id: run.owner_id,
            job_id: run.job_id,
            run_id: Some(run.id),
            values,
            source: MetadataSource::Automatic,
        })
        .await
    }

    /// Returns a record by id.
    pub async fn get_backup_metadata(&self, id: Uuid) -> DomainResult<BackupMetadata> {
        let sql = format!("SELECT {METADATA_COLUMNS} FROM backup_metadata WHERE id = $1");
        let row = on_pool!(self, |pool| sqlx::query_as::<_, MetadataRow>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(|e| from_sqlx(e, "backup metadata"))?
        .ok_or_else(|| DomainError::not_found("backup metadata", id))?;
        BackupMetadata::try_from(row)
    }

    /// Lists records newest first; `owner_id` None means every owner.
    pub async fn list_backup_metadata(
        &self,
        owner_id: Option<Uuid>,
        filter: &MetadataFilter,
        page: Page,
    ) -> DomainResult<(Vec<BackupMetadata>, String)> {
        let sql = format!(
            "SELECT {METADATA_COLUMNS} FROM backup_metadata WHERE ($1 IS NULL OR owner_id = $1) \
             AND ($2 IS NULL OR job_id = $2) AND ($3 IS NULL OR run_id = $3) \
             AND ($4 IS NULL OR source = $4) AND ($5 IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6"
        );
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, MetadataRow>(&sql)
            .bind(owner_id)
            .bind(filter.job_id)
            .bind(filter.run_id)
            .bind(filter.source.map(MetadataSource::as_str))
            .bind(page.after)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "backup metadata"))?;
        page.finish_rows(rows, BackupMetadata::try_from, |record| record.id)
    }

    /// Replaces the values of a manual record; automatic records are
    /// FAILED_PRECONDITION.
    pub async fn update_backup_metadata(
        &self,
        id: Uuid,
        values: &MetadataValues,
    ) -> DomainResult<BackupMetadata> {
        let updated = on_pool!(self, |pool| sqlx::query(
            "UPDATE backup_metadata SET size_bytes = $2, duration_seconds = $3, details = $4, \
             update_time = $5 WHERE id = $1 AND source = 'manual'"
        )
        .bind(id)
        .bind(values.size_bytes)
        .bind(values.duration_seconds)
        .bind(&values.details)
        .bind(now_micros())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "backup metadata"))?;
        if updated == 0 {
            return Err(self.why_unchanged(id).await);
        }
        self.get_backup_metadata(id).await
    }

    /// Deletes a manual record; automatic records are FAILED_PRECONDITION.
    pub async fn delete_backup_metadata(&self, id: Uuid) -> DomainResult<()> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM backup_metadata WHERE id = $1 AND source = 'manual'"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| from_sqlx(e, "backup metadata"))?;
        if deleted == 0 {
            return Err(self.why_unchanged(id).await);
        }
        Ok(())
    }

    /// The error for a record a conditional write did not touch.
    async fn why_unchanged(&self, id: Uuid) -> DomainError {
        match self.get_backup_metadata(id).await {
            Ok(_) => automatic_is_read_only(id),
            Err(error) => error,
        }
    }

    /// The owner of a job, if the job exists.
    pub async fn owner_of_job(&self, id: Uuid) -> DomainResult<Option<Uuid>> {
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(
            "SELECT owner_id FROM jobs WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "job"))
    }
}

/// The refusal to change an automatic record.
pub fn automatic_is_read_only(id: Uuid) -> DomainError {
    DomainError::FailedPrecondition(format!(
        "backup metadata {id} was recorded automatically and cannot be changed or deleted"
    ))
}
