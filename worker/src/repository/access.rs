//! What a lease says about the repository a run works on, and opening or
//! creating the repository in storage accordingly: a v1 repository through
//! its public `config`, a v2 one through its catalog slot with the lease's
//! catalog key, checked against the catalog's identity, encryption and
//! pinned key generation. A catalog rebuild that finds no catalog slot for
//! its key (the catalog was lost) opens the repository with the lease's
//! passphrase instead and adds a catalog slot for the new catalog's key.

use std::fmt;

use chrono::{DateTime, Utc};
use coffer_format::crypto::{
    unlock_slot, Argon2Params, KeySlot, SlotId, SlotKind, SlotSecret, StoredObject,
};
use coffer_format::layout::{self, CONFIG_KEY};
use coffer_format::{
    AnyConfig, Encryption, FormatError, RepositoryConfig, RepositoryConfigV2, RepositoryKeys,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::RepositoryError;
use crate::store::{Store, StoreError};

/// Key-slot and keyring objects fetched at once when opening a repository.
const KEY_FETCH_PARALLELISM: usize = 8;
/// Largest key slot or keyring object read (the format bounds a keyring
/// object to 64 KiB; a slot is 140 bytes).
const MAX_KEY_OBJECT_LEN: usize = 64 << 10;
/// Most key slots a run reports to the catalog.
pub const MAX_REPORTED_SLOTS: usize = 64;
/// Most generations reported per slot.
pub const MAX_REPORTED_GENERATIONS: usize = 1000;

/// A key slot as found in storage, for the catalog to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlotSummary {
    /// The slot's id.
    pub id: SlotId,
    /// What opens it.
    pub kind: SlotKind,
    /// When it was made (as the slot says).
    pub created: DateTime<Utc>,
    /// The generations whose keyring objects are sealed to it, lowest first.
    pub generations: Vec<u32>,
}

/// The key slots among `slots` (parsed) with the generations `keyring`
/// holds for each, bounded for the report.
pub(super) fn summarize_slots(slots: &[KeySlot], keyring: &[StoredObject]) -> Vec<KeySlotSummary> {
    slots
        .iter()
        .take(MAX_REPORTED_SLOTS)
        .map(|slot| {
            let mut generations: Vec<u32> = keyring
                .iter()
                .filter_map(|(key, _)| layout::parse_keyring_key(key))
                .filter(|(_, id)| *id == slot.id())
                .map(|(generation, _)| generation)
                .collect();
            generations.sort_unstable();
            generations.truncate(MAX_REPORTED_GENERATIONS);
            KeySlotSummary {
                id: slot.id(),
                kind: slot.kind(),
                created: slot.created(),
                generations,
            }
        })
        .collect()
}

/// The format a backup creates a missing repository in, as the catalog
/// records it.
#[derive(Clone, PartialEq, Eq)]
pub enum NewFormat {
    /// Format v1 with the catalog's chunk-id key.
    V1 {
        /// The chunk-id key (32 bytes).
        chunk_key: Vec<u8>,
    },
    /// Format v2 with this encryption.
    V2 {
        /// Whether objects are encrypted.
        encryption: Encryption,
    },
}

/// A key generation as the catalog pins it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedGeneration {
    /// The generation number.
    pub generation: u32,
    /// Its public fingerprint.
    pub fingerprint: String,
}

