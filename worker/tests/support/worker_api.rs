//! The worker's internal API that `backup.rs` drives without a control plane
//! (the run kinds, the report channel, the repository and the stores),
//! gathered here so that a move inside `worker/src` changes this file only.

pub use coffer_worker::backup::{run_backup, BackupPlan, BackupSummary, ParentSnapshot};
pub use coffer_worker::gc::{run_gc, GcPlan, GcSummary};
pub use coffer_worker::rebuild::run_rebuild;
pub use coffer_worker::report::{
    RecordBatch, ReportError, Reporter, RunFailure, MAX_BATCH_RECORDS,
};
pub use coffer_worker::repository::{NewFormat, PinnedGeneration, Repository, RepositoryAccess};
pub use coffer_worker::restore::{run_restore, RestorePlan, RestoreSummary};
pub use coffer_worker::store::{Store, StoreError};
pub use coffer_worker::verify::{run_verify, VerifyPlan, VerifySummary};
