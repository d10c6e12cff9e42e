//! Changing who can open an encrypted repository: adding a passphrase slot,
//! and rotating to a new key generation sealed only to the slots this run
//! can vouch for (removing a slot is a rotation that leaves it out, then
//! its deletion).
//!
//! A rotation never trusts the list of slots in storage: anyone who can
//! write there can plant a slot of their own, and sealing the new
//! generation to it would hand them every later backup. So each slot kept
//! must open, here, with the catalog's key or with one of the passphrases
//! the lease carries (the bucket's and those the caller named); any other
//! slot but the removed one fails the run, naming it. The new generation
//! is pinned by the catalog when the run completes; until then every
//! writer keeps using the pinned one (see `access::fetch_keys`), so a
//! rotation cut short leaves only unused keyring objects, which the next
//! key-slot run deletes before it rotates again.

use std::sync::Arc;

use chrono::Utc;
use coffer_format::crypto::{unlock_slot, Argon2Params, KeySlot, SlotId, SlotKind, SlotSecret};
use coffer_format::layout::{self, KEYRING_PREFIX};
use coffer_format::{Encryption, FormatError, RepositoryKeys};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::access::{self, KeySlotSummary, PinnedGeneration, RepositoryAccess};
use super::{Repository, RepositoryError};
use crate::store::{Store, StoreError};

/// What a key-slot run changes.
pub enum SlotChange {
    /// A new passphrase slot holding every generation the catalog's holds.
    Add {
        /// Its passphrase.
        passphrase: Zeroizing<String>,
    },
    /// A new generation sealed to every slot that opens with the catalog's
    /// key or one of `kept_passphrases`, leaving `removed` out and then
    /// deleting it.
    Rotate {
        /// The slot removed, if any.
        removed: Option<SlotId>,
        /// Passphrases whose slots are kept.
        kept_passphrases: Vec<Zeroizing<String>>,
    },
}

/// What a key-slot change did.
#[derive(Debug)]
pub struct SlotChangeOutcome {
    /// Human-readable summary.
    pub details: String,
    /// The new generation, after a rotation: the catalog pins it.
    pub generation: Option<PinnedGeneration>,
    /// The slots in storage afterwards.
    pub key_slots: Vec<KeySlotSummary>,
}

/// Runs `change` on the repository in `store`, opened as `access` allows.
pub async fn change_key_slots(
    store: Arc<Store>,
    access: &RepositoryAccess,
    change: SlotChange,
    cancel: &CancellationToken,
) -> Result<SlotChangeOutcome, RepositoryError> {
    let repository = Repository::open(Arc::clone(&store), access, cancel).await?;
    let keys = repository
        .keys()
        .filter(|keys| keys.encryption() == Encryption::Aes256Gcm)
        .cloned()
        .ok_or_else(|| {
            RepositoryError::refused(
                &store,
                "the repository is not encrypted: it has no key slots",
            )
        })?;
    let catalog_key = access
        .catalog_key
        .clone()
        .ok_or_else(|| RepositoryError::refused(&store, "the lease carries no catalog key"))?;
    let (details, generation) = match change {
        SlotChange::Add { passphrase } => (add(&store, keys, passphrase, cancel).await?, None),
        SlotChange::Rotate {
            removed,
            kept_passphrases,
        } => {
            let (slots, _) = access::fetch_keys(&store, access.pinned.as_ref(), cancel).await?;
            let recipients =
                blocking(move || recipients(&slots, removed, &catalog_key, &kept_passphrases))
                    .await??;
            let (details, generation) = rotate(&store, &keys, &recipients, cancel).await?;
            let details = match removed {
                Some(slot) => format!("{details}; {}", remove(&store, slot, cancel).await?),
                None => details,
            };
            (details, Some(generation))
        }
    };
    let pinned = generation.clone().or_else(|| repository.generation());
    let (slots, keyring) = access::fetch_keys(&store, pinned.as_ref(), cancel).await?;
    Ok(SlotChangeOutcome {
        details,
        generation,
        key_slots: access::summarize_slots(&slots, &keyring),
    })
}

/// Runs Argon2id-heavy work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RepositoryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RepositoryError::format("key slots", FormatError::InvalidInput(e.to_string())))
}

