//! Manifests under attempt-specific keys, on a filesystem repository
//! without a control plane: a zombie attempt cannot replace a manifest,
//! and catalog rebuild and garbage collection each keep one manifest per
//! run, the latest attempt's.

use crate::support;
use crate::support::fencing;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_proto::v1 as pb;
use fencing::sorted_names;
use support::worker_api::{
    run_backup, run_gc, run_rebuild, BackupPlan, GcPlan, RecordBatch, ReportError, Reporter,
    RepositoryAccess, Store,
};
use support::write;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Keeps the manifest key of every snapshot a rebuild reports.
#[derive(Default)]
struct Snapshots(Mutex<Vec<String>>);

impl Reporter for Snapshots {
    fn progress(&self, _: &pb::RunProgress) {}

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        if let Some(snapshot) = batch.snapshot {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(snapshot.manifest_key);
        }
        Ok(())
    }
}

async fn open(repo: &Path) -> Arc<Store> {
    let target = pb::ResolvedTarget {
        filesystem_path: repo.display().to_string(),
        ..Default::default()
    };
    Arc::new(Store::open(&target, "").await.expect("store"))
}

/// One attempt of backup run `run_id` leased with `lease_token`.
async fn attempt(
    store: &Arc<Store>,
    source: &Path,
    run_id: Uuid,
    lease_token: i64,
) -> Result<String, String> {
    let plan = BackupPlan {
        run_id,
        job_id: None,
        lease_token,
        source: source.to_path_buf(),
        options: pb::JobOptions::default(),
        store: Arc::clone(store),
        repository: RepositoryAccess::v1(vec![9; 32]),
        parent: None,
        access: None,
        commands: Default::default(),
    };
    run_backup(plan, &Snapshots::default(), CancellationToken::new())
        .await
        .map(|summary| summary.manifest_key)
        .map_err(|failure| failure.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_never_replace_a_manifest_and_only_the_latest_survives() {
    let source = tempfile::tempdir().expect("source");
    let repo = tempfile::tempdir().expect("repo");
    let store = open(repo.path()).await;
    let run_id = Uuid::now_v7();

    write(&source.path().join("a.txt"), b"first state\n");
    let zombie = attempt(&store, source.path(), run_id, 1)
        .await
        .expect("attempt 1");
    write(&source.path().join("a.txt"), b"second state\n");
    let committed = attempt(&store, source.path(), run_id, 2)
        .await
        .expect("attempt 2");
    assert_eq!(committed, format!("snapshots/{run_id}.2"));
    assert_eq!(zombie, format!("snapshots/{run_id}.1"));
    let committed_bytes = std::fs::read(repo.path().join(&committed)).expect("manifest");

    // The committed attempt's key again (a replayed or forged attempt 2): refused,
    // and the manifest is byte for byte what it was.
    write(&source.path().join("a.txt"), b"third state\n");
    let refused = attempt(&store, source.path(), run_id, 2)
        .await
        .expect_err("an existing manifest is never replaced");
    assert!(refused.contains("exists already"), "{refused}");
    assert_eq!(
        std::fs::read(repo.path().join(&committed)).expect("manifest"),
        committed_bytes
    );

    // A rebuild reports the run once, from its latest attempt.
    let rebuilt = Snapshots::default();
    run_rebuild(
        Arc::clone(&store),
        &RepositoryAccess::v1(Vec::new()),
        1,
        &rebuilt,
        CancellationToken::new(),
    )
    .await
    .expect("rebuild");
    assert_eq!(
        rebuilt
            .0
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner),
        vec![committed.clone()]
    );

    // Garbage collection removes the earlier attempt's manifest.
    let plan = GcPlan {
        run_id: Uuid::now_v7(),
        lease_token: 1,
        store: Arc::clone(&store),
        repository: RepositoryAccess::v1(Vec::new()),
        grace: Duration::ZERO,
        repack_threshold_percent: 50.0,
        oldest_in_flight: None,
        lock_kept: Default::default(),
    };
    run_gc(plan, &Snapshots::default(), CancellationToken::new())
        .await
        .expect("gc");
    assert_eq!(
        sorted_names(&repo.path().join("snapshots")),
        vec![format!("{run_id}.2")]
    );
}
