//! SecretService: S3 credentials and repository passphrases owned by users,
//! sealed at rest. No handler ever puts a secret value into a response or a
//! log line: the values go from the request straight into [`Keyring::seal`]
//! (or [`Keyring::seal_passphrase`]) and the proto holding them is dropped. A non-admin sees only its own secrets; anything else is
//! reported as not found.

use coffer_proto::v1 as pb;
use coffer_proto::v1::secret_service_server::SecretService;
use tonic::Request;

use super::convert::{required, timestamp};
use super::{respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::secrets::SealedValues;
use crate::catalog::{new_id, Page};
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::secret::{Passphrase, S3CredentialValues, Secret, SecretKind, SecretSpec};
use crate::model::{parse_id, parse_optional_id};
use crate::secrets::Keyring;
use crate::state::AppState;

/// Handler of `coffer.v1.SecretService`.
#[derive(Clone, Debug)]
pub struct SecretApi {
    state: AppState,
}

impl SecretApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        SecretApi { state }
    }
}

impl From<Secret> for pb::Secret {
    fn from(secret: Secret) -> Self {
        pb::Secret {
            id: secret.id.to_string(),
            owner_id: secret.spec.owner_id.to_string(),
            name: secret.spec.name,
            description: secret.spec.description,
            access_key_id_hint: secret.access_key_id_hint,
            has_session_token: secret.has_session_token,
            create_time: Some(timestamp(secret.create_time)),
            update_time: Some(timestamp(secret.update_time)),
            kind: match secret.kind {
                SecretKind::S3 => pb::SecretKind::S3,
                SecretKind::Passphrase => pb::SecretKind::Passphrase,
            }
            .into(),
        }
    }
}

/// The values of a request, validated; taken out of the proto so that
/// they are zeroed when dropped.
fn values_of(field: &str, s3: Option<pb::S3CredentialValues>) -> DomainResult<S3CredentialValues> {
    let s3 = required(field, s3)?;
    let values = S3CredentialValues {
        access_key_id: s3.access_key_id,
        secret_access_key: s3.secret_access_key,
        session_token: s3.session_token,
    };
    values.validate(&format!("{field}."))?;
    Ok(values)
}

/// The values a create or rotate request carries: exactly one of S3
/// credentials and a passphrase, validated.
enum Values {
    S3(S3CredentialValues),
    Passphrase(Passphrase),
}

impl Values {
    fn of(
        s3: Option<pb::S3CredentialValues>,
        passphrase: Option<pb::PassphraseValue>,
    ) -> DomainResult<Self> {
        match (s3, passphrase) {
            (Some(_), Some(_)) => Err(DomainError::invalid(
                "passphrase",
                "s3 and passphrase are alternatives; set exactly one",
            )),
            (None, Some(value)) => Ok(Values::Passphrase(Passphrase::new(
                "passphrase.passphrase",
                value.passphrase,
            )?)),
            (s3, None) => values_of("s3", s3).map(Values::S3),
        }
    }

    fn kind(&self) -> SecretKind {
        match self {
            Values::S3(_) => SecretKind::S3,
            Values::Passphrase(_) => SecretKind::Passphrase,
        }
    }
}

fn seal(
    keyring: &Keyring,
    id: uuid::Uuid,
    owner: uuid::Uuid,
    values: &Values,
) -> DomainResult<SealedValues> {
    Ok(match values {
        Values::S3(values) => SealedValues {
            kind: SecretKind::S3,
            sealed: keyring.seal(id, owner, values)?,
            access_key_id_hint: values.hint(),
            has_session_token: !values.session_token.is_empty(),
        },
        Values::Passphrase(passphrase) => SealedValues {
            kind: SecretKind::Passphrase,
            sealed: keyring.seal_passphrase(id, owner, passphrase)?,
            access_key_id_hint: String::new(),
            has_session_token: false,
        },
    })
}

