//! `coffer download SNAPSHOT PATH`: one file of a snapshot, read by a worker
//! and streamed through the control plane.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use coffer_proto::v1 as pb;
use pb::download_file_response::Part;

use crate::connection::Api;
use crate::failure::Usage;

/// Where the bytes go.
enum Sink {
    Stdout(std::io::Stdout),
    /// A temporary file beside the target, renamed into place only once
    /// the stream ended OK: a failed download never leaves a short file
    /// under the real name.
    File {
        temporary: tempfile::NamedTempFile,
        target: PathBuf,
    },
}

impl Sink {
    fn open(output: Option<&Path>, path: &str, force: bool) -> anyhow::Result<Sink> {
        let target = match output {
            Some(p) if p == Path::new("-") => return Ok(Sink::Stdout(std::io::stdout())),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(path.rsplit('/').next().unwrap_or(path)),
        };
        if !force && target.symlink_metadata().is_ok() {
            return Err(Usage(format!(
                "{} exists; pass --force to replace it, or --to to name another file",
                target.display()
            ))
            .into());
        }
        let directory = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temporary = tempfile::Builder::new()
            .prefix(".coffer-download-")
            .tempfile_in(&directory)
            .with_context(|| format!("creating a file in {}", directory.display()))?;
        Ok(Sink::File { temporary, target })
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(data).context("writing to standard output"),
            Sink::File { temporary, .. } => temporary.write_all(data).context("writing the file"),
        }
    }

    fn finish(self) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Sink::Stdout(mut out) => out
                .flush()
                .context("writing to standard output")
                .map(|()| None),
            Sink::File { temporary, target } => {
                temporary.as_file().sync_all().context("writing the file")?;
                temporary
                    .persist(&target)
                    .with_context(|| format!("moving the download to {}", target.display()))?;
                Ok(Some(target))
            }
        }
    }
}

/// Downloads `path` of `snapshot` into `output` (default: its name in the
/// current directory; `-` for standard output).
pub async fn download(
    api: &Api,
    snapshot: &str,
    path: &str,
    output: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    let mut sink = Sink::open(output, path.trim_end_matches('/'), force)?;
    let mut stream = api
        .downloads()
        .download_file(pb::DownloadFileRequest {
            snapshot_run_id: snapshot.to_string(),
            path: path.to_string(),
        })
        .await?
        .into_inner();
    let mut expected: Option<u64> = None;
    let mut received = 0u64;
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(Part::File(file)) => expected = u64::try_from(file.size_bytes).ok(),
            Some(Part::Data(data)) => {
                received += data.len() as u64;
                sink.write(&data)?;
            }
            None => {}
        }
    }
    if expected.is_some_and(|size| size != received) {
        anyhow::bail!("the stream ended after {received} of {expected:?} bytes");
    }
    if let Some(target) = sink.finish()? {
        eprintln!("{} ({received} bytes)", target.display());
    }
    Ok(())
}