/// The repository a run may use, as its lease describes it.
#[derive(Clone)]
pub struct RepositoryAccess {
    /// The catalog's identity of the repository; empty accepts any v1
    /// repository (callers without a catalog).
    pub repository_id: String,
    /// The format the catalog records: what a missing repository is
    /// created in and what an existing one must be.
    pub format: NewFormat,
    /// The key that opens an encrypted v2 repository's catalog slot.
    pub catalog_key: Option<Zeroizing<[u8; 32]>>,
    /// The generation the catalog pinned, once it has one.
    pub pinned: Option<PinnedGeneration>,
    /// Whether a v1 repository found where the catalog expects v2 may be
    /// used: by runs that read or maintain it (restore, verify, a rebuild
    /// after the catalog was lost), never by a backup, which would write
    /// unencrypted data into a location the catalog expects encrypted.
    pub v1_fallback: bool,
    /// A catalog rebuild (admin only) adopts a v2 repository of another
    /// identity: the catalog then records the identity found in storage.
    /// With a passphrase it may also open the repository through its
    /// passphrase slot and add a catalog slot for `catalog_key`.
    pub adopt: bool,
    /// The passphrase of the bucket's passphrase secret: a new encrypted
    /// repository gets a slot for it; a rebuild opens with it when no
    /// catalog slot opens.
    pub passphrase: Option<Zeroizing<String>>,
}

impl fmt::Debug for RepositoryAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryAccess")
            .field("repository_id", &self.repository_id)
            .field("v2", &matches!(self.format, NewFormat::V2 { .. }))
            .field(
                "catalog_key",
                &self.catalog_key.as_ref().map(|_| "<secret>"),
            )
            .field("pinned", &self.pinned)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<secret>"))
            .finish_non_exhaustive()
    }
}

impl RepositoryAccess {
    /// A v1 repository with `chunk_key` (for a repository created here),
    /// of any identity.
    pub fn v1(chunk_key: Vec<u8>) -> Self {
        RepositoryAccess {
            repository_id: String::new(),
            format: NewFormat::V1 { chunk_key },
            catalog_key: None,
            pinned: None,
            v1_fallback: true,
            adopt: false,
            passphrase: None,
        }
    }

    /// An encrypted v2 repository `repository_id` opened with `catalog_key`.
    pub fn encrypted(repository_id: &str, catalog_key: [u8; 32]) -> Self {
        RepositoryAccess {
            repository_id: repository_id.to_owned(),
            format: NewFormat::V2 {
                encryption: Encryption::Aes256Gcm,
            },
            catalog_key: Some(Zeroizing::new(catalog_key)),
            pinned: None,
            v1_fallback: false,
            adopt: false,
            passphrase: None,
        }
    }

    /// An unencrypted v2 repository `repository_id`.
    pub fn unencrypted(repository_id: &str) -> Self {
        RepositoryAccess {
            repository_id: repository_id.to_owned(),
            format: NewFormat::V2 {
                encryption: Encryption::None,
            },
            catalog_key: None,
            pinned: None,
            v1_fallback: false,
            adopt: false,
            passphrase: None,
        }
    }

    fn expects_v2(&self) -> bool {
        matches!(self.format, NewFormat::V2 { .. })
    }
}

/// What was opened: a v1 config, or a v2 repository's keys and its key
/// slots (none when unencrypted).
pub(super) enum Opened {
    V1(RepositoryConfig),
    V2(RepositoryKeys, Vec<KeySlotSummary>),
}

/// Reads and checks the repository's `config` and, for v2, its keys.
pub(super) async fn open(
    store: &Store,
    access: &RepositoryAccess,
    cancel: &CancellationToken,
) -> Result<Opened, RepositoryError> {
    let bytes = match store.get_bytes(CONFIG_KEY, cancel).await {
        Ok(bytes) => bytes,
        Err(StoreError::NotFound { .. }) => return Err(RepositoryError::Missing(store.describe())),
        Err(other) => return Err(other.into()),
    };
    let config = AnyConfig::from_bytes(&bytes)
        .map_err(|e| RepositoryError::format("reading the repository config", e))?;
    match config {
        AnyConfig::V1(config) => {
            if access.expects_v2() && !access.v1_fallback {
                return Err(RepositoryError::refused(
                    store,
                    "the catalog expects a format v2 repository and storage holds a v1 `config`",
                ));
            }
            let stored = &config.repository_id;
            let id = &access.repository_id;
            if !id.is_empty() && !stored.is_empty() && stored != id {
                return Err(RepositoryError::OtherIdentity(store.describe()));
            }
            Ok(Opened::V1(config))
        }
        AnyConfig::V2(config) => {
            let NewFormat::V2 { encryption } = access.format else {
                return Err(RepositoryError::refused(
                    store,
                    "the catalog records a format v1 repository and storage holds a v2 `config`",
                ));
            };
            let expected_id = if access.adopt {
                &config.repository_id
            } else {
                &access.repository_id
            };
            if config.repository_id != *expected_id {
                return Err(RepositoryError::OtherIdentity(store.describe()));
            }
            config
                .check_expected(expected_id, encryption == Encryption::Aes256Gcm)
                .map_err(|e| RepositoryError::format("checking the repository config", e))?;
            let (keys, slots) = open_keys(store, &config, access, cancel).await?;
            check_pin(store, &keys, access.pinned.as_ref())?;
            Ok(Opened::V2(keys, slots))
        }
    }
}