impl SecretApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        let caller = self.state.auth.caller(request.metadata()).await?;
        self.state.secrets.require()?;
        Ok(caller)
    }

    async fn create(
        &self,
        caller: &Caller,
        request: pb::CreateSecretRequest,
    ) -> DomainResult<Secret> {
        let secret = required("secret", request.secret)?;
        let mut violations = Violations::new();
        let owner = violations
            .absorb(parse_optional_id("secret.owner_id", &secret.owner_id))
            .flatten();
        let spec = SecretSpec {
            owner_id: caller.user.id,
            name: secret.name,
            description: secret.description,
        };
        violations.absorb(spec.validate("secret."));
        let values = violations.absorb(Values::of(request.s3, request.passphrase));
        violations.finish()?;
        let values = values.ok_or_else(|| DomainError::invalid("s3", "is required"))?;
        let spec = SecretSpec {
            owner_id: caller.resolve_owner("secret.owner_id", owner)?,
            ..spec
        };
        if spec.owner_id != caller.user.id {
            match self.state.catalog.get_user(spec.owner_id).await {
                Ok(_) => {}
                Err(DomainError::NotFound(_)) => {
                    return Err(DomainError::invalid("secret.owner_id", "no such user"))
                }
                Err(other) => return Err(other),
            }
        }
        let id = new_id();
        let sealed = seal(&self.state.secrets, id, spec.owner_id, &values)?;
        let created = self.state.catalog.create_secret(id, &spec, &sealed).await?;
        tracing::info!(secret = %created.id, owner = %created.spec.owner_id, "secret created");
        Ok(created)
    }

    async fn rotate(
        &self,
        caller: &Caller,
        request: pb::RotateSecretRequest,
    ) -> DomainResult<Secret> {
        let id = parse_id("id", &request.id)?;
        let values = Values::of(request.s3, request.passphrase)?;
        let current = self
            .state
            .catalog
            .get_secret(id, caller.owner_scope())
            .await?;
        if values.kind() != current.kind {
            let field = match current.kind {
                SecretKind::S3 => "s3",
                SecretKind::Passphrase => "passphrase",
            };
            return Err(DomainError::invalid(
                field,
                format!(
                    "is required: secret {id} is {}, and a rotation keeps the kind",
                    current.kind.describe()
                ),
            ));
        }
        let sealed = seal(&self.state.secrets, id, current.spec.owner_id, &values)?;
        let rotated = self
            .state
            .catalog
            .rotate_secret(id, caller.owner_scope(), &sealed)
            .await?;
        tracing::info!(secret = %id, "secret rotated");
        Ok(rotated)
    }
}

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn create_secret(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> RpcResult<pb::CreateSecretResponse> {
        let caller = self.caller(&request).await?;
        let created = self.create(&caller, request.into_inner()).await?;
        respond(Ok(pb::CreateSecretResponse {
            secret: Some(created.into()),
        }))
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> RpcResult<pb::GetSecretResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let secret = self
            .state
            .catalog
            .get_secret(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetSecretResponse {
            secret: Some(secret.into()),
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> RpcResult<pb::ListSecretsResponse> {
        let caller = self.caller(&request).await?;
        let request = request.into_inner();
        let requested = parse_optional_id("owner_id", &request.owner_id)?;
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (secrets, next_page_token) = self
            .state
            .catalog
            .list_secrets(page, caller.list_owner_filter(requested))
            .await?;
        respond(Ok(pb::ListSecretsResponse {
            secrets: secrets.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> RpcResult<pb::RotateSecretResponse> {
        let caller = self.caller(&request).await?;
        let rotated = self.rotate(&caller, request.into_inner()).await?;
        respond(Ok(pb::RotateSecretResponse {
            secret: Some(rotated.into()),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> RpcResult<pb::DeleteSecretResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_secret(id, caller.owner_scope())
            .await?;
        tracing::info!(secret = %id, "secret deleted");
        respond(Ok(pb::DeleteSecretResponse {}))
    }
}
