//! Worker classes as the control plane sees them: the worker's own
//! [`WorkerClass`] (a backup worker is append-only), stored in
//! `workers.class`, and the rule that only maintenance workers (or `all`,
//! the default) run the runs that delete.

use coffer_proto::v1 as pb;
pub use coffer_worker::class::WorkerClass;

use super::run::RunKind;

/// Parses the catalog's `class` column; anything unknown is `all` (the
/// column's check constraint admits nothing else).
pub fn from_column(value: &str) -> WorkerClass {
    match value {
        "backup" => WorkerClass::Backup,
        "maintenance" => WorkerClass::Maintenance,
        _ => WorkerClass::All,
    }
}

/// The class a hello announces; unspecified (an older worker) is `all`;
/// `None` for a value this control plane does not know.
pub fn from_proto(value: i32) -> Option<WorkerClass> {
    match pb::WorkerClass::try_from(value).ok()? {
        pb::WorkerClass::Unspecified | pb::WorkerClass::All => Some(WorkerClass::All),
        pb::WorkerClass::Backup => Some(WorkerClass::Backup),
        pb::WorkerClass::Maintenance => Some(WorkerClass::Maintenance),
    }
}

/// Whether a worker of `class` may run a run of `kind`: retention and
/// garbage collection delete, so a backup worker never gets them.
pub fn runs(class: WorkerClass, kind: RunKind) -> bool {
    class.may_delete() || !kind.deletes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_backup_workers_are_refused_runs_that_delete() {
        for kind in [RunKind::Retention, RunKind::GarbageCollection] {
            assert!(!runs(WorkerClass::Backup, kind));
            assert!(runs(WorkerClass::Maintenance, kind));
            assert!(runs(WorkerClass::All, kind));
        }
        for kind in [RunKind::Backup, RunKind::Restore, RunKind::Verify] {
            assert!(runs(WorkerClass::Backup, kind));
        }
    }

    #[test]
    fn every_class_survives_the_catalog_and_the_wire() {
        for class in [
            WorkerClass::All,
            WorkerClass::Backup,
            WorkerClass::Maintenance,
        ] {
            assert_eq!(from_column(class.as_str()), class);
            assert_eq!(from_proto(class.to_proto().into()), Some(class));
        }
        assert_eq!(from_proto(0), Some(WorkerClass::All));
        assert_eq!(from_proto(99), None);
    }
}
