use chrono::DateTime;

use super::*;
use crate::model::object::FileAttributes;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// The run that took the snapshot already recorded, and the new one.
const OLD_RUN: u128 = 10;
const NEW_RUN: u128 = 20;
/// The object at path `p`.
const OBJECT: u128 = 1;

fn file() -> FileAttributes {
    FileAttributes {
        kind: EntryKind::File,
        size: 3,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_123_456_000,
        content_hash: Some("ab".repeat(32)),
        symlink_target: None,
    }
}

fn symlink(target: &str) -> FileAttributes {
    FileAttributes {
        kind: EntryKind::Symlink,
        size: 0,
        content_hash: None,
        symlink_target: Some(target.as_bytes().to_vec()),
        ..file()
    }
}

fn entry(attributes: FileAttributes) -> SnapshotEntry {
    SnapshotEntry {
        path: b"p".to_vec(),
        attributes,
        storage_key: String::new(),
    }
}

fn version(attributes: FileAttributes, deleted: bool) -> ObjectVersion {
    ObjectVersion {
        id: id(100),
        object_id: id(OBJECT),
        attributes,
        storage_key: String::new(),
        first_run_id: id(OLD_RUN),
        last_run_id: None,
        deleted,
        create_time: DateTime::UNIX_EPOCH,
    }
}

/// The decision a row expects, without the borrowed entry.
#[derive(Debug, PartialEq)]
enum Expected {
    New,
    CarriedOver,
    Changed,
    /// A new version for an object without a current one.
    Reopened,
    Removed,
    Nothing,
    Invalid,
}

fn outcome(plan: DomainResult<SnapshotPlan<'_>>) -> Expected {
    let plan = match plan {
        Ok(plan) => plan,
        Err(DomainError::InvalidArgument(_)) => return Expected::Invalid,
        Err(other) => panic!("unexpected error {other}"),
    };
    match plan.decisions.as_slice() {
        [] => Expected::Nothing,
        [PathDecision::New(_)] => Expected::New,
        [PathDecision::CarriedOver { .. }] => Expected::CarriedOver,
        [PathDecision::Changed {
            close_current: true,
            ..
        }] => Expected::Changed,
        [PathDecision::Changed {
            close_current: false,
            ..
        }] => Expected::Reopened,
        [PathDecision::Removed { .. }] => Expected::Removed,
        more => panic!("one decision expected, got {more:?}"),
    }
}

