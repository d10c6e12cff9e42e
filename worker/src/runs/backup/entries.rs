//! The walk's entries on their way into the manifest: each is taken from
//! the walk in order, matched with the parent's entry, processed (regular
//! files read unless they may be unchanged) several at a time, and
//! consumed in walk order into the manifest and, when the catalog's view
//! changed, a file record for the control plane.

use std::sync::Arc;

use coffer_format::{EntryKind as ManifestKind, ManifestEntry};
use futures::future::Either;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::command_source::{CommandRunner, CommandSources};
use super::manifests::{ManifestSink, ParentCursor};
use super::reader::{read_in_turn, FileContent, FileContext, FileProblem};
use super::record::{catalog_view_changed, file_record, manifest_entry, may_be_unchanged};
use crate::report::{to_i64, Batcher, Reporter, RunFailure};
use crate::source::{Entry, EntryKind, SourceWalk, WalkItem};

/// Entries between the walk and the manifest at once (most are cheap).
const ENTRY_WINDOW: usize = 256;

/// What went into the manifest.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Entries of every kind.
    pub(super) entries: u64,
    /// Regular files.
    pub(super) files: u64,
    /// Regular files read (not carried over from the parent).
    pub(super) files_read: u64,
    /// Bytes of the regular files.
    pub(super) size: u64,
}

/// One walk item on its way to the manifest.
enum Processed {
    /// A directory, symlink or carried-over file.
    Ready(Entry, Option<ManifestEntry>, Option<FileContent>),
    /// A regular file that was read.
    Read(
        Entry,
        Option<ManifestEntry>,
        Result<FileContent, FileProblem>,
    ),
    /// An entry that could not be read at all.
    Error(Vec<u8>, String),
    /// A special file (fifo, socket, device): not part of a snapshot.
    Special,
}

/// An entry being processed: most are ready at once and are not spawned.
type EntryTask = Either<
    std::future::Ready<Result<Processed, tokio::task::JoinError>>,
    tokio::task::JoinHandle<Processed>,
>;

/// Takes every entry of `walk` (none without a source tree) and the files
/// of `commands`, in walk order, into `manifest`, reading files through
/// `context` and reporting records and per-file errors; entries of
/// `parent` the walk no longer has are reported removed.
pub(super) async fn walk_into_manifest<R: Reporter>(
    mut walk: Option<SourceWalk>,
    commands: &mut CommandSources,
    parent: &mut Option<ParentCursor>,
    context: &Arc<FileContext>,
    manifest: &mut ManifestSink,
    batcher: &mut Batcher<'_, R>,
    cancel: &CancellationToken,
) -> Result<Stats, RunFailure> {
    let mut pending: FuturesOrdered<EntryTask> = FuturesOrdered::new();
    let mut walk_done = false;
    let mut stats = Stats::default();
    while !(walk_done && pending.is_empty()) {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(RunFailure::cancelled()),
            Some(joined) = pending.next(), if !pending.is_empty() => {
                let processed = joined
                    .map_err(|e| RunFailure::retryable(format!("file task failed: {e}")))?;
                finish_entry(processed, parent.is_some(), manifest, batcher, &mut stats).await?;
                batcher.report_progress(false);
            }
            item = next_item(&mut walk), if !walk_done && pending.len() < ENTRY_WINDOW => {
                let Some(item) = item else {
                    walk_done = true;
                    for invocation in commands.before(None)? {
                        let previous = advance(parent, invocation.file_name.as_bytes(), batcher).await?;
                        pending.push_back(spawn_command(context, commands.runner(), invocation, previous));
                    }
                    batcher.totals_known();
                    if let Some(parent) = parent.as_mut() {
                        parent.remaining_removed(batcher).await?;
                    }
                    continue;
                };
                let entry = match item {
                    WalkItem::Excluded(_) => continue,
                    WalkItem::Error(error) => {
                        batcher.progress.files_seen += 1;
                        pending.push_back(ready(Processed::Error(error.path, error.message)));
                        continue;
                    }
                    WalkItem::Entry(entry) => entry,
                };
                batcher.progress.files_seen += 1;
                for invocation in commands.before(Some(&entry.path))? {
                    let previous = advance(parent, invocation.file_name.as_bytes(), batcher).await?;
                    pending.push_back(spawn_command(context, commands.runner(), invocation, previous));
                }
                let previous = advance(parent, &entry.path, batcher).await?;
                if entry.kind == EntryKind::Regular {
                    batcher.progress.bytes_seen += to_i64(entry.metadata.size);
                }
                pending.push_back(spawn_entry(context, entry, previous));
            }
        }
    }
    Ok(stats)
}

