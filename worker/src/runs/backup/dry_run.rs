//! A backup's dry run: the source walked exactly as the backup would walk
//! it, every path its exclusions leave out reported with the rule that left
//! it out, and nothing else done — no file is read, the target is not
//! opened and no snapshot is committed.

use std::path::PathBuf;

use coffer_proto::v1::{JobOptions, RunPhase, RunProgress};
use tokio_util::sync::CancellationToken;

use super::walk_options;
use crate::paths::grant::AllowedPath;
use crate::report::{human_bytes, to_i64, Batcher, Reporter, RunFailure};
use crate::runs::run_attempt;
use crate::source::{self, EntryKind, WalkItem};

/// Everything a dry run needs.
#[derive(Debug, Clone)]
pub struct DryRunPlan {
    /// The lease token (attempt number) the run was leased with.
    pub lease_token: i64,
    /// Absolute path of the source tree (or single file).
    pub source: PathBuf,
    /// How the backup would read the source.
    pub options: JobOptions,
    /// What the source's grant allows (see [`super::BackupPlan::access`]).
    pub access: Option<AllowedPath>,
}

/// What a dry run found.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRunSummary {
    /// Total size of the regular files a backup would store.
    pub size_bytes: i64,
    /// Paths left out.
    pub excluded: u64,
    /// Human-readable summary for the run's metadata.
    pub details: String,
    /// Final counters.
    pub progress: RunProgress,
}

/// Runs one attempt of a dry run: the walk's exclusions and per-entry
/// errors are reported in batches, like a backup's records.
pub async fn run_dry_run<R: Reporter>(
    plan: DryRunPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<DryRunSummary, RunFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

async fn execute<R: Reporter>(
    plan: &DryRunPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<DryRunSummary, RunFailure> {
    batcher.set_phase(RunPhase::Scanning);
    let mut options = walk_options(&plan.options, plan.access.as_ref());
    options.report_exclusions = true;
    let mut walk = source::walk(&plan.source, &options, cancel)
        .await
        .map_err(|e| RunFailure::permanent(e.to_string()))?;
    let (mut entries, mut files, mut size, mut excluded) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            item = walk.next() => item,
        };
        let Some(item) = item else {
            break;
        };
        match item {
            WalkItem::Entry(entry) => {
                batcher.progress.files_seen += 1;
                match entry.kind {
                    EntryKind::Regular => {
                        files += 1;
                        size += entry.metadata.size;
                        batcher.progress.bytes_seen += to_i64(entry.metadata.size);
                        entries += 1;
                    }
                    EntryKind::Directory | EntryKind::Symlink => entries += 1,
                    // Not part of a snapshot.
                    _ => {}
                }
            }
            WalkItem::Error(error) => {
                batcher.progress.files_seen += 1;
                batcher.error(&error.path, error.message).await?;
            }
            WalkItem::Excluded(exclusion) => {
                excluded += 1;
                batcher.exclusion(exclusion).await?;
            }
        }
        batcher.report_progress(false);
    }
    batcher.totals_known();
    batcher.set_phase(RunPhase::Finishing);
    batcher.flush().await?;
    let details = format!(
        "dry run: {entries} entries ({files} files, {}) would be backed up; {excluded} paths \
         excluded (see the run's exclusions); {} per-file errors; nothing was stored",
        human_bytes(size),
        batcher.error_total
    );
    Ok(DryRunSummary {
        size_bytes: to_i64(size),
        excluded,
        details,
        progress: batcher.progress_now(),
    })
}