#[test]
fn each_path_gets_the_decision_its_change_calls_for() {
    type Edit = fn(&mut FileAttributes);
    struct Row {
        name: &'static str,
        /// The object's current version, if the path exists.
        current: Option<ObjectVersion>,
        /// The snapshot's entries at the path.
        entries: Vec<SnapshotEntry>,
        /// `None` for a full snapshot; for an incremental, whether it
        /// records the path as removed.
        removed: Option<bool>,
        expected: Expected,
    }
    let changed = |edit: Edit| {
        let mut attributes = file();
        edit(&mut attributes);
        vec![entry(attributes)]
    };
    let current = Some(version(file(), false));
    let rows = [
        Row {
            name: "new path",
            current: None,
            entries: vec![entry(file())],
            removed: None,
            expected: Expected::New,
        },
        Row {
            name: "unchanged",
            current: current.clone(),
            entries: vec![entry(file())],
            removed: None,
            expected: Expected::CarriedOver,
        },
        Row {
            name: "content change",
            current: current.clone(),
            entries: changed(|a| a.content_hash = Some("cd".repeat(32))),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "size change",
            current: current.clone(),
            entries: changed(|a| a.size += 1),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "mode change",
            current: current.clone(),
            entries: changed(|a| a.mode = 0o600),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "owner change",
            current: current.clone(),
            entries: changed(|a| a.uid = 0),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "group change",
            current: current.clone(),
            entries: changed(|a| a.gid = 0),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "mtime change below a microsecond",
            current: current.clone(),
            entries: changed(|a| a.mtime_ns += 999),
            removed: None,
            expected: Expected::CarriedOver,
        },
        Row {
            name: "mtime change of a microsecond",
            current: current.clone(),
            entries: changed(|a| a.mtime_ns += 1_000),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "kind change",
            current: current.clone(),
            entries: changed(|a| {
                a.kind = EntryKind::Directory;
                a.size = 0;
                a.content_hash = None;
            }),
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "symlink retarget",
            current: Some(version(symlink("a"), false)),
            entries: vec![entry(symlink("b"))],
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "unchanged in an incremental",
            current: current.clone(),
            entries: vec![entry(file())],
            removed: Some(false),
            expected: Expected::CarriedOver,
        },
        Row {
            name: "not named by an incremental",
            current: current.clone(),
            entries: vec![],
            removed: Some(false),
            expected: Expected::Nothing,
        },
        Row {
            name: "storage key only",
            current: current.clone(),
            entries: vec![SnapshotEntry {
                storage_key: "elsewhere".into(),
                ..entry(file())
            }],
            removed: None,
            expected: Expected::CarriedOver,
        },
        Row {
            name: "deleted in an incremental",
            current: current.clone(),
            entries: vec![],
            removed: Some(true),
            expected: Expected::Removed,
        },
        Row {
            name: "missing from a full snapshot",
            current: current.clone(),
            entries: vec![],
            removed: None,
            expected: Expected::Removed,
        },
        Row {
            name: "deleted again",
            current: Some(version(file(), true)),
            entries: vec![],
            removed: Some(true),
            expected: Expected::Nothing,
        },
        Row {
            name: "re-created after deletion",
            current: Some(version(file(), true)),
            entries: vec![entry(file())],
            removed: None,
            expected: Expected::Changed,
        },
        Row {
            name: "repeated path",
            current: None,
            entries: vec![entry(file()), entry(file())],
            removed: None,
            expected: Expected::Invalid,
        },
        Row {
            name: "changed and removed",
            current: current.clone(),
            entries: vec![entry(file())],
            removed: Some(true),
            expected: Expected::Invalid,
        },
    ];
    let removed_path = [b"p".to_vec()];
    for row in rows {
        let existing: HashMap<Vec<u8>, Uuid> = match row.current {
            Some(_) => [(b"p".to_vec(), id(OBJECT))].into_iter().collect(),
            None => HashMap::new(),
        };
        let current: HashMap<Uuid, ObjectVersion> =
            row.current.into_iter().map(|v| (v.object_id, v)).collect();
        let removed = row.removed.map(|named| &removed_path[..usize::from(named)]);
        let plan = plan_snapshot(id(NEW_RUN), &row.entries, removed, &existing, &current);
        assert_eq!(outcome(plan), row.expected, "{}", row.name);
    }
}

#[test]
fn an_object_without_a_current_version_gets_one_without_closing_any() {
    let existing = [(b"p".to_vec(), id(OBJECT))].into_iter().collect();
    let entries = [entry(file())];
    let plan = plan_snapshot(id(NEW_RUN), &entries, Some(&[]), &existing, &HashMap::new());
    assert_eq!(outcome(plan), Expected::Reopened);
}

#[test]
fn stats_count_the_decisions() {
    let (a, b, c) = (id(1), id(2), id(3));
    let existing: HashMap<Vec<u8>, Uuid> =
        [(b"a".to_vec(), a), (b"b".to_vec(), b), (b"c".to_vec(), c)]
            .into_iter()
            .collect();
    let current: HashMap<Uuid, ObjectVersion> = [a, b, c]
        .into_iter()
        .map(|object_id| {
            let mut version = version(file(), false);
            version.object_id = object_id;
            (object_id, version)
        })
        .collect();
    let at = |path: &str, attributes: FileAttributes| SnapshotEntry {
        path: path.as_bytes().to_vec(),
        ..entry(attributes)
    };
    let mut changed = file();
    changed.size = 9;
    let entries = [at("a", file()), at("b", changed), at("d", file())];
    let plan = plan_snapshot(id(NEW_RUN), &entries, None, &existing, &current).expect("plan");
    assert_eq!(
        plan.stats,
        SnapshotStats {
            new_objects: 1,
            new_versions: 3,
            closed_versions: 0,
            unchanged: 1,
            deleted: 1,
        }
    );
}

#[test]
fn an_older_run_cannot_be_committed_after_a_newer_one() {
    let existing = [(b"p".to_vec(), id(OBJECT))].into_iter().collect();
    let current = [(id(OBJECT), version(file(), false))].into_iter().collect();
    let entries = [entry(file())];
    let plan = plan_snapshot(id(OLD_RUN - 1), &entries, None, &existing, &current);
    assert!(matches!(plan, Err(DomainError::FailedPrecondition(_))));
}
