//! Runs one backup (and optionally a restore) in-process, without a control
//! plane, and prints wall time, CPU seconds and peak RSS: a quick way to see
//! what a change to the data path costs.
//!
//! ```text
//! cargo run --release -p coffer-worker --example backup_probe -- \
//!     SOURCE (s3:BUCKET/PREFIX | fs:DIR) [--parent MANIFEST_KEY] [--restore DEST]
//!     [--manifest MANIFEST_KEY] [--v1]
//! ```
//!
//! The repository is an encrypted v2 one (a fixed probe identity and catalog
//! key), as the control plane creates them; `--v1` uses format v1 instead.
//! `--manifest` skips the backup and restores that snapshot (with
//! `--restore`), so a restore can be measured again and again.
//!
//! S3 endpoint and credentials come from `COFFER_TEST_S3_ENDPOINT`,
//! `COFFER_TEST_S3_REGION`, `COFFER_TEST_S3_ACCESS_KEY_ID` and
//! `COFFER_TEST_S3_SECRET_ACCESS_KEY` (as exported by `scripts/start-garage.sh`).
//! File records are counted and dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use coffer_proto::v1::{JobOptions, RunProgress};
use coffer_worker::backup::{run_backup, BackupPlan, ParentSnapshot, RecordBatch, Reporter};
use coffer_worker::report::ReportError;
use coffer_worker::restore::{run_restore, RestorePlan};
use coffer_worker::store::{s3, FilesystemStore, S3Location, S3Store, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts records and drops them.
#[derive(Default)]
struct Counting {
    records: AtomicU64,
}

impl Reporter for Counting {
    fn progress(&self, _: &RunProgress) {}

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        self.records.fetch_add(
            (batch.files.len() + batch.errors.len()) as u64,
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// CPU seconds (user, system) of this process so far.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn open_store(target: &str) -> anyhow::Result<Store> {
    if let Some(dir) = target.strip_prefix("fs:") {
        return Ok(Store::Filesystem(FilesystemStore::new(PathBuf::from(dir))?));
    }
    let Some(rest) = target.strip_prefix("s3:") else {
        bail!("target must be s3:BUCKET/PREFIX or fs:DIR");
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let location = S3Location {
        endpoint: env("COFFER_TEST_S3_ENDPOINT")?,
        bucket: bucket.to_owned(),
        region: env("COFFER_TEST_S3_REGION")?,
        force_path_style: true,
        prefix: prefix.to_owned(),
    };
    let credentials = s3::resolve_credentials("env:COFFER_TEST_S3").await?;
    let store = S3Store::new(location, credentials).await?;
    store.ensure_bucket(&CancellationToken::new()).await?;
    Ok(Store::S3(store))
}

fn report(what: &str, started: Instant, cpu_before: (f64, f64)) {
    let (user, sys) = cpu_seconds();
    println!(
        "{what}: wall {:.2} s, cpu {:.2} s (user {:.2}, sys {:.2}), peak RSS so far {:.0} MiB",
        started.elapsed().as_secs_f64(),
        user - cpu_before.0 + sys - cpu_before.1,
        user - cpu_before.0,
        sys - cpu_before.1,
        peak_rss_mib()
    );
}

fn main() -> anyhow::Result<()> {
    coffer_worker::allocator::block_on(run())?
}

async fn run() -> anyhow::Result<()> {
    // Phase timings of the data path are logged at debug level: COFFER_LOG=coffer_worker=debug.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(source), Some(target)) = (args.first(), args.get(1)) else {
        bail!("usage: backup_probe SOURCE (s3:BUCKET/PREFIX | fs:DIR) [--parent KEY] [--restore DEST]");
    };
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let store = Arc::new(open_store(target).await?);
    let cancel = CancellationToken::new();
    let reporter = Counting::default();
    let access = if args.iter().any(|a| a == "--v1") {
        coffer_worker::repository::RepositoryAccess::v1(vec![7u8; 32])
    } else {
        coffer_worker::repository::RepositoryAccess::encrypted(PROBE_REPOSITORY, [7u8; 32])
    };
    let manifest_key = match option("--manifest") {
        Some(key) => key,
        None => {
            backup(
                source,
                &store,
                access.clone(),
                option("--parent"),
                &reporter,
            )
            .await?
        }
    };
    if let Some(destination) = option("--restore") {
        let plan = RestorePlan {
            run_id: Uuid::now_v7(),
            lease_token: 1,
            store,
            repository: access,
            manifest_key,
            paths: Vec::new(),
            destination: PathBuf::from(destination),
            overwrite_newer: true,
            access: None,
        };
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let restored = run_restore(plan, &reporter, cancel)
            .await
            .map_err(|f| anyhow::anyhow!("restore failed: {f:?}"))?;
        report("restore", started, cpu_before);
        println!("  {restored:?}");
    }
    Ok(())
}

/// The probe repository's identity (any fixed string: the probe has no catalog).
const PROBE_REPOSITORY: &str = "0190c0f0-0000-7000-8000-00000000b0b0";

/// Backs `source` up and returns the manifest key.
async fn backup(
    source: &str,
    store: &Arc<Store>,
    access: coffer_worker::repository::RepositoryAccess,
    parent: Option<String>,
    reporter: &Counting,
) -> anyhow::Result<String> {
    let cancel = CancellationToken::new();
    let plan = BackupPlan {
        run_id: Uuid::now_v7(),
        job_id: None,
        lease_token: 1,
        source: PathBuf::from(source),
        options: JobOptions::default(),
        store: Arc::clone(store),
        repository: access,
        parent: parent.map(|manifest_key| ParentSnapshot {
            run_id: Uuid::nil(),
            manifest_key,
        }),
        access: None,
        commands: Default::default(),
    };
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let summary = run_backup(plan, reporter, cancel)
        .await
        .map_err(|f| anyhow::anyhow!("backup failed: {f:?}"))?;
    report("backup", started, cpu_before);
    println!(
        "  manifest {}; {}; {} records",
        summary.manifest_key,
        summary.details,
        reporter.records.load(Ordering::Relaxed)
    );
    Ok(summary.manifest_key)
}
