//! One backup attempt, in the repository's format (v1, or v2 for new repositories; see
//! `format/README.md`).
//!
//! The walk yields entries in manifest order. Each regular file is either
//! carried over from the parent snapshot unread — its size, mtime, ctime and
//! inode are unchanged — or read on a blocking thread that chunks it
//! (FastCDC), hashes every chunk with the repository key and compresses the
//! chunks the repository does not hold yet. Files are processed several at
//! a time on all cores while one packer task fills packs of about 16 MiB and
//! uploads them in the background, so reading overlaps with uploading.
//! Results are consumed in walk order: each entry goes into the streamed
//! manifest and, when it changed since the parent, into a file record for
//! the control plane. Index files name uploaded packs every few packs (so a
//! retry after a crash reuses them); the last index file and then the
//! manifest are written last, so a manifest never names a chunk that is not
//! stored and indexed.
//!
//! The stages, each in its own file: `reader` opens, reads and chunks
//! regular files; `record` maps a walked entry to its manifest entry and the
//! control plane's file record and decides what an incremental may skip and
//! must report; `entries` drives the walk through them in order;
//! `manifests` streams the parent's manifest and the new one. The packer is
//! the repository's ([`crate::repository::packer`]).

mod command_source;
pub mod dry_run;
mod entries;
pub(crate) mod manifests;
mod reader;
pub(crate) mod record;
mod trees;

use std::path::PathBuf;
use std::sync::Arc;

use coffer_format::{layout, BlobType, ManifestHeader};
use coffer_proto::v1::{JobOptions, RunPhase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run_attempt;
use crate::commands::{CommandAllowList, Invocation};
use crate::paths::grant::AllowedPath;
use crate::report::{human_bytes, to_i64, Batcher, RunFailure};
pub use crate::report::{
    RecordBatch, ReportError, Reporter, RunFailure as BackupFailure, MAX_BATCH_RECORDS,
};
use crate::repository::packer::Packer;
use crate::repository::{DataSettings, IndexUse, PinnedGeneration, Repository, RepositoryAccess};
use crate::source::{self, ExclusionOptions, SourceWalk, WalkOptions};
use crate::store::Store;
use command_source::CommandSources;
use entries::walk_into_manifest;
use manifests::{fetch_parent, open_parent, store_manifest, ManifestSink};
pub use manifests::{ParentSnapshot, MANIFEST_COMPRESSION_LEVEL};
use reader::FileContext;
pub use reader::MAX_REREADS;
use trees::TreeOutput;

/// Encoded chunks queued for the packer.
const PACKER_QUEUE: usize = 16;

/// Everything one backup attempt needs.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    /// The run being executed.
    pub run_id: Uuid,
    /// The job, if any (recorded in the manifest).
    pub job_id: Option<Uuid>,
    /// The lease token (attempt number) the run was leased with.
    pub lease_token: i64,
    /// Absolute path of the source tree (or single file).
    pub source: PathBuf,
    /// How the source is read.
    pub options: JobOptions,
    /// The repository's store.
    pub store: Arc<Store>,
    /// The repository as the lease describes it (created by this run when
    /// missing).
    pub repository: RepositoryAccess,
    /// The previous snapshot of the same job in the repository, if any.
    pub parent: Option<ParentSnapshot>,
    /// What the source's grant allows (checked by the executor): the anchor
    /// the source is resolved beneath and the protected paths inside it.
    /// `None` for a trusted in-process caller: resolved beneath its parent.
    pub access: Option<AllowedPath>,
    /// Commands whose output the snapshot stores; with them, an empty
    /// `source` means there is no tree to walk.
    pub commands: SourceCommands,
}

/// The command sources of a backup and what running them needs.
#[derive(Debug, Clone, Default)]
pub struct SourceCommands {
    /// The commands, each with its file name.
    pub sources: Vec<Invocation>,
    /// The commands this worker allows.
    pub allow: Arc<CommandAllowList>,
    /// The run's variables (`COFFER_RUN_ID`...) the commands get.
    pub env: Vec<(String, String)>,
}

