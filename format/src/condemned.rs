//! Condemned sets: the first phase of garbage collection.
//!
//! A collection that finds packs no snapshot needs does not delete them at
//! once. It writes a condemned set naming them, with the time it was written
//! and the snapshots it saw. From then on writers treat the condemned packs
//! as absent (a backup stores such a chunk again rather than refer to it),
//! while readers can still find them. A later collection deletes them once
//! the grace period has passed and no run that could have relied on them is
//! still in flight, keeping any pack a snapshot written since then refers to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{open_object, seal_object, ObjectKind, RepositoryKeys};
use crate::error::{check_format, FormatError};
use crate::id::PackId;
use crate::version::{FORMAT_NAME, FORMAT_VERSION};

/// One pack waiting for deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondemnedPack {
    /// The pack.
    pub pack_id: PackId,
    /// Its size in bytes.
    pub length: u64,
}

/// The packs one collection condemned, stored under
/// [`crate::layout::condemned_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondemnedSet {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version it was written with.
    pub version: u32,
    /// The garbage-collection run that wrote it.
    pub gc_run_id: Uuid,
    /// When it was written (after the packs were chosen).
    pub marked: DateTime<Utc>,
    /// The snapshots (run ids) whose manifests were read to choose the packs;
    /// any other snapshot found later was written after and is read again
    /// before deleting.
    pub snapshots_seen: Vec<Uuid>,
    /// The packs condemned.
    pub packs: Vec<CondemnedPack>,
}

impl CondemnedSet {
    /// A set of the current format version.
    pub fn new(gc_run_id: Uuid, marked: DateTime<Utc>) -> Self {
        CondemnedSet {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            gc_run_id,
            marked,
            snapshots_seen: Vec::new(),
            packs: Vec::new(),
        }
    }

    /// Bytes of all condemned packs.
    pub fn bytes(&self) -> u64 {
        self.packs.iter().map(|pack| pack.length).sum()
    }

    /// Encodes the set as JSON (small, and readable by an operator).
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| FormatError::InvalidInput(format!("condemned set: {e}")))
    }

    /// Decodes and checks a set.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let set: CondemnedSet = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::Corrupt(format!("condemned set: {e}")))?;
        check_format(&set.format, set.version)?;
        Ok(set)
    }
}

impl CondemnedSet {
    /// Encodes the set for a v2 repository: the same JSON, sealed under
    /// the current generation and bound to its key
    /// ([`crate::layout::condemned_key`]), so it cannot be replayed as
    /// another collection's set.
    pub fn to_sealed<R: rand::RngCore + rand::CryptoRng>(
        &self,
        keys: &RepositoryKeys,
        rng: &mut R,
    ) -> Result<Vec<u8>, FormatError> {
        let key = crate::layout::condemned_key(self.gc_run_id);
        seal_object(keys, ObjectKind::Condemned, &key, &self.to_bytes()?, rng)
    }

    /// Opens and checks a set of a v2 repository stored under `object_key`.
    pub fn from_sealed(
        keys: &RepositoryKeys,
        object_key: &str,
        bytes: &[u8],
    ) -> Result<Self, FormatError> {
        let plain = open_object(keys, ObjectKind::Condemned, object_key, bytes)?;
        Self::from_bytes(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_objects() {
        let mut set = CondemnedSet::new(Uuid::from_u128(7), Utc::now());
        set.snapshots_seen.push(Uuid::from_u128(3));
        set.packs.push(CondemnedPack {
            pack_id: PackId::compute(b"pack"),
            length: 42,
        });
        let bytes = set.to_bytes().expect("encodes");
        assert_eq!(CondemnedSet::from_bytes(&bytes).expect("decodes"), set);
        assert_eq!(set.bytes(), 42);

        let foreign = br#"{"format":"other","version":1,"gc_run_id":"00000000-0000-0000-0000-000000000007","marked":"2026-01-01T00:00:00Z","snapshots_seen":[],"packs":[]}"#;
        assert!(CondemnedSet::from_bytes(foreign).is_err());
        assert!(CondemnedSet::from_bytes(b"{").is_err());
    }
}
