//! What a key-slot run's lease carries beyond the repository's own keys
//! (the passphrases its operation needs), and what its success changes in
//! the catalog (the pinned key generation).

use coffer_proto::v1 as pb;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::run::{KeySlotOperation, KeySlotsSpec, Target};
use crate::secrets::access::owner_passphrase;
use crate::secrets::Keyring;

/// Fills the passphrases of a key-slot run's assignment: the new slot's
/// (add), or those whose slots a rotation keeps (the bucket's and the
/// spec's). Each secret is checked again to be a passphrase of the run's
/// owner: secrets may have changed since admission.
pub async fn assign(
    catalog: &Catalog,
    keyring: &Keyring,
    owner: Uuid,
    spec: &KeySlotsSpec,
    assignment: &mut pb::RunAssignment,
) -> DomainResult<()> {
    let context = "key_slots";
    if spec.operation == KeySlotOperation::Add {
        let secret = spec.passphrase_secret_id.ok_or_else(|| {
            DomainError::Internal("a key-slot ADD run without its passphrase secret".into())
        })?;
        let passphrase = owner_passphrase(catalog, keyring, owner, secret, context).await?;
        assignment.new_slot_passphrase = passphrase.expose().to_owned();
        return Ok(());
    }
    let bucket_secret = match &spec.target {
        Target::Bucket { bucket_id, .. } => {
            catalog
                .get_bucket(*bucket_id, None)
                .await?
                .spec
                .passphrase_secret_id
        }
        Target::Filesystem { .. } | Target::Nfs { .. } => None,
    };
    let mut secrets: Vec<Uuid> = bucket_secret.into_iter().collect();
    for secret in &spec.keep_passphrase_secret_ids {
        if !secrets.contains(secret) {
            secrets.push(*secret);
        }
    }
    for secret in secrets {
        let passphrase = owner_passphrase(catalog, keyring, owner, secret, context).await?;
        assignment
            .kept_slot_passphrases
            .push(passphrase.expose().to_owned());
    }
    Ok(())
}

/// Pins the generation a key-slot run rotated to (an add reports none),
/// from the one before it; an error when the catalog did not take it (the
/// lease moved on, or the pinned generation is not the one the rotation
/// started from).
pub async fn advance_pin(
    catalog: &Catalog,
    repository_id: Uuid,
    (generation, fingerprint): (u32, &str),
    lease: (Uuid, i64),
) -> DomainResult<()> {
    if catalog
        .advance_repository_generation(repository_id, generation, fingerprint, lease)
        .await?
    {
        return Ok(());
    }
    Err(DomainError::FailedPrecondition(format!(
        "generation {generation} does not follow the pinned one, or the lease moved on"
    )))
}
