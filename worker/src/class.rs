//! Worker classes: which runs a worker takes, and whether it may delete.
//!
//! A `backup` worker is append-only: it runs backups, restores and
//! verifies, its leases carry only a bucket's write credentials, and its
//! stores refuse every deletion ([`crate::store::Store::refusing_deletes`]).
//! Retention and garbage collection go to `maintenance` workers (with the
//! bucket's delete-capable credentials), or to `all`, the default, so that a
//! single worker (and the standalone control plane's) keeps doing everything.

use coffer_proto::v1 as pb;

/// What runs a worker takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerClass {
    /// Every kind of run.
    #[default]
    All,
    /// Backups, restores and verifies; never deletes anything.
    Backup,
    /// Retention and garbage collection, and the rest.
    Maintenance,
}

impl WorkerClass {
    /// The class as announced in the worker's hello.
    pub fn to_proto(self) -> pb::WorkerClass {
        match self {
            WorkerClass::All => pb::WorkerClass::All,
            WorkerClass::Backup => pb::WorkerClass::Backup,
            WorkerClass::Maintenance => pb::WorkerClass::Maintenance,
        }
    }

    /// Whether runs of this worker may delete from storage (and extend
    /// Object Lock, which decides when deletion becomes possible).
    pub fn may_delete(self) -> bool {
        self != WorkerClass::Backup
    }

    /// The name used in flags, the environment and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerClass::All => "all",
            WorkerClass::Backup => "backup",
            WorkerClass::Maintenance => "maintenance",
        }
    }
}
