//! Command sources: the standard output of an admin-defined command stored
//! as a regular file at the top of the snapshot, beside the walked tree (or
//! instead of one). The output is streamed from the pipe into the chunker
//! through a small bounded channel, never into a temporary file. The
//! command's file takes its place in walk order; a name the tree also has
//! fails the run. A command that exits non-zero, is killed by a signal or
//! times out fails the run permanently, so no manifest is written and
//! nothing is committed.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;

use coffer_format::compare_paths;
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reader::{chunk_reader, FileContent, FileContext, FileProblem};
use crate::commands::{CommandAllowList, Invocation};
use crate::report::{LiveProgress, RunFailure};
use crate::source::{Entry, EntryKind, EntryMetadata, FileTime};

/// Bytes read from a command's pipe at a time.
const PIPE_READ: usize = 256 << 10;
/// Reads between the pipe and the chunker at once.
const PIPE_QUEUE: usize = 4;
/// The mode of a command's file: a regular file readable by its owner.
const OUTPUT_MODE: u32 = 0o100_600;

/// The command sources of one backup, in walk order of their file names.
pub(super) struct CommandSources {
    pending: VecDeque<Invocation>,
    runner: CommandRunner,
}

/// What running a command source needs, shared by its tasks.
#[derive(Clone)]
pub(super) struct CommandRunner {
    allow: Arc<CommandAllowList>,
    env: Arc<Vec<(String, String)>>,
}

impl CommandSources {
    /// The sources `invocations`, run with `env` if `allow` lets them.
    pub(super) fn new(
        mut invocations: Vec<Invocation>,
        allow: Arc<CommandAllowList>,
        env: Vec<(String, String)>,
    ) -> Self {
        invocations.sort_by(|a, b| compare_paths(a.file_name.as_bytes(), b.file_name.as_bytes()));
        CommandSources {
            pending: invocations.into(),
            runner: CommandRunner {
                allow,
                env: Arc::new(env),
            },
        }
    }

    /// What the tasks running the sources share.
    pub(super) fn runner(&self) -> CommandRunner {
        self.runner.clone()
    }

    /// The sources whose file comes before the walked `path` (all that are
    /// left when `None`: the walk is over). Refuses a file the tree has too.
    pub(super) fn before(&mut self, path: Option<&[u8]>) -> Result<Vec<Invocation>, RunFailure> {
        let mut due = Vec::new();
        while let Some(next) = self.pending.front() {
            let order = path.map(|path| compare_paths(next.file_name.as_bytes(), path));
            match order {
                Some(std::cmp::Ordering::Greater) => break,
                Some(std::cmp::Ordering::Equal) => {
                    return Err(RunFailure::permanent(format!(
                        "command {:?} writes {:?}, which the source tree has too; \
                         choose another file name for the command source",
                        next.name, next.file_name
                    )))
                }
                _ => due.extend(self.pending.pop_front()),
            }
        }
        Ok(due)
    }

    /// The walk entry standing for a command's file (its size and times
    /// are filled in once the command has run).
    pub(super) fn entry(invocation: &Invocation) -> Entry {
        Entry {
            path: invocation.file_name.as_bytes().to_vec(),
            abs_path: std::path::PathBuf::new(),
            kind: EntryKind::Regular,
            metadata: EntryMetadata::default(),
            symlink_target: None,
        }
    }
}

impl CommandRunner {
    /// Runs the command and stores its output; see [`read_command`].
    pub(super) async fn read(
        self,
        context: Arc<FileContext>,
        invocation: Invocation,
    ) -> Result<FileContent, FileProblem> {
        read_command(context, invocation, &self.allow, &self.env).await
    }
}

/// Runs `invocation` and chunks its standard output as it arrives. Any
/// failure of the command or of reading its output is fatal to the run.
async fn read_command(
    context: Arc<FileContext>,
    invocation: Invocation,
    allow: &CommandAllowList,
    env: &[(String, String)],
) -> Result<FileContent, FileProblem> {
    let fatal = |message: String| FileProblem::Fatal(RunFailure::permanent(message));
    let (running, stdout) = invocation.spawn(allow, env, true).map_err(fatal)?;
    let stdout = stdout.ok_or_else(|| fatal("the command's output was not captured".into()))?;
    let deadline = running.deadline();
    let stop = context.cancel.child_token();
    let (sender, receiver) = mpsc::channel(PIPE_QUEUE);
    let chunk_context = Arc::clone(&context);
    let chunking = tokio::task::spawn_blocking(move || {
        let mut reader = PipeReader {
            receiver,
            current: Vec::new(),
            offset: 0,
            total: 0,
            live: Arc::clone(&chunk_context.live),
        };
        let chunked = chunk_reader(&chunk_context, &mut reader);
        (chunked, reader.total)
    });
    let (finished, pumped) =
        tokio::join!(running.wait(&stop), pump(stdout, sender, &stop, deadline));
    let (chunked, size) = chunking.await.map_err(|e| {
        FileProblem::Fatal(RunFailure::retryable(format!("command task failed: {e}")))
    })?;
    if finished.cancelled() && context.cancel.is_cancelled() {
        return Err(FileProblem::Fatal(RunFailure::cancelled()));
    }
    finished.check().map_err(fatal)?;
    pumped.map_err(|e| fatal(format!("command {:?}: {e}", invocation.name)))?;
    let (content_hash, chunks) = chunked.map_err(|problem| match problem {
        FileProblem::Skip(message) => fatal(format!("command {:?}: {message}", invocation.name)),
        other @ FileProblem::Fatal(_) => other,
    })?;
    Ok(FileContent {
        content_hash,
        chunks,
        metadata: output_metadata(size),
    })
}

/// Moves the command's output from its pipe to the chunker until the pipe
/// ends, the command's time is up or `stop` fires. When the chunker stops
/// taking it, `stop` kills the command.
async fn pump(
    mut stdout: ChildStdout,
    sender: mpsc::Sender<Vec<u8>>,
    stop: &CancellationToken,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let mut buffer = vec![0u8; PIPE_READ];
        let read = tokio::select! {
            read = stdout.read(&mut buffer) => read.map_err(|e| format!("reading its output: {e}"))?,
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(deadline) => return Ok(()),
        };
        if read == 0 {
            return Ok(());
        }
        buffer.truncate(read);
        if sender.send(buffer).await.is_err() {
            stop.cancel();
            return Err("the chunker stopped taking its output".into());
        }
    }
}

/// The chunker's side of the channel: a blocking reader over what the
/// pump sends; the end of the channel is the end of the output.
struct PipeReader {
    receiver: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
    total: u64,
    live: Arc<LiveProgress>,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset == self.current.len() {
            match self.receiver.blocking_recv() {
                Some(next) => {
                    self.current = next;
                    self.offset = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        self.total += n as u64;
        LiveProgress::add(&self.live.bytes_read, n as u64);
        LiveProgress::add(&self.live.bytes_done, n as u64);
        Ok(n)
    }
}

/// The attributes of a command's file: its size, owned by the worker's
/// user, modified now.
fn output_metadata(size: u64) -> EntryMetadata {
    let now = chrono::Utc::now();
    let time = FileTime {
        seconds: now.timestamp(),
        nanos: now.timestamp_subsec_nanos(),
    };
    EntryMetadata {
        size,
        mode: OUTPUT_MODE,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        mtime: time,
        ctime: time,
        inode: 0,
        dev: 0,
    }
}