/// The walk's next item; none without a source tree.
async fn next_item(walk: &mut Option<SourceWalk>) -> Option<WalkItem> {
    match walk {
        Some(walk) => walk.next().await,
        None => None,
    }
}

/// The parent's entry at `path`, reporting the ones before it removed.
async fn advance<R: Reporter>(
    parent: &mut Option<ParentCursor>,
    path: &[u8],
    batcher: &mut Batcher<'_, R>,
) -> Result<Option<ManifestEntry>, RunFailure> {
    match parent.as_mut() {
        Some(parent) => parent.advance_to(path, batcher).await,
        None => Ok(None),
    }
}

/// Starts a command source: its output is always read (never carried
/// over from the parent), and any failure of it fails the run.
fn spawn_command(
    context: &Arc<FileContext>,
    runner: CommandRunner,
    invocation: crate::commands::Invocation,
    previous: Option<ManifestEntry>,
) -> EntryTask {
    let context = Arc::clone(context);
    let entry = CommandSources::entry(&invocation);
    Either::Right(tokio::spawn(async move {
        let result = runner.read(context, invocation).await;
        Processed::Read(entry, previous, result)
    }))
}

fn ready(processed: Processed) -> EntryTask {
    Either::Left(std::future::ready(Ok(processed)))
}

/// Starts processing one entry: directories, symlinks and unchanged files
/// are ready at once; other regular files are read on a blocking thread.
fn spawn_entry(
    context: &Arc<FileContext>,
    entry: Entry,
    previous: Option<ManifestEntry>,
) -> EntryTask {
    match entry.kind {
        EntryKind::Regular => {
            if let Some(unchanged) = previous
                .as_ref()
                .filter(|p| may_be_unchanged(p, &entry.metadata))
            {
                let content = FileContent {
                    content_hash: unchanged
                        .attributes
                        .content_hash
                        .clone()
                        .unwrap_or_default(),
                    chunks: unchanged.chunks.clone(),
                    metadata: entry.metadata,
                };
                return ready(Processed::Ready(entry, previous, Some(content)));
            }
            let context = Arc::clone(context);
            Either::Right(tokio::spawn(async move {
                let result = read_in_turn(context, entry.path.clone()).await;
                Processed::Read(entry, previous, result)
            }))
        }
        EntryKind::Directory | EntryKind::Symlink => ready(Processed::Ready(entry, previous, None)),
        _ => ready(Processed::Special),
    }
}

/// Writes one processed entry to the manifest and, when it differs from
/// the parent (or there is none), reports its record.
async fn finish_entry<R: Reporter>(
    processed: Processed,
    incremental: bool,
    manifest: &mut ManifestSink,
    batcher: &mut Batcher<'_, R>,
    stats: &mut Stats,
) -> Result<(), RunFailure> {
    let (entry, previous, content, read) = match processed {
        Processed::Special => {
            batcher.progress.files_done += 1;
            return Ok(());
        }
        Processed::Error(path, message) => {
            batcher.progress.files_done += 1;
            batcher.error(&path, message).await?;
            return Ok(());
        }
        Processed::Ready(entry, previous, content) => (entry, previous, content, false),
        Processed::Read(entry, previous, result) => match result {
            Ok(content) => (entry, previous, Some(content), true),
            Err(FileProblem::Skip(message)) => {
                batcher.progress.files_done += 1;
                batcher.error(&entry.path, message).await?;
                return Ok(());
            }
            Err(FileProblem::Fatal(failure)) => return Err(failure),
        },
    };
    let manifest_entry = manifest_entry(&entry, content);
    stats.entries += 1;
    let size = manifest_entry.attributes.size;
    if manifest_entry.kind() == ManifestKind::File {
        stats.files += 1;
        stats.size += size;
        if read {
            // Its bytes were counted as they were read.
            stats.files_read += 1;
        } else {
            batcher.progress.bytes_done += to_i64(size);
            batcher.progress.bytes_deduplicated += to_i64(size);
        }
    }
    batcher.progress.files_done += 1;
    batcher.progress.current_path = String::from_utf8_lossy(&entry.path).into_owned();
    let changed = !incremental || catalog_view_changed(previous.as_ref(), &manifest_entry);
    if changed {
        batcher.file(file_record(&manifest_entry)).await?;
    }
    manifest.add(manifest_entry).await
}
