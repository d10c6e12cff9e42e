//! Restores one snapshot of a filesystem repository in-process, without a
//! control plane, so that `/usr/bin/time -v` measures the restore alone
//! (peak RSS and open files as the tree grows).
//!
//! ```text
//! cargo run --release -p coffer-worker --example restore_probe -- REPOSITORY MANIFEST_KEY DEST
//! ```
//!
//! Make the snapshot with `backup_probe SOURCE fs:REPOSITORY`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use coffer_proto::v1::RunProgress;
use coffer_worker::backup::{RecordBatch, Reporter};
use coffer_worker::report::ReportError;
use coffer_worker::restore::{run_restore, RestorePlan};
use coffer_worker::store::{FilesystemStore, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Drops what the restore reports, counting its errors.
#[derive(Default)]
struct Dropping {
    errors: std::sync::atomic::AtomicU64,
}

impl Reporter for Dropping {
    fn progress(&self, _: &RunProgress) {}

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        self.errors.fetch_add(
            batch.errors.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repository, manifest_key, destination] = args.as_slice() else {
        bail!("usage: restore_probe REPOSITORY MANIFEST_KEY DEST");
    };
    let store = FilesystemStore::new(PathBuf::from(repository)).context("open repository")?;
    let plan = RestorePlan {
        run_id: Uuid::now_v7(),
        lease_token: 1,
        store: Arc::new(Store::Filesystem(store)),
        repository: coffer_worker::repository::RepositoryAccess::v1(Vec::new()),
        manifest_key: manifest_key.clone(),
        paths: Vec::new(),
        destination: PathBuf::from(destination),
        overwrite_newer: true,
        access: None,
    };
    let reporter = Dropping::default();
    let started = Instant::now();
    let summary = run_restore(plan, &reporter, CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("restore failed: {f:?}"))?;
    println!(
        "restore: {:.1} s; {}; {} errors",
        started.elapsed().as_secs_f64(),
        summary.details,
        reporter.errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
