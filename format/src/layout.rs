//! Object keys, relative to the repository root (a bucket prefix or a
//! directory).
//!
//! ```text
//! config                      the repository config (JSON)
//! packs/<2 hex>/<64 hex>      packs, keyed by PackId
//! index/<64 hex>              index files, keyed by IndexId
//! snapshots/<run uuid>        one manifest per snapshot
//! ```
//!
//! Every key but `config` is derived from content or a unique run id, so
//! objects are written once and never overwritten, which is what lets
//! writers run without locks on stores that only offer eventual listings.

use uuid::Uuid;

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

/// `snapshots/<run_id>`, with the run id in hyphenated lowercase form.
pub fn manifest_key(run_id: Uuid) -> String {
    format!("{SNAPSHOTS_PREFIX}{}", run_id.hyphenated())
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

/// The run id of a key written by [`manifest_key`]; `None` for any other
/// key (temporary or differently spelled names are not manifests).
pub fn parse_manifest_key(key: &str) -> Option<Uuid> {
    let run_id = Uuid::parse_str(key.strip_prefix(SNAPSHOTS_PREFIX)?).ok()?;
    (manifest_key(run_id) == key).then_some(run_id)
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
