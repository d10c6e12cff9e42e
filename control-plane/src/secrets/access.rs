//! Who may use which S3 credentials against which endpoint: the one set of
//! rules applied when a bucket is written and again when a lease is built
//! (owners, secrets and the endpoint policy may all have changed between).

use coffer_proto::v1 as pb;
use uuid::Uuid;

use super::Keyring;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::{check_credentials_source, Bucket, S3Location};
use crate::model::configuration::{S3_ENDPOINT_ALLOW, S3_ENDPOINT_DENY};
use crate::model::endpoint::EndpointPolicy;
use crate::model::secret::{Passphrase, SecretKind};

/// The endpoint policy in force.
pub async fn endpoint_policy(catalog: &Catalog) -> DomainResult<EndpointPolicy> {
    let allow = catalog.configuration_value(S3_ENDPOINT_ALLOW).await?;
    let deny = catalog.configuration_value(S3_ENDPOINT_DENY).await?;
    Ok(EndpointPolicy::from_config(
        allow.as_deref(),
        deny.as_deref(),
    ))
}

/// Checks that a bucket of `owner` may use `s3`: its credentials source
/// (a secret of the same owner, or the worker's own for admins) and its
/// endpoint. `prefix` starts the field names in errors (`bucket.s3.`).
/// A secret that does not exist and one of another owner get the same
/// `PermissionDenied`.
pub async fn check_s3_access(
    catalog: &Catalog,
    prefix: &str,
    owner: Uuid,
    owner_is_admin: bool,
    s3: &S3Location,
) -> DomainResult<()> {
    check_credentials_source(prefix, s3, owner_is_admin)?;
    if let Some(secret) = s3.secret_id {
        if !catalog
            .secret_owned_by(secret, owner, SecretKind::S3)
            .await?
        {
            return Err(DomainError::PermissionDenied(format!(
                "{prefix}secret_id: the bucket's owner has no S3 credentials secret {secret}"
            )));
        }
    }
    endpoint_policy(catalog)
        .await?
        .check(&s3.endpoint, owner_is_admin)
        .map_err(|reason| {
            DomainError::PermissionDenied(format!("{prefix}endpoint: refused: {reason}"))
        })
}

/// Fills the credentials of a resolved S3 bucket of `owner` for a lease,
/// after checking the access rules again: the decrypted secret (the
/// `maintenance_secret` instead when given: a maintenance run's
/// delete-capable keys), or the control plane's word that an admin's bucket
/// may use the worker's own. Errors say what to fix and never contain a
/// secret value.
pub async fn lease_credentials(
    catalog: &Catalog,
    keyring: &Keyring,
    owner: Uuid,
    s3: &S3Location,
    maintenance_secret: Option<Uuid>,
    resolved: &mut pb::ResolvedBucket,
) -> DomainResult<()> {
    let owner_is_admin = match catalog.get_user(owner).await {
        Ok(user) => user.admin,
        Err(DomainError::NotFound(_)) => false,
        Err(other) => return Err(other),
    };
    let refused = |error: DomainError| {
        DomainError::FailedPrecondition(format!(
            "bucket {} may not be used as configured: {error}",
            resolved.id
        ))
    };
    check_s3_access(catalog, "s3.", owner, owner_is_admin, s3)
        .await
        .map_err(refused)?;
    if let Some(secret) = maintenance_secret {
        if !catalog
            .secret_owned_by(secret, owner, SecretKind::S3)
            .await?
        {
            return Err(refused(DomainError::PermissionDenied(format!(
                "maintenance_secret_id: the bucket's owner has no S3 credentials secret {secret}"
            ))));
        }
    }
    let Some(secret) = maintenance_secret.or(s3.secret_id) else {
        resolved.use_worker_credentials = true;
        resolved.credentials_ref.clone_from(&s3.credentials_ref);
        return Ok(());
    };
    let (secret_owner, sealed) = catalog.sealed_secret(secret).await?;
    let values = keyring.open(secret, secret_owner, &sealed)?;
    resolved.credentials = Some(pb::LeasedS3Credentials {
        access_key_id: values.access_key_id.clone(),
        secret_access_key: values.secret_access_key.clone(),
        session_token: values.session_token.clone(),
    });
    Ok(())
}

/// The passphrase of a bucket's passphrase secret, decrypted for a lease,
/// after checking again that the secret is a passphrase of the bucket's
/// owner (owners and secrets may have changed since the bucket was
/// written). Errors never contain the passphrase.
pub async fn lease_passphrase(
    catalog: &Catalog,
    keyring: &Keyring,
    bucket: &Bucket,
) -> DomainResult<Option<Passphrase>> {
    let Some(secret) = bucket.spec.passphrase_secret_id else {
        return Ok(None);
    };
    let context = format!(
        "bucket {} may not be used as configured: passphrase_secret_id",
        bucket.id
    );
    owner_passphrase(catalog, keyring, bucket.spec.owner_id, secret, &context)
        .await
        .map(Some)
}

/// The passphrase of secret `secret`, decrypted for a lease, after checking
/// that it is a passphrase secret of `owner`; `context` leads the error
/// otherwise. Errors never contain the passphrase.
pub async fn owner_passphrase(
    catalog: &Catalog,
    keyring: &Keyring,
    owner: Uuid,
    secret: Uuid,
    context: &str,
) -> DomainResult<Passphrase> {
    if !catalog
        .secret_owned_by(secret, owner, SecretKind::Passphrase)
        .await?
    {
        return Err(DomainError::FailedPrecondition(format!(
            "{context}: the owner has no passphrase secret {secret}"
        )));
    }
    let (secret_owner, sealed) = catalog
        .sealed_secret_of(secret, SecretKind::Passphrase)
        .await?;
    keyring.open_passphrase(secret, secret_owner, &sealed)
}
