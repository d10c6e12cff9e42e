//! Key-slot runs: adding a passphrase slot to an encrypted repository, or
//! rotating its keys (leaving one slot out when it is removed). The work is
//! in [`crate::repository::key_slots`]; this turns the lease into a change
//! and the outcome into the run's report.

use std::sync::Arc;

use coffer_format::crypto::SlotId;
use coffer_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::run_attempt;
use crate::report::{Reporter, RunFailure};
use crate::repository::key_slots::{change_key_slots, SlotChange, SlotChangeOutcome};
use crate::repository::RepositoryAccess;
use crate::store::Store;

/// Longest passphrase a lease may carry (the control plane accepts 1024
/// bytes).
const MAX_PASSPHRASE_LEN: usize = 4096;
/// Most kept passphrases a lease may carry.
const MAX_KEPT_PASSPHRASES: usize = 16;

/// The change a key-slot run's spec and its lease's passphrases (the
/// assignment's `new_slot_passphrase` and `kept_slot_passphrases`, taken
/// out of it so that they live only in the change, wiped when dropped)
/// describe.
pub fn slot_change(
    spec: &pb::KeySlotsSpec,
    new_slot_passphrase: String,
    kept_slot_passphrases: Vec<String>,
) -> Result<SlotChange, RunFailure> {
    let new_passphrase = Zeroizing::new(new_slot_passphrase);
    let kept: Vec<Zeroizing<String>> = kept_slot_passphrases
        .into_iter()
        .map(Zeroizing::new)
        .collect();
    if kept.len() > MAX_KEPT_PASSPHRASES
        || kept
            .iter()
            .chain([&new_passphrase])
            .any(|passphrase| passphrase.len() > MAX_PASSPHRASE_LEN)
    {
        return Err(RunFailure::permanent(
            "the lease carries more or longer passphrases than a key-slot run takes",
        ));
    }
    match pb::KeySlotOperation::try_from(spec.operation) {
        Ok(pb::KeySlotOperation::Add) if !new_passphrase.is_empty() => Ok(SlotChange::Add {
            passphrase: new_passphrase,
        }),
        Ok(pb::KeySlotOperation::Add) => Err(RunFailure::permanent(
            "a key-slot ADD whose lease carries no passphrase",
        )),
        Ok(pb::KeySlotOperation::Rotate) => Ok(SlotChange::Rotate {
            removed: None,
            kept_passphrases: kept,
        }),
        Ok(pb::KeySlotOperation::Remove) => {
            let removed = spec.slot_id.parse::<SlotId>().map_err(|_| {
                RunFailure::permanent("a key-slot REMOVE whose slot id is malformed")
            })?;
            Ok(SlotChange::Rotate {
                removed: Some(removed),
                kept_passphrases: kept,
            })
        }
        _ => Err(RunFailure::permanent(
            "a key-slot run of an operation this worker does not know",
        )),
    }
}

/// Runs `change` on the repository in `store`.
pub async fn run_key_slots<R: Reporter>(
    store: Arc<Store>,
    access: &RepositoryAccess,
    change: SlotChange,
    lease_token: i64,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<SlotChangeOutcome, RunFailure> {
    run_attempt(reporter, lease_token, &cancel, async |_batcher| {
        Ok(change_key_slots(store, access, change, &cancel).await?)
    })
    .await
}
