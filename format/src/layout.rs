//! Object keys, relative to the repository root (a bucket prefix or a
//! directory).
//!
//! ```text
//! config                      the repository config (JSON)
//! packs/<2 hex>/<64 hex>      packs, keyed by PackId
//! index/<64 hex>              index files, keyed by IndexId
//! snapshots/<run uuid>.<lease> the manifest one attempt (lease) of a backup wrote
//! snapshots/<run uuid>        a manifest written before attempts had their own key
//! condemned/<gc run uuid>     a condemned set of garbage collection
//! keys/<32 hex>               a key slot (format v2)
//! keyring/<generation>.<32 hex> a generation sealed to one key slot (format v2)
//! ```
//!
//! Every key but `config` is derived from content or from a unique run id
//! and lease token, so objects are written once and never overwritten,
//! which is what lets writers run without locks on stores that only offer
//! eventual listings. A manifest names its attempt because an attempt whose
//! lease was lost may still be running somewhere (a frozen worker): with
//! one key per run, its late write would replace the manifest of the
//! attempt that committed.

use uuid::Uuid;

use crate::crypto::slot::SlotId;
use crate::id::{IndexId, PackId};

/// Key of the repository config.
pub const CONFIG_KEY: &str = "config";
/// Prefix of every pack key.
pub const PACKS_PREFIX: &str = "packs/";
/// Prefix of every index file key.
pub const INDEX_PREFIX: &str = "index/";
/// Prefix of every manifest key.
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
/// Prefix of the condemned sets of garbage collection (packs waiting out
/// their grace period before deletion).
pub const CONDEMNED_PREFIX: &str = "condemned/";

/// Prefix of the key slots of a v2 repository.
pub const KEYS_PREFIX: &str = "keys/";
/// Prefix of the keyring objects of a v2 repository.
pub const KEYRING_PREFIX: &str = "keyring/";

/// `keys/<slot id>`.
pub fn slot_key(slot: SlotId) -> String {
    format!("{KEYS_PREFIX}{slot}")
}

/// The slot id of a key written by [`slot_key`]; `None` for any other key
/// (upper case, other lengths, temporary names).
pub fn parse_slot_key(key: &str) -> Option<SlotId> {
    key.strip_prefix(KEYS_PREFIX)?.parse().ok()
}

/// `keyring/<generation>.<slot id>`, the generation in decimal.
pub fn keyring_key(generation: u32, slot: SlotId) -> String {
    format!("{KEYRING_PREFIX}{generation}.{slot}")
}

/// Generation and slot of a key written by [`keyring_key`], spelled
/// exactly as it spells it (a positive generation without sign or leading
/// zeros); `None` for any other key.
pub fn parse_keyring_key(key: &str) -> Option<(u32, SlotId)> {
    let (generation, slot) = key.strip_prefix(KEYRING_PREFIX)?.split_once('.')?;
    let generation: u32 = generation.parse().ok().filter(|g| *g > 0)?;
    let slot: SlotId = slot.parse().ok()?;
    (keyring_key(generation, slot) == key).then_some((generation, slot))
}

/// `packs/<first 2 hex>/<hex>`: the two-digit fan-out keeps any one
/// directory of a filesystem-backed repository to a few thousand entries.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{PACKS_PREFIX}{}/{hex}", &hex[..2])
}

/// `index/<hex>`.
pub fn index_key(id: &IndexId) -> String {
    format!("{INDEX_PREFIX}{}", id.to_hex())
}

/// `snapshots/<run_id>`, with the run id in hyphenated lowercase form: the
/// key of manifests written before attempts had their own (still read).
pub fn manifest_key(run_id: Uuid) -> String {
    format!("{SNAPSHOTS_PREFIX}{}", run_id.hyphenated())
}

/// `snapshots/<run_id>.<lease_token>`: the manifest written by the attempt
/// of `run_id` leased with `lease_token` (tokens only grow, so no two
/// attempts share a key).
pub fn attempt_manifest_key(run_id: Uuid, lease_token: i64) -> String {
    format!("{}.{lease_token}", manifest_key(run_id))
}