/// A successful backup.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// Total size of the regular files in the snapshot.
    pub size_bytes: i64,
    /// Entries in the snapshot.
    pub file_count: i64,
    /// Batches sent to the reporter.
    pub batch_count: i64,
    /// Key of the snapshot manifest.
    pub manifest_key: String,
    /// The parent the records are relative to (`None`: they list the whole tree).
    pub parent_run_id: Option<Uuid>,
    /// Human-readable summary for the run's metadata.
    pub details: String,
    /// Final counters.
    pub progress: coffer_proto::v1::RunProgress,
    /// Bytes of packs uploaded (after deduplication and compression).
    pub bytes_uploaded: u64,
    /// Regular files read (not carried over from the parent).
    pub files_read: u64,
    /// The key generation of a v2 repository, for the catalog to pin.
    pub generation: Option<PinnedGeneration>,
}

/// Runs one backup attempt of `plan`.
///
/// Per-file problems (unreadable, vanished, constantly changing files) are
/// reported and skipped; they fail the run only with
/// `options.fail_on_file_errors`. Storage errors and reporter errors fail it.
/// When `cancel` fires the backup stops promptly with the failure
/// `cancelled`; packs already uploaded stay (unreferenced until a later
/// backup reuses them or garbage collection removes them) but no manifest
/// is written.
pub async fn run_backup<R: Reporter>(
    plan: BackupPlan,
    reporter: &R,
    cancel: CancellationToken,
) -> Result<BackupSummary, BackupFailure> {
    run_attempt(reporter, plan.lease_token, &cancel, async |batcher| {
        execute(&plan, batcher, &cancel).await
    })
    .await
}

