//! Conversions of key-slot runs (`coffer.v1.KeySlotsSpec`): what a
//! CreateRun request may ask for, checked field by field, and the stored
//! spec as the API shows it. Admission (ownership, secrets, the slots the
//! catalog knows) is in [`crate::runs::key_slots`].

use coffer_proto::v1 as pb;

use super::convert::{optional_id, target_from_proto, target_to_proto};
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::parse_optional_id;
use crate::model::run::{KeySlotOperation, KeySlotsSpec};

/// Most passphrase secrets a rotation may keep slots for (each costs the
/// worker one Argon2id run per passphrase slot).
pub const MAX_KEPT_SECRETS: usize = 8;

/// The spec of a CreateRun `key_slots` request, every field checked.
pub fn spec_from_proto(spec: pb::KeySlotsSpec) -> DomainResult<KeySlotsSpec> {
    let mut violations = Violations::new();
    let target = violations.absorb(target_from_proto("key_slots.target", spec.target));
    let operation = match pb::KeySlotOperation::try_from(spec.operation) {
        Ok(pb::KeySlotOperation::Add) => Some(KeySlotOperation::Add),
        Ok(pb::KeySlotOperation::Remove) => Some(KeySlotOperation::Remove),
        Ok(pb::KeySlotOperation::Rotate) => Some(KeySlotOperation::Rotate),
        _ => {
            violations.add("key_slots.operation", "must be ADD, REMOVE or ROTATE");
            None
        }
    };
    let secret = violations
        .absorb(parse_optional_id(
            "key_slots.passphrase_secret_id",
            &spec.passphrase_secret_id,
        ))
        .flatten();
    let slot_id = (!spec.slot_id.is_empty()).then_some(spec.slot_id);
    if let Some(slot_id) = &slot_id {
        if slot_id.parse::<coffer_format::crypto::SlotId>().is_err() {
            violations.add("key_slots.slot_id", "must be 32 lowercase hex digits");
        }
    }
    if spec.keep_passphrase_secret_ids.len() > MAX_KEPT_SECRETS {
        violations.add(
            "key_slots.keep_passphrase_secret_ids",
            format!("at most {MAX_KEPT_SECRETS} secrets"),
        );
    }
    let mut kept = Vec::new();
    for (index, id) in spec.keep_passphrase_secret_ids.iter().enumerate() {
        let field = format!("key_slots.keep_passphrase_secret_ids[{index}]");
        if let Some(id) = violations.absorb(crate::model::parse_id(&field, id)) {
            kept.push(id);
        }
    }
    let removing = operation == Some(KeySlotOperation::Remove);
    if removing && slot_id.is_none() {
        violations.add("key_slots.slot_id", "is required for REMOVE");
    }
    if !removing && slot_id.is_some() {
        violations.add("key_slots.slot_id", "applies to REMOVE only");
    }
    if operation == Some(KeySlotOperation::Add) {
        if spec.passphrase_secret_id.is_empty() {
            violations.add("key_slots.passphrase_secret_id", "is required for ADD");
        }
        if !kept.is_empty() {
            violations.add(
                "key_slots.keep_passphrase_secret_ids",
                "applies to REMOVE and ROTATE only",
            );
        }
    }
    if operation != Some(KeySlotOperation::Add) && !spec.passphrase_secret_id.is_empty() {
        violations.add("key_slots.passphrase_secret_id", "applies to ADD only");
    }
    violations.finish()?;
    let (Some(target), Some(operation)) = (target, operation) else {
        return Err(DomainError::Internal("unreported violation".into()));
    };
    Ok(KeySlotsSpec {
        target,
        operation,
        passphrase_secret_id: secret,
        slot_id,
        keep_passphrase_secret_ids: kept,
    })
}

/// A stored key-slot spec as the API shows it.
pub fn spec_to_proto(spec: &KeySlotsSpec) -> pb::KeySlotsSpec {
    let operation = match spec.operation {
        KeySlotOperation::Add => pb::KeySlotOperation::Add,
        KeySlotOperation::Remove => pb::KeySlotOperation::Remove,
        KeySlotOperation::Rotate => pb::KeySlotOperation::Rotate,
    };
    pb::KeySlotsSpec {
        target: Some(target_to_proto(&spec.target)),
        operation: operation.into(),
        passphrase_secret_id: optional_id(spec.passphrase_secret_id),
        slot_id: spec.slot_id.clone().unwrap_or_default(),
        keep_passphrase_secret_ids: spec
            .keep_passphrase_secret_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}