/// What a manifest key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestKey {
    /// The backup run.
    pub run_id: Uuid,
    /// The lease token of the attempt that wrote it; `None` for a key
    /// written by [`manifest_key`].
    pub lease_token: Option<i64>,
}

impl ManifestKey {
    /// The key this names, as the writers spell it.
    pub fn key(&self) -> String {
        match self.lease_token {
            Some(token) => attempt_manifest_key(self.run_id, token),
            None => manifest_key(self.run_id),
        }
    }
}

/// The pack id of a key written by [`pack_key`]; `None` for any other key,
/// including ones whose fan-out directory does not match the id.
pub fn parse_pack_key(key: &str) -> Option<PackId> {
    let rest = key.strip_prefix(PACKS_PREFIX)?;
    let (_, hex) = rest.split_once('/')?;
    let id: PackId = hex.parse().ok()?;
    (pack_key(&id) == key).then_some(id)
}

/// The index id of a key written by [`index_key`]; `None` for any other key.
pub fn parse_index_key(key: &str) -> Option<IndexId> {
    let id: IndexId = key.strip_prefix(INDEX_PREFIX)?.parse().ok()?;
    (index_key(&id) == key).then_some(id)
}

/// `condemned/<gc run id>`.
pub fn condemned_key(gc_run_id: Uuid) -> String {
    format!("{CONDEMNED_PREFIX}{}", gc_run_id.hyphenated())
}

/// The run id of a key written by [`condemned_key`]; `None` for any other key.
pub fn parse_condemned_key(key: &str) -> Option<Uuid> {
    let run_id = Uuid::parse_str(key.strip_prefix(CONDEMNED_PREFIX)?).ok()?;
    (condemned_key(run_id) == key).then_some(run_id)
}

/// The run id of a key written by [`manifest_key`] or
/// [`attempt_manifest_key`]; `None` for any other key (temporary or
/// differently spelled names are not manifests).
pub fn parse_manifest_key(key: &str) -> Option<Uuid> {
    parse_manifest_key_parts(key).map(|parsed| parsed.run_id)
}

/// Run and attempt of a key written by [`manifest_key`] or
/// [`attempt_manifest_key`], spelled exactly as they spell it (a positive
/// token without leading zeros or sign); `None` for any other key.
pub fn parse_manifest_key_parts(key: &str) -> Option<ManifestKey> {
    let rest = key.strip_prefix(SNAPSHOTS_PREFIX)?;
    let (id, token) = match rest.split_once('.') {
        Some((id, token)) => (id, Some(token.parse::<i64>().ok().filter(|t| *t > 0)?)),
        None => (rest, None),
    };
    let parsed = ManifestKey {
        run_id: Uuid::parse_str(id).ok()?,
        lease_token: token,
    };
    (parsed.key() == key).then_some(parsed)
}

/// The manifests of a listing that stand for their snapshots: one per run,
/// the one of its latest attempt (a key without attempt counts as the
/// earliest), in run-id order; and the others, superseded.
///
/// The latest is the only one that can ever have been committed: a commit
/// needs the run's current lease, every new lease has a larger token, and a
/// committed run is never leased again. So an attempt manifest below the
/// latest of its run was written by a lease that had been lost (a zombie)
/// and can never become a snapshot.
pub fn select_manifests(keys: impl IntoIterator<Item = String>) -> ManifestSelection {
    let mut parsed: Vec<ManifestKey> = keys
        .into_iter()
        .filter_map(|key| parse_manifest_key_parts(&key))
        .collect();
    // `None` sorts before every token.
    parsed.sort_unstable();
    let mut selection = ManifestSelection::default();
    for (index, manifest) in parsed.iter().enumerate() {
        let latest = parsed
            .get(index + 1)
            .is_none_or(|next| next.run_id != manifest.run_id);
        if latest {
            selection.latest.push((manifest.run_id, manifest.key()));
        } else {
            selection.superseded.push(manifest.key());
        }
    }
    selection
}

