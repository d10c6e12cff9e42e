//! Open `WatchRun` streams per owner, on this replica. A stream costs a task
//! and a broadcast subscription for as long as the client keeps it open, so
//! one tenant opening thousands would tax every other tenant's calls. The
//! count lives in memory: a stream is bound to the replica serving it, and
//! ends with that process, so there is nothing for the catalog to share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

use crate::error::DomainResult;
use crate::model::limits::OwnerLimit;

/// The open watches of every owner on this replica. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WatchSlots {
    open: Arc<Mutex<HashMap<Uuid, i64>>>,
}

/// One open watch; dropping it (the stream's task ending) frees the slot.
#[derive(Debug)]
pub struct WatchSlot {
    slots: WatchSlots,
    owner: Uuid,
}

impl WatchSlots {
    /// Takes a slot for `owner`, or `ResourceExhausted` when `owner` already
    /// holds `limit` open watches.
    pub fn take(&self, owner: Uuid, limit: i64) -> DomainResult<WatchSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let held = open.entry(owner).or_insert(0);
        if *held >= limit {
            return Err(OwnerLimit::WatchStreams.exhausted(limit));
        }
        *held += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            owner,
        })
    }

    /// Open watches of `owner`.
    pub fn held(&self, owner: Uuid) -> i64 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&owner).copied().unwrap_or(0)
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.owner) {
            *held -= 1;
            if *held <= 0 {
                open.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_given_back_when_its_watch_ends() {
        let slots = WatchSlots::default();
        let owner = Uuid::now_v7();
        let first = slots.take(owner, 2).expect("first");
        let _second = slots.take(owner, 2).expect("second");
        let refused = slots.take(owner, 2).expect_err("third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(slots.take(Uuid::now_v7(), 2).is_ok(), "owners are apart");
        drop(first);
        assert_eq!(slots.held(owner), 1);
        assert!(slots.take(owner, 2).is_ok());
    }
}
