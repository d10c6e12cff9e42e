//! BackupMetadataService: size, duration and details of backups.

use coffer_proto::v1 as pb;
use coffer_proto::v1::backup_metadata_service_server::BackupMetadataService;
use tonic::Request;
use uuid::Uuid;

use super::convert::{required, timestamp};
use super::jobs::set_checked;
use super::{mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::metadata::automatic_is_read_only;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::metadata::{
    check_details, check_duration, check_size, BackupMetadata, MetadataFilter, MetadataSource,
    MetadataValues, NewBackupMetadata,
};
use crate::model::{parse_id, parse_optional_id};
use crate::state::AppState;

/// Fields UpdateBackupMetadata accepts in its mask.
const UPDATABLE: &[&str] = &["size_bytes", "duration_seconds", "details"];

/// Handler of `coffer.v1.BackupMetadataService`.
#[derive(Clone, Debug)]
pub struct BackupMetadataApi {
    state: AppState,
}

impl BackupMetadataApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        BackupMetadataApi { state }
    }
}

fn source_to_proto(source: MetadataSource) -> pb::MetadataSource {
    match source {
        MetadataSource::Automatic => pb::MetadataSource::Automatic,
        MetadataSource::Manual => pb::MetadataSource::Manual,
    }
}

fn source_from_proto(value: i32) -> DomainResult<Option<MetadataSource>> {
    match pb::MetadataSource::try_from(value) {
        Ok(pb::MetadataSource::Unspecified) => Ok(None),
        Ok(pb::MetadataSource::Automatic) => Ok(Some(MetadataSource::Automatic)),
        Ok(pb::MetadataSource::Manual) => Ok(Some(MetadataSource::Manual)),
        Err(_) => Err(DomainError::invalid("source", "unknown metadata source")),
    }
}

impl From<BackupMetadata> for pb::BackupMetadata {
    fn from(record: BackupMetadata) -> Self {
        pb::BackupMetadata {
            id: record.id.to_string(),
            job_id: record.job_id.map(|id| id.to_string()).unwrap_or_default(),
            run_id: record.run_id.map(|id| id.to_string()).unwrap_or_default(),
            size_bytes: record.values.size_bytes,
            duration_seconds: record.values.duration_seconds,
            details: record.values.details,
            source: source_to_proto(record.source) as i32,
            owner_id: record.owner_id.to_string(),
            create_time: Some(timestamp(record.create_time)),
            update_time: Some(timestamp(record.update_time)),
        }
    }
}

/// The ids a new record refers to, after the local checks.
struct References {
    job_id: Option<Uuid>,
    run_id: Option<Uuid>,
}

/// Parses and checks the fields of a new record, reporting all violations at once.
fn parse_new(record: &pb::BackupMetadata) -> DomainResult<(References, MetadataValues)> {
    let mut violations = Violations::new();
    let job_id = violations.absorb(parse_optional_id("backup_metadata.job_id", &record.job_id));
    let run_id = violations.absorb(parse_optional_id("backup_metadata.run_id", &record.run_id));
    if record.job_id.is_empty() && record.run_id.is_empty() {
        violations.add(
            "backup_metadata.job_id",
            "either job_id or run_id is required",
        );
    }
    let values = MetadataValues {
        size_bytes: record.size_bytes,
        duration_seconds: record.duration_seconds,
        details: record.details.clone(),
    };
    violations.absorb(values.validate("backup_metadata."));
    violations.finish()?;
    let references = References {
        job_id: job_id.flatten(),
        run_id: run_id.flatten(),
    };
    Ok((references, values))
}

/// Applies the masked fields of `record` to `values`, reporting all violations at once.
fn apply_mask(
    mut values: MetadataValues,
    record: &pb::BackupMetadata,
    paths: &[String],
) -> DomainResult<MetadataValues> {
    let mut v = Violations::new();
    for path in paths {
        match path.as_str() {
            "size_bytes" => set_checked(
                &mut values.size_bytes,
                record.size_bytes,
                check_size("backup_metadata.size_bytes", record.size_bytes),
                &mut v,
            ),
            "duration_seconds" => set_checked(
                &mut values.duration_seconds,
                record.duration_seconds,
                check_duration("backup_metadata.duration_seconds", record.duration_seconds),
                &mut v,
            ),
            "details" => set_checked(
                &mut values.details,
                record.details.clone(),
                check_details("backup_metadata.details", &record.details),
                &mut v,
            ),
            _ => {}
        }
    }
    v.finish()?;
    Ok(values)
}