/// The result of [`select_manifests`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestSelection {
    /// `(run id, key)` of the latest attempt's manifest of every run.
    pub latest: Vec<(Uuid, String)>,
    /// Keys of manifests of earlier attempts.
    pub superseded: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let pack = PackId::compute(b"pack");
        let key = pack_key(&pack);
        let hex = pack.to_hex();
        assert_eq!(key, format!("packs/{}/{hex}", &hex[..2]));
        assert_eq!(parse_pack_key(&key), Some(pack));

        let index = IndexId::compute(b"index");
        assert_eq!(index_key(&index), format!("index/{}", index.to_hex()));
        assert_eq!(parse_index_key(&index_key(&index)), Some(index));

        let run = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            manifest_key(run),
            "snapshots/01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(parse_manifest_key(&manifest_key(run)), Some(run));
        assert_eq!(
            attempt_manifest_key(run, 7),
            "snapshots/01234567-89ab-cdef-0123-456789abcdef.7"
        );
        assert_eq!(
            parse_manifest_key_parts(&attempt_manifest_key(run, 7)),
            Some(ManifestKey {
                run_id: run,
                lease_token: Some(7)
            })
        );
        assert_eq!(
            parse_manifest_key(&attempt_manifest_key(run, 12)),
            Some(run)
        );
    }

    #[test]
    fn attempt_tokens_are_spelled_one_way() {
        let run = manifest_key(Uuid::from_u128(1));
        for token in [
            "0",
            "-1",
            "+1",
            "01",
            "1.2",
            "",
            "x",
            "99999999999999999999",
        ] {
            assert_eq!(
                parse_manifest_key(&format!("{run}.{token}")),
                None,
                "{token}"
            );
        }
    }

    #[test]
    fn the_latest_attempt_of_each_run_is_selected() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let keys = vec![
            attempt_manifest_key(b, 3),
            attempt_manifest_key(a, 10),
            manifest_key(a),
            attempt_manifest_key(a, 9),
            "snapshots/junk".to_string(),
            attempt_manifest_key(a, 2),
        ];
        let selection = select_manifests(keys);
        assert_eq!(
            selection.latest,
            vec![
                (a, attempt_manifest_key(a, 10)),
                (b, attempt_manifest_key(b, 3))
            ]
        );
        assert_eq!(
            selection.superseded,
            vec![
                manifest_key(a),
                attempt_manifest_key(a, 2),
                attempt_manifest_key(a, 9)
            ]
        );
    }

    #[test]
    fn key_slot_and_keyring_keys_parse_only_as_written() {
        let slot = SlotId([0xab; 16]);
        let hex = "ab".repeat(16);
        assert_eq!(slot_key(slot), format!("keys/{hex}"));
        assert_eq!(parse_slot_key(&slot_key(slot)), Some(slot));
        assert_eq!(keyring_key(12, slot), format!("keyring/12.{hex}"));
        assert_eq!(parse_keyring_key(&keyring_key(12, slot)), Some((12, slot)));
        for bad in [
            format!("keys/{}", hex.to_uppercase()),
            format!("keys/{hex}0"),
            format!("keys/{hex}.tmp"),
            "keys/".to_owned(),
        ] {
            assert_eq!(parse_slot_key(&bad), None, "{bad}");
        }
        for bad in [
            format!("keyring/0.{hex}"),
            format!("keyring/012.{hex}"),
            format!("keyring/+1.{hex}"),
            format!("keyring/4294967296.{hex}"),
            format!("keyring/1.{}", hex.to_uppercase()),
            format!("keyring/1.{hex}.tmp"),
            format!("keyring/{hex}"),
            format!("keys/1.{hex}"),
        ] {
            assert_eq!(parse_keyring_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn foreign_and_non_canonical_keys_are_not_parsed() {
        let pack = PackId::compute(b"pack");
        let hex = pack.to_hex();
        assert_eq!(parse_pack_key(&format!("packs/zz/{hex}")), None);
        assert_eq!(parse_pack_key(&format!("packs/{hex}")), None);
        assert_eq!(
            parse_pack_key(&format!("packs/{}/{}", &hex[..2], hex.to_uppercase())),
            None
        );
        assert_eq!(parse_index_key(&format!("index/{hex}.tmp")), None);
        assert_eq!(parse_index_key("index/"), None);
        assert_eq!(parse_index_key(CONFIG_KEY), None);
        assert_eq!(
            parse_manifest_key("snapshots/0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(parse_manifest_key("snapshots/not-a-uuid"), None);
    }
}
