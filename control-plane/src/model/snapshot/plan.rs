//! Which paths of a new snapshot are new, changed, carried over or removed.
//!
//! Pure, so the rules are testable without a database: the catalog looks up
//! the objects and current versions of a batch's paths, asks [`plan_snapshot`]
//! what to write, and stores the decisions as plan rows.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::model::object::{path_text, EntryKind, ObjectVersion, SnapshotEntry, SnapshotStats};

/// What a new snapshot does to one path.
#[derive(Clone, Debug, PartialEq)]
pub enum PathDecision<'a> {
    /// The path is seen for the first time: a new object, with the entry as
    /// its first version.
    New(&'a SnapshotEntry),
    /// The entry is the same version as the current one, which carries over
    /// into the new snapshot; nothing is written.
    CarriedOver {
        /// The object.
        object_id: Uuid,
    },
    /// The entry is a new version of an existing object.
    Changed {
        /// The object.
        object_id: Uuid,
        /// Its new version.
        entry: &'a SnapshotEntry,
        /// Whether a current version closes at the new snapshot (an object
        /// may have none left).
        close_current: bool,
    },
    /// The path is gone: its current version closes and a deletion marker
    /// of the last kind starts.
    Removed {
        /// The object.
        object_id: Uuid,
        /// The kind of the version that closes.
        kind: EntryKind,
    },
}

/// Every decision of one snapshot (or one batch of it), with its counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotPlan<'a> {
    /// One decision per path named by the snapshot, then per path removed.
    pub decisions: Vec<PathDecision<'a>>,
    /// What the decisions add up to (`closed_versions` is counted when the
    /// plan is applied).
    pub stats: SnapshotStats,
}

/// Compares a snapshot of `run_id` with the current versions of its
/// repository and decides every write.
///
/// `existing` maps paths to their objects and `current` objects to their
/// current versions. With `removed` (an incremental) they need only hold the
/// paths named by `entries` and `removed`, and other paths carry over; without
/// it `entries` is the whole tree and an existing path it does not name is
/// removed.
pub fn plan_snapshot<'a>(
    run_id: Uuid,
    entries: &'a [SnapshotEntry],
    removed: Option<&[Vec<u8>]>,
    existing: &HashMap<Vec<u8>, Uuid>,
    current: &HashMap<Uuid, ObjectVersion>,
) -> DomainResult<SnapshotPlan<'a>> {
    let mut present = HashSet::with_capacity(entries.len());
    for entry in entries {
        if !present.insert(entry.path.as_slice()) {
            return Err(DomainError::invalid(
                "entries.path",
                format!("path {:?} appears twice", path_text(&entry.path)),
            ));
        }
    }
    if let Some(newer) = current.values().find(|v| v.first_run_id > run_id) {
        return Err(DomainError::FailedPrecondition(format!(
            "snapshot {} is newer than run {run_id}; snapshots must be committed in run order",
            newer.first_run_id
        )));
    }
    let mut plan = SnapshotPlan::default();
    for entry in entries {
        plan.decisions.push(decide_entry(entry, existing, current));
    }
    let gone: Vec<(&[u8], Uuid)> = match removed {
        Some(removed) => removed
            .iter()
            .filter_map(|path| existing.get(path).map(|id| (path.as_slice(), *id)))
            .collect(),
        None => existing
            .iter()
            .filter(|(path, _)| !present.contains(path.as_slice()))
            .map(|(path, id)| (path.as_slice(), *id))
            .collect(),
    };
    for (path, object_id) in gone {
        if present.contains(path) {
            return Err(DomainError::invalid(
                "entries.path",
                format!("path {:?} is both changed and removed", path_text(path)),
            ));
        }
        // A path already recorded as deleted stays so without a new marker.
        if let Some(version) = current.get(&object_id).filter(|v| !v.deleted) {
            plan.decisions.push(PathDecision::Removed {
                object_id,
                kind: version.attributes.kind,
            });
        }
    }
    plan.stats = count(&plan.decisions);
    Ok(plan)
}

/// The decision for one entry of the snapshot.
fn decide_entry<'a>(
    entry: &'a SnapshotEntry,
    existing: &HashMap<Vec<u8>, Uuid>,
    current: &HashMap<Uuid, ObjectVersion>,
) -> PathDecision<'a> {
    let Some(&object_id) = existing.get(&entry.path) else {
        return PathDecision::New(entry);
    };
    match current.get(&object_id) {
        Some(version) if entry.same_version(version) => PathDecision::CarriedOver { object_id },
        version => PathDecision::Changed {
            object_id,
            entry,
            close_current: version.is_some(),
        },
    }
}

fn count(decisions: &[PathDecision<'_>]) -> SnapshotStats {
    let mut stats = SnapshotStats::default();
    for decision in decisions {
        match decision {
            PathDecision::New(_) => {
                stats.new_objects += 1;
                stats.new_versions += 1;
            }
            PathDecision::CarriedOver { .. } => stats.unchanged += 1,
            PathDecision::Changed { .. } => stats.new_versions += 1,
            PathDecision::Removed { .. } => {
                stats.deleted += 1;
                stats.new_versions += 1;
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests;
