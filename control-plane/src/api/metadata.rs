//! BackupMetadataService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::backup_metadata_service_server::BackupMetadataService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.BackupMetadataService`.
#[derive(Clone, Debug)]
pub struct BackupMetadataApi {
    #[allow(dead_code)]
    state: AppState,
}

impl BackupMetadataApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        BackupMetadataApi { state }
    }
}

#[tonic::async_trait]
impl BackupMetadataService for BackupMetadataApi {
    async fn create_backup_metadata(
        &self,
        _request: Request<pb::CreateBackupMetadataRequest>,
    ) -> RpcResult<pb::CreateBackupMetadataResponse> {
        unimplemented("BackupMetadataService.CreateBackupMetadata")
    }

    async fn get_backup_metadata(
        &self,
        _request: Request<pb::GetBackupMetadataRequest>,
    ) -> RpcResult<pb::GetBackupMetadataResponse> {
        unimplemented("BackupMetadataService.GetBackupMetadata")
    }

    async fn list_backup_metadata(
        &self,
        _request: Request<pb::ListBackupMetadataRequest>,
    ) -> RpcResult<pb::ListBackupMetadataResponse> {
        unimplemented("BackupMetadataService.ListBackupMetadata")
    }

    async fn update_backup_metadata(
        &self,
        _request: Request<pb::UpdateBackupMetadataRequest>,
    ) -> RpcResult<pb::UpdateBackupMetadataResponse> {
        unimplemented("BackupMetadataService.UpdateBackupMetadata")
    }

    async fn delete_backup_metadata(
        &self,
        _request: Request<pb::DeleteBackupMetadataRequest>,
    ) -> RpcResult<pb::DeleteBackupMetadataResponse> {
        unimplemented("BackupMetadataService.DeleteBackupMetadata")
    }
}
