//! Key slots of encrypted repositories as workers report them: what the
//! catalog shows on a bucket. Display only: workers open repositories from
//! what storage holds, never from these records, so a worker's report is
//! checked for shape and bounds, not believed for anything else.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};

/// Most key slots one report may name.
pub const MAX_SLOTS: usize = 64;
/// Most generations one reported slot may name.
pub const MAX_GENERATIONS: usize = 1000;

/// What opens a key slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlotKind {
    /// A passphrase, through Argon2id.
    Passphrase,
    /// The key the catalog keeps for the repository.
    Catalog,
}

impl KeySlotKind {
    /// The catalog's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlotKind::Passphrase => "passphrase",
            KeySlotKind::Catalog => "catalog",
        }
    }

    /// Parses the catalog's spelling.
    pub fn parse(text: &str) -> DomainResult<Self> {
        match text {
            "passphrase" => Ok(KeySlotKind::Passphrase),
            "catalog" => Ok(KeySlotKind::Catalog),
            other => Err(DomainError::Internal(format!(
                "unknown key slot kind {other:?} in catalog"
            ))),
        }
    }
}

/// One key slot as a run found it in storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedKeySlot {
    /// The slot's id: 32 lowercase hex digits.
    pub slot_id: String,
    /// What opens it.
    pub kind: KeySlotKind,
    /// The generations sealed to it, lowest first, each at least 1.
    pub generations: Vec<u32>,
    /// When it was made, as the slot says.
    pub create_time: DateTime<Utc>,
}

impl ReportedKeySlot {
    /// Checks one reported slot; `field` names it in errors.
    pub fn new(
        field: &str,
        slot_id: String,
        kind: KeySlotKind,
        mut generations: Vec<u32>,
        create_time: DateTime<Utc>,
    ) -> DomainResult<Self> {
        let is_id = slot_id.len() == 32
            && slot_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_id {
            return Err(DomainError::invalid(
                format!("{field}.slot_id"),
                "must be 32 lowercase hex digits",
            ));
        }
        if generations.len() > MAX_GENERATIONS || generations.contains(&0) {
            return Err(DomainError::invalid(
                format!("{field}.generations"),
                format!("must be at most {MAX_GENERATIONS} generations, each at least 1"),
            ));
        }
        generations.sort_unstable();
        generations.dedup();
        Ok(ReportedKeySlot {
            slot_id,
            kind,
            generations,
            create_time,
        })
    }
}

/// A recorded key slot of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySlotRecord {
    /// The repository.
    pub repository_id: Uuid,
    /// The slot as reported.
    pub slot: ReportedKeySlot,
    /// When it was reported.
    pub report_time: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_slots_are_checked_for_shape() {
        let id = "0123456789abcdef0123456789abcdef".to_owned();
        let slot = ReportedKeySlot::new(
            "s",
            id.clone(),
            KeySlotKind::Catalog,
            vec![2, 1, 2],
            Utc::now(),
        )
        .expect("valid");
        assert_eq!(slot.generations, vec![1, 2]);
        let bad_id =
            ReportedKeySlot::new("s", "XYZ".into(), KeySlotKind::Catalog, vec![1], Utc::now());
        assert!(bad_id.expect_err("id").to_string().contains("s.slot_id"));
        let zero = ReportedKeySlot::new("s", id, KeySlotKind::Passphrase, vec![0], Utc::now());
        assert!(zero
            .expect_err("zero")
            .to_string()
            .contains("s.generations"));
    }
}