/// The stages of one attempt: walk, parent and index opened; entries read
/// and packed into the manifest; the last packs, index and manifest stored.
async fn execute<R: Reporter>(
    plan: &BackupPlan,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, RunFailure> {
    tracing::debug!(run = %plan.run_id, "backup starting");
    batcher.set_phase(RunPhase::Preparing);
    let walk_options = walk_options(&plan.options, plan.access.as_ref());
    // The source is checked first: a missing source is the user's error,
    // whatever the state of the storage. Command sources alone walk nothing.
    let walk = if plan.source.as_os_str().is_empty() && !plan.commands.sources.is_empty() {
        None
    } else {
        Some(
            source::walk(&plan.source, &walk_options, cancel)
                .await
                .map_err(|e| RunFailure::permanent(e.to_string()))?,
        )
    };
    let mut commands = CommandSources::new(
        plan.commands.sources.clone(),
        Arc::clone(&plan.commands.allow),
        plan.commands.env.clone(),
    );
    let repository =
        Repository::open_or_create(Arc::clone(&plan.store), &plan.repository, cancel).await?;
    let settings = repository.settings();
    // The chunk index and the parent manifest are fetched side by side;
    // the parent's tree blobs are found through the index.
    let (index, parent) = tokio::join!(
        repository.load_index(IndexUse::Write, cancel),
        fetch_parent(&repository, plan.run_id, plan.parent.as_ref(), cancel)
    );
    let index = Arc::new(index?);
    let mut parent = open_parent(&repository, plan.run_id, parent, &index, &settings, cancel).await;
    let parent_run_id = parent.as_ref().map(|p| p.run_id);
    let started = std::time::Instant::now();
    tracing::debug!(run = %plan.run_id, "index and parent loaded");

    let packer = Packer::start(&repository, BlobType::Data, PACKER_QUEUE, cancel);
    // Format v2 stores the manifest's entries in tree blobs, packed apart.
    let tree_packer = (repository.version() == 2)
        .then(|| Packer::start(&repository, BlobType::Tree, PACKER_QUEUE, cancel));
    batcher.live().follow_uploads(packer.upload_counter());
    let context = Arc::new(FileContext::new(
        &repository,
        Arc::clone(&index),
        packer.queue().clone(),
        walk.as_ref().map(SourceWalk::root),
        Arc::clone(batcher.live()),
        cancel,
    )?);
    batcher.set_phase(RunPhase::Transferring);
    let manifest_key = layout::attempt_manifest_key(plan.run_id, plan.lease_token);
    let mut manifest = ManifestSink::start(
        &repository,
        &manifest_key,
        &header(plan, parent_run_id, &settings),
        tree_packer.as_ref().map(|packer| TreeOutput {
            packer: packer.queue().clone(),
            index: Arc::clone(&index),
        }),
    )?;
    let stats = walk_into_manifest(
        walk,
        &mut commands,
        &mut parent,
        &context,
        &mut manifest,
        batcher,
        cancel,
    )
    .await?;
    tracing::debug!(run = %plan.run_id, elapsed = ?started.elapsed(), "walk done");
    // Every file task is done: closing the queue lets the packer seal the
    // last pack.
    drop(context);
    batcher.set_phase(RunPhase::Finishing);
    // Ending the manifest queues its last tree blobs.
    let spool = manifest.finish().await?;
    let mut packed = packer.finish().await?;
    if let Some(tree_packer) = tree_packer {
        let trees = tree_packer.finish().await?;
        packed.packs += trees.packs;
        packed.index_files += trees.index_files;
    }
    batcher.progress.bytes_uploaded = to_i64(packed.packs);
    if let Some(parent) = parent {
        parent.finish()?;
    }
    // Flushed before failing, so that the errors the failure points to are
    // reported.
    batcher.flush().await?;
    if plan.options.fail_on_file_errors && batcher.error_total > 0 {
        return Err(RunFailure::permanent(format!(
            "{} file error(s) and fail_on_file_errors is set; see the run's errors",
            batcher.error_total
        )));
    }

    let (manifest_key, manifest_len) =
        store_manifest(&plan.store, plan.run_id, plan.lease_token, &spool, cancel).await?;

    tracing::debug!(run = %plan.run_id, elapsed = ?started.elapsed(), "manifest stored");
    let bytes_uploaded = packed.packs + packed.index_files + manifest_len;
    batcher.progress.bytes_uploaded = to_i64(bytes_uploaded);
    batcher.progress.current_path.clear();
    let details = format!(
        "{} entries ({} files, {}); {} files read, {} carried over from the parent; \
         {} uploaded; {} per-file errors",
        stats.entries,
        stats.files,
        human_bytes(stats.size),
        stats.files_read,
        stats.files - stats.files_read,
        human_bytes(bytes_uploaded),
        batcher.error_total
    );
    Ok(BackupSummary {
        size_bytes: to_i64(stats.size),
        file_count: to_i64(stats.entries),
        batch_count: batcher.batch_count(),
        manifest_key,
        parent_run_id,
        details,
        progress: batcher.progress_now(),
        bytes_uploaded,
        files_read: stats.files_read,
        generation: repository.generation(),
    })
}

/// How a backup (or its dry run) walks its source: as `options` say,
/// beneath the grant's anchor and around its protected paths.
pub(crate) fn walk_options(options: &JobOptions, access: Option<&AllowedPath>) -> WalkOptions {
    let ignore_file = match options.ignore_file_name.as_str() {
        _ if options.ignore_files_disabled => None,
        "" => Some(source::DEFAULT_IGNORE_FILE.to_owned()),
        name => Some(name.to_owned()),
    };
    WalkOptions {
        exclusions: ExclusionOptions {
            exclude: options.exclude.clone(),
            ignore_file,
            exclude_caches: options.exclude_caches,
            markers: options.exclude_if_present.clone(),
            max_file_size: u64::try_from(options.max_file_size_bytes)
                .ok()
                .filter(|limit| *limit > 0),
        },
        report_exclusions: false,
        one_file_system: options.one_file_system,
        anchor: access.map(|a| a.anchor.clone()),
        skip: access.map(|a| a.skip.clone()).unwrap_or_default(),
    }
}

/// The new manifest's first line.
fn header(
    plan: &BackupPlan,
    parent_run_id: Option<Uuid>,
    settings: &DataSettings,
) -> ManifestHeader {
    let mut header = ManifestHeader::new(
        plan.run_id,
        plan.source.to_string_lossy().into_owned(),
        hostname(),
        chrono::Utc::now(),
        settings.chunker,
    );
    header.job_id = plan.job_id;
    header.parent_run_id = parent_run_id;
    header
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