impl BackupMetadataApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// A record the caller may see; foreign records are NOT_FOUND.
    async fn visible(&self, caller: &Caller, id: Uuid) -> DomainResult<BackupMetadata> {
        let record = self.state.catalog.get_backup_metadata(id).await?;
        if !caller.can_access(record.owner_id) {
            return Err(DomainError::not_found("backup metadata", id));
        }
        Ok(record)
    }

    /// Resolves the job, run and owner of a new record: the run's job when a
    /// run is named (it must match a given job), else the job's owner.
    async fn resolve(
        &self,
        caller: &Caller,
        references: References,
    ) -> DomainResult<(Uuid, Option<Uuid>, Option<Uuid>)> {
        if let Some(run_id) = references.run_id {
            let run = match self.state.catalog.get_run(run_id).await {
                Ok(run) if caller.can_access(run.owner_id) => run,
                Ok(_) | Err(DomainError::NotFound(_)) => {
                    return Err(DomainError::not_found("run", run_id))
                }
                Err(other) => return Err(other),
            };
            if references.job_id.is_some() && references.job_id != run.job_id {
                return Err(DomainError::invalid(
                    "backup_metadata.run_id",
                    "the run does not belong to backup_metadata.job_id",
                ));
            }
            return Ok((run.owner_id, run.job_id, Some(run_id)));
        }
        let job_id = references
            .job_id
            .ok_or_else(|| DomainError::invalid("backup_metadata.job_id", "is required"))?;
        match self.state.catalog.owner_of_job(job_id).await? {
            Some(owner) if caller.can_access(owner) => Ok((owner, Some(job_id), None)),
            _ => Err(DomainError::not_found("job", job_id)),
        }
    }

    async fn create(
        &self,
        caller: &Caller,
        record: pb::BackupMetadata,
    ) -> DomainResult<BackupMetadata> {
        let (references, values) = parse_new(&record)?;
        let (owner_id, job_id, run_id) = self.resolve(caller, references).await?;
        let new = NewBackupMetadata {
            owner_id,
            job_id,
            run_id,
            values,
            source: MetadataSource::Manual,
        };
        self.state.catalog.create_backup_metadata(&new).await
    }

    async fn update(
        &self,
        caller: &Caller,
        request: pb::UpdateBackupMetadataRequest,
    ) -> DomainResult<BackupMetadata> {
        let record = required("backup_metadata", request.backup_metadata)?;
        let id = parse_id("backup_metadata.id", &record.id)?;
        let paths = mask_paths(request.update_mask, UPDATABLE)?;
        let existing = self.visible(caller, id).await?;
        if existing.source == MetadataSource::Automatic {
            return Err(automatic_is_read_only(id));
        }
        let values = apply_mask(existing.values, &record, &paths)?;
        self.state.catalog.update_backup_metadata(id, &values).await
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListBackupMetadataRequest,
    ) -> DomainResult<pb::ListBackupMetadataResponse> {
        let filter = MetadataFilter {
            job_id: parse_optional_id("job_id", &request.job_id)?,
            run_id: parse_optional_id("run_id", &request.run_id)?,
            source: source_from_proto(request.source)?,
        };
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (records, next_page_token) = self
            .state
            .catalog
            .list_backup_metadata(caller.owner_scope(), &filter, page)
            .await?;
        Ok(pb::ListBackupMetadataResponse {
            backup_metadata: records.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl BackupMetadataService for BackupMetadataApi {
    async fn create_backup_metadata(
        &self,
        request: Request<pb::CreateBackupMetadataRequest>,
    ) -> RpcResult<pb::CreateBackupMetadataResponse> {
        let caller = self.caller(&request).await?;
        let record = required("backup_metadata", request.into_inner().backup_metadata)?;
        let record = self.create(&caller, record).await?;
        respond(Ok(pb::CreateBackupMetadataResponse {
            backup_metadata: Some(record.into()),
        }))
    }

    async fn get_backup_metadata(
        &self,
        request: Request<pb::GetBackupMetadataRequest>,
    ) -> RpcResult<pb::GetBackupMetadataResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let record = self.visible(&caller, id).await?;
        respond(Ok(pb::GetBackupMetadataResponse {
            backup_metadata: Some(record.into()),
        }))
    }

    async fn list_backup_metadata(
        &self,
        request: Request<pb::ListBackupMetadataRequest>,
    ) -> RpcResult<pb::ListBackupMetadataResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn update_backup_metadata(
        &self,
        request: Request<pb::UpdateBackupMetadataRequest>,
    ) -> RpcResult<pb::UpdateBackupMetadataResponse> {
        let caller = self.caller(&request).await?;
        let record = self.update(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateBackupMetadataResponse {
            backup_metadata: Some(record.into()),
        }))
    }

    async fn delete_backup_metadata(
        &self,
        request: Request<pb::DeleteBackupMetadataRequest>,
    ) -> RpcResult<pb::DeleteBackupMetadataResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.visible(&caller, id).await?;
        self.state.catalog.delete_backup_metadata(id).await?;
        respond(Ok(pb::DeleteBackupMetadataResponse {}))
    }
}
