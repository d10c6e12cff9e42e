//! The worker's liveness: a small file it keeps fresh from its runtime, and
//! the `healthcheck` subcommand that reads the file's age. A wedged runtime
//! stops touching the file; a worker that merely cannot reach its control
//! plane keeps touching it (it reconnects by itself, and restarting it would
//! not help), so a control-plane outage does not restart every worker.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the health file is touched.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// Flags of the `healthcheck` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// Oldest age of the health file, in seconds, that still counts as alive.
    #[arg(long, default_value_t = 30)]
    pub max_age_seconds: u64,
}

/// Touches `path` every [`TOUCH_INTERVAL`] until `cancel`, then removes it;
/// a failed write is logged once and retried.
pub async fn keep_fresh(path: PathBuf, cancel: CancellationToken) {
    let mut failing = false;
    loop {
        match touch(&path).await {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                tracing::warn!(path = %path.display(), %error, "cannot write the health file; healthchecks will fail");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(TOUCH_INTERVAL) => {}
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
}

async fn touch(path: &Path) -> std::io::Result<()> {
    // Written anew each time: the modification time is the heartbeat.
    tokio::fs::write(path, b"alive\n").await
}

/// `Ok` when `path` was touched within `max_age`.
pub fn check(path: &Path, max_age: Duration) -> anyhow::Result<()> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| anyhow::anyhow!("no health file {}: {e}", path.display()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    if age > max_age {
        anyhow::bail!(
            "the health file {} is {}s old (more than {}s): the worker is stuck",
            path.display(),
            age.as_secs(),
            max_age.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_file_is_alive_and_a_stale_or_missing_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alive");
        assert!(check(&path, Duration::from_secs(30)).is_err());

        let cancel = CancellationToken::new();
        let keeper = tokio::spawn(keep_fresh(path.clone(), cancel.clone()));
        while !path.exists() {
            tokio::task::yield_now().await;
        }
        check(&path, Duration::from_secs(30)).expect("fresh");

        let old = SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("age the file");
        assert!(check(&path, Duration::from_secs(30)).is_err());

        cancel.cancel();
        keeper.await.expect("keeper stops");
        assert!(!path.exists(), "the file goes with the worker");
    }
}
