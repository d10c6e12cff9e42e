//! Creating repositories in the catalog with their format, and the keys a
//! lease carries to open them. A repository is created on first use in
//! format v2 with its bucket's encryption (an ad-hoc filesystem target has
//! no bucket and is encrypted); an encrypted one gets a random catalog key,
//! stored only sealed under the control plane's secrets key and bound to
//! the repository's id.

use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::catalog::repositories::{NewRepositoryFormat, Repository};
use crate::catalog::Catalog;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::RepositoryEncryption;
use crate::model::run::Target;
use crate::secrets::{Keyring, HOW_TO_CONFIGURE};

/// Length of a repository's catalog key.
pub const CATALOG_KEY_LEN: usize = 32;

/// The repository `target` names, created owned by `owner_id` on first use.
pub async fn ensure_repository(
    catalog: &Catalog,
    secrets: &Keyring,
    target: &Target,
    owner_id: Uuid,
) -> DomainResult<Repository> {
    let encryption = match target {
        Target::Bucket { bucket_id, .. } => {
            catalog.get_bucket(*bucket_id, None).await?.spec.encryption
        }
        Target::Filesystem { .. } | Target::Nfs { .. } => RepositoryEncryption::default(),
    };
    catalog
        .ensure_repository(&target.repository(), owner_id, |id| {
            new_format(secrets, id, encryption)
        })
        .await
}

fn new_format(
    secrets: &Keyring,
    id: Uuid,
    encryption: RepositoryEncryption,
) -> DomainResult<NewRepositoryFormat> {
    if encryption == RepositoryEncryption::None {
        return Ok(NewRepositoryFormat {
            encryption,
            catalog_key: None,
        });
    }
    if !secrets.is_configured() {
        return Err(DomainError::FailedPrecondition(format!(
            "a new repository is encrypted, and its key is kept sealed under the control \
             plane's secrets key, which is not configured: {HOW_TO_CONFIGURE} (or use a bucket \
             created with encryption NONE)"
        )));
    }
    let mut key = Zeroizing::new([0u8; CATALOG_KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    Ok(NewRepositoryFormat {
        encryption,
        catalog_key: Some(secrets.seal_catalog_key(id, key.as_ref())?),
    })
}

/// The catalog key of an encrypted v2 repository, opened for a lease;
/// `None` for a v1 or unencrypted repository.
pub fn open_catalog_key(
    secrets: &Keyring,
    repository: &Repository,
) -> DomainResult<Option<Zeroizing<Vec<u8>>>> {
    if repository.encryption()? != Some(RepositoryEncryption::Aes256Gcm) {
        return Ok(None);
    }
    let sealed = repository.sealed_catalog_key().ok_or_else(|| {
        DomainError::Internal(format!(
            "encrypted repository {} has no catalog key",
            repository.id
        ))
    })?;
    let key = secrets.open_catalog_key(repository.id, &sealed)?;
    if key.len() != CATALOG_KEY_LEN {
        return Err(DomainError::Internal(format!(
            "the catalog key of repository {} is not {CATALOG_KEY_LEN} bytes",
            repository.id
        )));
    }
    Ok(Some(key))
}