async fn add(
    store: &Store,
    keys: Arc<RepositoryKeys>,
    passphrase: Zeroizing<String>,
    cancel: &CancellationToken,
) -> Result<String, RepositoryError> {
    let (slot, objects) = blocking(move || {
        keys.add_slot(
            SlotSecret::Passphrase(&passphrase, Argon2Params::DEFAULT),
            Utc::now(),
            &mut rand::rngs::OsRng,
        )
    })
    .await?
    .map_err(|e| RepositoryError::format("adding a key slot", e))?;
    // The keyring objects first, the slot last (as `add_slot` orders them):
    // a slot without them would open nothing.
    for (key, bytes) in objects {
        store.put_bytes(&key, bytes, cancel).await?;
    }
    Ok(format!("added passphrase key slot {slot}"))
}

/// The slots a rotation seals to: every slot but `removed`, each of which
/// must open here (see the module's comment); at least one catalog slot.
fn recipients(
    slots: &[KeySlot],
    removed: Option<SlotId>,
    catalog_key: &[u8; 32],
    kept_passphrases: &[Zeroizing<String>],
) -> Result<Vec<KeySlot>, RepositoryError> {
    let refused = |reason: String| RepositoryError::Format {
        context: "choosing the key slots to keep".into(),
        source: FormatError::KeyRejected(reason),
    };
    let mut kept = Vec::new();
    for slot in slots.iter().filter(|slot| Some(slot.id()) != removed) {
        let one = std::slice::from_ref(slot);
        let opens = match slot.kind() {
            SlotKind::Catalog => unlock_slot(one, SlotSecret::Catalog(catalog_key)).is_ok(),
            SlotKind::Passphrase => kept_passphrases.iter().any(|passphrase| {
                unlock_slot(
                    one,
                    SlotSecret::Passphrase(passphrase, Argon2Params::DEFAULT),
                )
                .is_ok()
            }),
        };
        if !opens {
            return Err(refused(format!(
                "key slot {} opens with neither the catalog's key nor a kept passphrase: name \
                 its passphrase secret in keep_passphrase_secret_ids, or remove the slot",
                slot.id()
            )));
        }
        kept.push(slot.clone());
    }
    if !kept.iter().any(|slot| slot.kind() == SlotKind::Catalog) {
        return Err(refused(
            "no catalog key slot would remain: scheduled runs open the repository through one"
                .into(),
        ));
    }
    Ok(kept)
}

/// Deletes keyring objects above the current generation (an unfinished
/// rotation's, or planted ones), then writes generation current + 1 for
/// `recipients`. Returns the summary and the new generation.
async fn rotate(
    store: &Store,
    keys: &RepositoryKeys,
    recipients: &[KeySlot],
    cancel: &CancellationToken,
) -> Result<(String, PinnedGeneration), RepositoryError> {
    let current = keys.current().generation();
    let mut stale = 0usize;
    for key in store.list(KEYRING_PREFIX, cancel).await? {
        if layout::parse_keyring_key(&key).is_some_and(|(generation, _)| generation > current) {
            store.delete(&key, cancel).await?;
            stale += 1;
        }
    }
    let (next, objects) = keys
        .rotate(recipients, Utc::now(), &mut rand::rngs::OsRng)
        .map_err(|e| RepositoryError::format("rotating the keys", e))?;
    for (key, bytes) in objects {
        store.put_bytes(&key, bytes, cancel).await?;
    }
    let generation = PinnedGeneration {
        generation: next.current().generation(),
        fingerprint: next.current().fingerprint(),
    };
    let mut details = format!(
        "rotated to key generation {} for {} key slots",
        generation.generation,
        recipients.len()
    );
    if stale > 0 {
        details.push_str(&format!(
            " (deleted {stale} keyring objects of an unpinned generation)"
        ));
    }
    Ok((details, generation))
}

/// Deletes slot `slot` and its keyring objects. Under Object Lock an object
/// still locked stays until its lock ends: the rotation already revoked the
/// slot for new data, so this is said, not failed.
async fn remove(
    store: &Store,
    slot: SlotId,
    cancel: &CancellationToken,
) -> Result<String, RepositoryError> {
    let mut keys = vec![layout::slot_key(slot)];
    keys.extend(
        store
            .list(KEYRING_PREFIX, cancel)
            .await?
            .into_iter()
            .filter(|key| layout::parse_keyring_key(key).is_some_and(|(_, id)| id == slot)),
    );
    let mut locked = 0usize;
    for key in &keys {
        match store.delete(key, cancel).await {
            Ok(()) => {}
            Err(StoreError::Locked { .. }) => locked += 1,
            Err(other) => return Err(other.into()),
        }
    }
    Ok(match locked {
        0 => format!("removed key slot {slot}"),
        locked => format!(
            "removed key slot {slot} from the new generation; {locked} of its objects stay \
             until their Object Lock ends"
        ),
    })
}