/// The keys of a v2 repository (the clear generation of an unencrypted
/// one, or what its catalog slot opens) and its key slots.
async fn open_keys(
    store: &Store,
    config: &RepositoryConfigV2,
    access: &RepositoryAccess,
    cancel: &CancellationToken,
) -> Result<(RepositoryKeys, Vec<KeySlotSummary>), RepositoryError> {
    if config.encryption == Encryption::None {
        return config
            .unencrypted_keys()
            .map(|keys| (keys, Vec::new()))
            .map_err(|e| RepositoryError::format("reading the repository config", e));
    }
    let catalog_key = access.catalog_key.as_ref().ok_or_else(|| {
        RepositoryError::refused(
            store,
            "the repository is encrypted and the lease carries no catalog key",
        )
    })?;
    let (mut slots, mut keyring) = fetch_keys(store, access.pinned.as_ref(), cancel).await?;
    let catalog_slots: Vec<&KeySlot> = slots
        .iter()
        .filter(|slot| slot.kind() == SlotKind::Catalog)
        .collect();
    // Every catalog slot the key opens is a candidate: two first backups
    // racing may each have written one. The pinned generation picks; with
    // no pin yet, they must agree.
    let mut candidates: Vec<RepositoryKeys> = Vec::new();
    for slot in catalog_slots {
        let Ok(unlocked) =
            unlock_slot(std::slice::from_ref(slot), SlotSecret::Catalog(catalog_key))
        else {
            continue;
        };
        let keys = RepositoryKeys::open(config, &unlocked, &keyring)
            .map_err(|e| RepositoryError::format(format!("opening key slot {}", slot.key()), e))?;
        candidates.push(keys);
    }
    let keys = match (&access.passphrase, access.adopt && candidates.is_empty()) {
        (Some(passphrase), true) => {
            let (keys, added) = recover_with_passphrase(
                store,
                config,
                &slots,
                &keyring,
                passphrase,
                catalog_key,
                cancel,
            )
            .await?;
            for (key, bytes) in added {
                match layout::parse_slot_key(&key) {
                    Some(_) => slots.extend(KeySlot::parse(&key, &bytes).ok()),
                    None => keyring.push((key, bytes)),
                }
            }
            keys
        }
        _ => choose_keys(store, candidates, access.pinned.as_ref())?,
    };
    Ok((keys, summarize_slots(&slots, &keyring)))
}

