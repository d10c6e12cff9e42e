//! ConfigurationService.

use coffer_proto::v1 as pb;
use coffer_proto::v1::configuration_service_server::ConfigurationService;
use tonic::Request;

use super::{unimplemented, AppState, RpcResult};

/// Handler of `coffer.v1.ConfigurationService`.
#[derive(Clone, Debug)]
pub struct ConfigurationApi {
    #[allow(dead_code)]
    state: AppState,
}

impl ConfigurationApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        ConfigurationApi { state }
    }
}

#[tonic::async_trait]
impl ConfigurationService for ConfigurationApi {
    async fn create_configuration(
        &self,
        _request: Request<pb::CreateConfigurationRequest>,
    ) -> RpcResult<pb::CreateConfigurationResponse> {
        unimplemented("ConfigurationService.CreateConfiguration")
    }

    async fn get_configuration(
        &self,
        _request: Request<pb::GetConfigurationRequest>,
    ) -> RpcResult<pb::GetConfigurationResponse> {
        unimplemented("ConfigurationService.GetConfiguration")
    }

    async fn list_configurations(
        &self,
        _request: Request<pb::ListConfigurationsRequest>,
    ) -> RpcResult<pb::ListConfigurationsResponse> {
        unimplemented("ConfigurationService.ListConfigurations")
    }

    async fn update_configuration(
        &self,
        _request: Request<pb::UpdateConfigurationRequest>,
    ) -> RpcResult<pb::UpdateConfigurationResponse> {
        unimplemented("ConfigurationService.UpdateConfiguration")
    }

    async fn delete_configuration(
        &self,
        _request: Request<pb::DeleteConfigurationRequest>,
    ) -> RpcResult<pb::DeleteConfigurationResponse> {
        unimplemented("ConfigurationService.DeleteConfiguration")
    }
}
