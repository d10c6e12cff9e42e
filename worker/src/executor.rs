//! Executes assigned runs: turns a `RunAssignment` into a backup of the
//! source into the resolved store, reporting through the lease session.

use std::path::PathBuf;
use std::sync::Arc;

use coffer_proto::v1 as pb;
use uuid::Uuid;

use crate::backup::{run_backup, BackupPlan, RecordBatch, ReportError, Reporter};
use crate::session::{Executor, RunContext};
use crate::store::Store;

/// Runs backups for the lease session.
#[derive(Debug, Clone, Default)]
pub struct BackupExecutor {
    /// Source roots this worker may read; empty allows any path.
    pub source_roots: Vec<String>,
    /// Where large files are staged before upload (system temp dir when `None`).
    pub staging_dir: Option<PathBuf>,
}

struct SessionReporter<'a> {
    context: &'a RunContext,
}

impl Reporter for SessionReporter<'_> {
    fn progress(&self, progress: &pb::RunProgress) {
        self.context.set_progress(progress.clone());
    }

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        let sequence = self
            .context
            .send_batch(batch.files, batch.errors)
            .await
            .map_err(|lost| ReportError {
                message: lost.to_string(),
                retryable: true,
            })?;
        debug_assert_eq!(
            sequence, batch.sequence,
            "batches are numbered by the session in order"
        );
        Ok(())
    }
}

fn failure(error: impl Into<String>, retryable: bool) -> pb::run_completion::Outcome {
    pb::run_completion::Outcome::Failure(pb::RunFailure {
        error: error.into(),
        retryable,
    })
}

fn is_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    root.is_empty()
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl BackupExecutor {
    async fn backup(
        &self,
        assignment: pb::RunAssignment,
        context: &RunContext,
    ) -> pb::run_completion::Outcome {
        let Some(run) = assignment.run else {
            return failure("assignment without a run", false);
        };
        let Some(pb::run::Spec::Backup(spec)) = run.spec else {
            return failure("this worker executes backup runs only", false);
        };
        if !self.source_roots.is_empty()
            && !self
                .source_roots
                .iter()
                .any(|root| is_under(&spec.source_path, root))
        {
            return failure(
                format!("{} is outside this worker's source roots", spec.source_path),
                false,
            );
        }
        let Some(target) = assignment.target else {
            return failure("assignment without a resolved target", false);
        };
        let Ok(run_id) = Uuid::parse_str(&run.id) else {
            return failure("assignment with a malformed run id", false);
        };
        let store = match Store::open(&target, "").await {
            Ok(store) => Arc::new(store),
            Err(error) => {
                return failure(
                    format!("cannot open the target: {error}"),
                    error.is_retryable(),
                )
            }
        };
        let target_description = store.describe();
        tracing::info!(run = %run_id, source = %spec.source_path, target = %target_description, "backup started");
        let plan = BackupPlan {
            run_id,
            lease_token: context.lease().lease_token,
            source: PathBuf::from(&spec.source_path),
            options: assignment.options.unwrap_or_default(),
            store,
            parent_manifest_key: Some(assignment.parent_manifest_key).filter(|k| !k.is_empty()),
            staging_dir: self.staging_dir.clone(),
        };
        let reporter = SessionReporter { context };
        match run_backup(plan, &reporter, context.cancellation().clone()).await {
            Ok(summary) => {
                tracing::info!(run = %run_id, details = %summary.details, "backup finished");
                context.set_progress(summary.progress.clone());
                pb::run_completion::Outcome::Success(pb::RunSuccess {
                    size_bytes: summary.size_bytes,
                    details: summary.details,
                    manifest_key: summary.manifest_key,
                    parent_run_id: String::new(),
                })
            }
            Err(error) => {
                tracing::warn!(run = %run_id, error = %error.message, retryable = error.retryable, "backup failed");
                failure(
                    format!("{} (target: {target_description})", error.message),
                    error.retryable,
                )
            }
        }
    }
}

#[tonic::async_trait]
impl Executor for BackupExecutor {
    async fn execute(
        &self,
        assignment: pb::RunAssignment,
        context: RunContext,
    ) -> pb::run_completion::Outcome {
        self.backup(assignment, &context).await
    }
}
