//! ConfigurationService: system-wide settings. Everyone authenticated reads;
//! only admins write.

use base64::Engine;
use coffer_proto::v1 as pb;
use coffer_proto::v1::configuration_service_server::ConfigurationService;
use tonic::Request;
use uuid::Uuid;

use super::convert::{required, timestamp};
use super::{mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult};
use crate::model::configuration::{
    check_description, check_value, rule_of, Configuration, ConfigurationPatch, NewConfiguration,
};
use crate::model::parse_id;
use crate::state::AppState;

/// Fields UpdateConfiguration accepts in its mask.
const UPDATABLE: &[&str] = &["value", "description"];

/// Handler of `coffer.v1.ConfigurationService`.
#[derive(Clone, Debug)]
pub struct ConfigurationApi {
    state: AppState,
}

impl ConfigurationApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        ConfigurationApi { state }
    }
}

impl From<Configuration> for pb::Configuration {
    fn from(entry: Configuration) -> Self {
        pb::Configuration {
            id: entry.id.to_string(),
            key: entry.key,
            value: entry.value,
            description: entry.description,
            create_time: Some(timestamp(entry.create_time)),
            update_time: Some(timestamp(entry.update_time)),
        }
    }
}

impl From<pb::Configuration> for NewConfiguration {
    fn from(entry: pb::Configuration) -> Self {
        NewConfiguration {
            key: entry.key,
            value: entry.value,
            description: entry.description,
        }
    }
}

/// Encodes the last key of a page as an opaque page token.
fn key_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Decodes a page token made by [`key_token`]; empty means the first page.
fn parse_key_token(token: &str) -> DomainResult<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| DomainError::invalid("page_token", "not a token from a previous response"))
}

impl ConfigurationApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// Checks that a value naming a retention policy names an existing one.
    async fn check_policy_exists(&self, field: &str, policy: Option<Uuid>) -> DomainResult<()> {
        let Some(id) = policy else { return Ok(()) };
        match self.state.catalog.get_retention_policy(id, None).await {
            Ok(_) => Ok(()),
            Err(DomainError::NotFound(_)) => Err(DomainError::invalid(
                field,
                format!("no retention policy {id} exists"),
            )),
            Err(other) => Err(other),
        }
    }

    async fn create(&self, entry: pb::Configuration) -> DomainResult<Configuration> {
        let new = NewConfiguration::from(entry);
        let policy = new.validate("configuration.")?;
        self.check_policy_exists("configuration.value", policy)
            .await?;
        self.state.catalog.create_configuration(&new).await
    }

    async fn get(&self, request: pb::GetConfigurationRequest) -> DomainResult<Configuration> {
        match (request.id.is_empty(), request.key.is_empty()) {
            (false, _) => {
                let id = parse_id("id", &request.id)?;
                let entry = self.state.catalog.get_configuration(id).await?;
                if !request.key.is_empty() && entry.key != request.key {
                    return Err(DomainError::invalid(
                        "key",
                        "names a different entry than id",
                    ));
                }
                Ok(entry)
            }
            (true, false) => {
                self.state
                    .catalog
                    .get_configuration_by_key(&request.key)
                    .await
            }
            (true, true) => Err(DomainError::invalid("id", "either id or key is required")),
        }
    }

    async fn list(
        &self,
        request: pb::ListConfigurationsRequest,
    ) -> DomainResult<pb::ListConfigurationsResponse> {
        let page = Page::parse(request.page_size, "")?;
        let after = parse_key_token(&request.page_token)?;
        let (entries, more) = self
            .state
            .catalog
            .list_configurations(page, after.as_deref(), &request.key_prefix)
            .await?;
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => key_token(&last.key),
            _ => String::new(),
        };
        Ok(pb::ListConfigurationsResponse {
            configurations: entries.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    async fn update(&self, request: pb::UpdateConfigurationRequest) -> DomainResult<Configuration> {
        let entry = required("configuration", request.configuration)?;
        let id = parse_id("configuration.id", &entry.id)?;
        let paths = mask_paths(request.update_mask, UPDATABLE)?;
        let current = self.state.catalog.get_configuration(id).await?;
        let mut patch = ConfigurationPatch::default();
        for path in &paths {
            match path.as_str() {
                "value" => {
                    let rule = rule_of("configuration.key", &current.key)?;
                    let policy = check_value("configuration.value", rule, &entry.value)?;
                    self.check_policy_exists("configuration.value", policy)
                        .await?;
                    patch.value = Some(entry.value.clone());
                }
                "description" => {
                    check_description("configuration.description", &entry.description)?;
                    patch.description = Some(entry.description.clone());
                }
                _ => unreachable!("mask_paths admits only the paths above"),
            }
        }
        self.state.catalog.update_configuration(id, &patch).await
    }
}

#[tonic::async_trait]
impl ConfigurationService for ConfigurationApi {
    async fn create_configuration(
        &self,
        request: Request<pb::CreateConfigurationRequest>,
    ) -> RpcResult<pb::CreateConfigurationResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("changing configurations")?;
        let entry = required("configuration", request.into_inner().configuration)?;
        let created = self.create(entry).await?;
        respond(Ok(pb::CreateConfigurationResponse {
            configuration: Some(created.into()),
        }))
    }

    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> RpcResult<pb::GetConfigurationResponse> {
        self.caller(&request).await?;
        let entry = self.get(request.into_inner()).await?;
        respond(Ok(pb::GetConfigurationResponse {
            configuration: Some(entry.into()),
        }))
    }

    async fn list_configurations(
        &self,
        request: Request<pb::ListConfigurationsRequest>,
    ) -> RpcResult<pb::ListConfigurationsResponse> {
        self.caller(&request).await?;
        respond(self.list(request.into_inner()).await)
    }

    async fn update_configuration(
        &self,
        request: Request<pb::UpdateConfigurationRequest>,
    ) -> RpcResult<pb::UpdateConfigurationResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("changing configurations")?;
        let updated = self.update(request.into_inner()).await?;
        respond(Ok(pb::UpdateConfigurationResponse {
            configuration: Some(updated.into()),
        }))
    }

    async fn delete_configuration(
        &self,
        request: Request<pb::DeleteConfigurationRequest>,
    ) -> RpcResult<pb::DeleteConfigurationResponse> {
        let caller = self.caller(&request).await?;
        caller.require_admin("changing configurations")?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.catalog.delete_configuration(id).await?;
        respond(Ok(pb::DeleteConfigurationResponse {}))
    }
}
