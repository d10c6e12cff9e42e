//! Admission of key-slot runs: who may change which repository's key
//! slots, with which passphrase secrets, and the refusals the catalog can
//! decide before any worker looks at storage (the last slot, the last
//! catalog slot, a slot the repository does not have). The worker checks
//! storage again: the catalog's slot list is what the last run reported,
//! not a source of keys.

use uuid::Uuid;

use crate::auth::Caller;
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::RepositoryEncryption;
use crate::model::key_slot::KeySlotKind;
use crate::model::run::{KeySlotOperation, KeySlotsSpec, NewRun, RunKind, RunSpec, Target};
use crate::model::secret::SecretKind;

/// The run `spec` asks for, owned by the repository's owner, after every
/// check that needs only the catalog.
pub async fn admit(catalog: &Catalog, caller: &Caller, spec: KeySlotsSpec) -> DomainResult<NewRun> {
    if let Target::Bucket { bucket_id, .. } = &spec.target {
        // Another tenant's bucket does not exist for the caller.
        catalog.get_bucket(*bucket_id, caller.owner_scope()).await?;
    }
    let repository = catalog
        .find_repository(&spec.target.repository())
        .await?
        .ok_or_else(|| {
            DomainError::FailedPrecondition(
                "key_slots.target: no repository there yet (a first backup creates it)".into(),
            )
        })?;
    let owner = repository.owner_id.unwrap_or(caller.user.id);
    if !caller.can_access(owner) {
        return Err(DomainError::PermissionDenied(
            "key_slots.target: the repository there belongs to another user".into(),
        ));
    }
    if repository.encryption()? != Some(RepositoryEncryption::Aes256Gcm) {
        return Err(DomainError::FailedPrecondition(
            "key_slots.target: the repository is not encrypted (format v1, or v2 with \
             encryption NONE): it has no key slots"
                .into(),
        ));
    }
    if repository.pinned_generation().is_none() {
        return Err(DomainError::FailedPrecondition(
            "key_slots.target: the repository has no pinned key generation yet (its first \
             backup has not finished)"
                .into(),
        ));
    }
    if let Some(running) = catalog
        .active_run_of_kind(repository.id, RunKind::KeySlots)
        .await?
    {
        return Err(DomainError::FailedPrecondition(format!(
            "key-slot run {running} of this repository is still queued or running"
        )));
    }
    let secrets = spec
        .passphrase_secret_id
        .iter()
        .map(|id| ("key_slots.passphrase_secret_id".to_owned(), *id))
        .chain(
            spec.keep_passphrase_secret_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (format!("key_slots.keep_passphrase_secret_ids[{i}]"), *id)),
        );
    for (field, secret) in secrets {
        check_passphrase_secret(catalog, owner, &field, secret).await?;
    }
    if let (KeySlotOperation::Remove, Some(slot_id)) = (spec.operation, &spec.slot_id) {
        check_removal(catalog, repository.id, slot_id).await?;
    }
    Ok(NewRun {
        owner_id: owner,
        job_id: None,
        spec: RunSpec::KeySlots(spec),
        max_attempts: catalog.run_default_max_attempts().await?,
        request_id: None,
    })
}

/// A secret that does not exist and one of another owner, or of another
/// kind, are refused alike.
async fn check_passphrase_secret(
    catalog: &Catalog,
    owner: Uuid,
    field: &str,
    secret: Uuid,
) -> DomainResult<()> {
    if catalog
        .secret_owned_by(secret, owner, SecretKind::Passphrase)
        .await?
    {
        return Ok(());
    }
    Err(DomainError::PermissionDenied(format!(
        "{field}: the repository's owner has no passphrase secret {secret}"
    )))
}

/// Refuses removing a slot the repository does not have (as last
/// reported), its last slot, or its last catalog slot (scheduled runs open
/// the repository through it).
async fn check_removal(catalog: &Catalog, repository_id: Uuid, slot_id: &str) -> DomainResult<()> {
    let slots = catalog.repository_key_slots(repository_id).await?;
    let Some(removed) = slots.iter().find(|record| record.slot.slot_id == slot_id) else {
        return Err(DomainError::FailedPrecondition(format!(
            "key_slots.slot_id: the repository has no key slot {slot_id} (see the bucket's \
             key_slots)"
        )));
    };
    if slots.len() == 1 {
        return Err(DomainError::FailedPrecondition(format!(
            "key_slots.slot_id: {slot_id} is the repository's last key slot; removing it would \
             leave nothing that opens the repository"
        )));
    }
    let catalog_slots = slots
        .iter()
        .filter(|record| record.slot.kind == KeySlotKind::Catalog)
        .count();
    if removed.slot.kind == KeySlotKind::Catalog && catalog_slots == 1 {
        return Err(DomainError::FailedPrecondition(format!(
            "key_slots.slot_id: {slot_id} is the repository's only catalog slot; scheduled runs \
             open the repository through it"
        )));
    }
    Ok(())
}