/// The key slots (parsed, by id) and keyring objects in storage. With a
/// pinned generation, keyring objects of later generations are left out:
/// no writer uses a generation the catalog has not pinned, whether an
/// unfinished rotation wrote it or someone planted it.
pub(super) async fn fetch_keys(
    store: &Store,
    pinned: Option<&PinnedGeneration>,
    cancel: &CancellationToken,
) -> Result<(Vec<KeySlot>, Vec<StoredObject>), RepositoryError> {
    let slots = fetch_objects(store, layout::KEYS_PREFIX, cancel).await?;
    let mut keyring = fetch_objects(store, layout::KEYRING_PREFIX, cancel).await?;
    if let Some(pinned) = pinned {
        keyring.retain(|(key, _)| {
            layout::parse_keyring_key(key)
                .is_none_or(|(generation, _)| generation <= pinned.generation)
        });
    }
    let mut slots: Vec<KeySlot> = slots
        .iter()
        .filter(|(key, _)| layout::parse_slot_key(key).is_some())
        .map(|(key, bytes)| KeySlot::parse(key, bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RepositoryError::format("reading the key slots", e))?;
    slots.sort_by_key(KeySlot::id);
    Ok((slots, keyring))
}

/// Opens the repository through a passphrase slot (the catalog that held
/// its catalog key was lost) and adds a catalog slot for `catalog_key`, the
/// new catalog's, so that later runs open it without the passphrase.
/// Returns the keys and the objects written. The passphrase slot's
/// keyring objects are checked for their author like any other
/// (`RepositoryKeys::open`), so a planted slot or keyring does not open.
async fn recover_with_passphrase(
    store: &Store,
    config: &RepositoryConfigV2,
    slots: &[KeySlot],
    keyring: &[StoredObject],
    passphrase: &Zeroizing<String>,
    catalog_key: &Zeroizing<[u8; 32]>,
    cancel: &CancellationToken,
) -> Result<(RepositoryKeys, Vec<StoredObject>), RepositoryError> {
    let passphrase_slots: Vec<KeySlot> = slots
        .iter()
        .filter(|slot| slot.kind() == SlotKind::Passphrase)
        .cloned()
        .collect();
    let (config, keyring) = (config.clone(), keyring.to_vec());
    let (passphrase, catalog_key) = (passphrase.clone(), catalog_key.clone());
    // Argon2id takes a quarter second and 64 MiB per slot tried: off the
    // runtime's threads.
    let opened = tokio::task::spawn_blocking(move || {
        let unlocked = unlock_slot(
            &passphrase_slots,
            SlotSecret::Passphrase(&passphrase, Argon2Params::DEFAULT),
        )?;
        let keys = RepositoryKeys::open(&config, &unlocked, &keyring)?;
        let (_, objects) = keys.add_slot(
            SlotSecret::Catalog(&catalog_key),
            Utc::now(),
            &mut rand::rngs::OsRng,
        )?;
        Ok::<_, FormatError>((keys, objects))
    })
    .await
    .map_err(|e| {
        RepositoryError::format(
            "opening the passphrase slot",
            FormatError::InvalidInput(e.to_string()),
        )
    })?
    .map_err(|e| RepositoryError::format("opening the repository with its passphrase", e))?;
    let (keys, objects) = opened;
    // The keyring objects first, the slot last: a slot without them would
    // open nothing.
    for (key, bytes) in &objects {
        store.put_bytes(key, bytes.clone(), cancel).await?;
    }
    Ok((keys, objects))
}

fn choose_keys(
    store: &Store,
    mut candidates: Vec<RepositoryKeys>,
    pinned: Option<&PinnedGeneration>,
) -> Result<RepositoryKeys, RepositoryError> {
    if candidates.is_empty() {
        return Err(RepositoryError::format(
            "opening the repository",
            FormatError::KeyRejected("no catalog key slot opens with the catalog's key".to_owned()),
        ));
    }
    if let Some(pinned) = pinned {
        if let Some(found) = candidates
            .iter()
            .position(|keys| current_generation(keys) == *pinned)
        {
            return Ok(candidates.swap_remove(found));
        }
        return Ok(candidates.swap_remove(0));
    }
    let first = current_generation(&candidates[0]);
    if candidates
        .iter()
        .any(|keys| current_generation(keys) != first)
    {
        return Err(RepositoryError::refused(
            store,
            "several catalog key slots open to different keys and the catalog has pinned none",
        ));
    }
    Ok(candidates.swap_remove(0))
}

fn current_generation(keys: &RepositoryKeys) -> PinnedGeneration {
    PinnedGeneration {
        generation: keys.current().generation(),
        fingerprint: keys.current().fingerprint(),
    }
}

/// Refuses a repository whose current generation is not the pinned one: a
/// keyring planted by someone who once held an older generation, or newer
/// keyring objects deleted to roll writers back.
fn check_pin(
    store: &Store,
    keys: &RepositoryKeys,
    pinned: Option<&PinnedGeneration>,
) -> Result<(), RepositoryError> {
    let Some(pinned) = pinned else {
        return Ok(());
    };
    let current = current_generation(keys);
    if current == *pinned {
        return Ok(());
    }
    Err(RepositoryError::refused(
        store,
        &format!(
            "the repository opens to key generation {} and the catalog pinned generation {} \
             (a different or forged keyring)",
            current.generation, pinned.generation
        ),
    ))
}

/// Every object under `prefix` with its bytes, each bounded in size.
pub(super) async fn fetch_objects(
    store: &Store,
    prefix: &str,
    cancel: &CancellationToken,
) -> Result<Vec<StoredObject>, RepositoryError> {
    let keys = store.list(prefix, cancel).await?;
    stream::iter(keys)
        .map(|key| async move {
            let bytes = store.get_bytes(&key, cancel).await?;
            if bytes.len() > MAX_KEY_OBJECT_LEN {
                return Err(RepositoryError::format(
                    format!("key object {key}"),
                    FormatError::Corrupt(format!("{} bytes is too large", bytes.len())),
                ));
            }
            Ok((key, bytes))
        })
        .buffer_unordered(KEY_FETCH_PARALLELISM)
        .try_collect()
        .await
}

/// Creates a repository in the format `access` names: a v1 config; or a
/// v2 repository's key slot and keyring objects, then its config last
/// (a config names a complete repository).
pub(super) async fn create(
    store: &Store,
    access: &RepositoryAccess,
    cancel: &CancellationToken,
) -> Result<(), RepositoryError> {
    let creating = |source: FormatError| RepositoryError::format("creating the repository", source);
    let encryption = match &access.format {
        NewFormat::V1 { chunk_key } => {
            let key: [u8; 32] = chunk_key.as_slice().try_into().map_err(|_| {
                creating(FormatError::InvalidInput(format!(
                    "the control plane sent a chunk key of {} bytes, not 32",
                    chunk_key.len()
                )))
            })?;
            let config = RepositoryConfig::new(key).with_repository_id(&access.repository_id);
            store
                .put_bytes(CONFIG_KEY, config.to_bytes(), cancel)
                .await?;
            return Ok(());
        }
        NewFormat::V2 { encryption } => *encryption,
    };
    let now = chrono::Utc::now();
    if encryption == Encryption::None {
        let (config, _) =
            RepositoryConfigV2::unencrypted(&access.repository_id, now, &mut rand::rngs::OsRng)
                .map_err(creating)?;
        store
            .put_bytes(CONFIG_KEY, config.to_bytes(), cancel)
            .await?;
        return Ok(());
    }
    let catalog_key = access.catalog_key.as_ref().ok_or_else(|| {
        RepositoryError::refused(
            store,
            "an encrypted repository cannot be created without the lease's catalog key",
        )
    })?;
    let (repository_id, catalog_key) = (access.repository_id.clone(), catalog_key.clone());
    let passphrase = access.passphrase.clone();
    // A passphrase slot costs one Argon2id run: off the runtime's threads.
    let new = tokio::task::spawn_blocking(move || {
        RepositoryKeys::create(
            &repository_id,
            &catalog_key,
            passphrase
                .as_ref()
                .map(|passphrase| (passphrase.as_str(), Argon2Params::DEFAULT)),
            now,
            &mut rand::rngs::OsRng,
        )
    })
    .await
    .map_err(|e| creating(FormatError::InvalidInput(e.to_string())))?
    .map_err(creating)?;
    for (key, bytes) in new.objects {
        store.put_bytes(&key, bytes, cancel).await?;
    }
    store.put_bytes(CONFIG_KEY, new.config, cancel).await?;
    Ok(())
}
