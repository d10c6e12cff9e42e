//! Failure cases with real processes: a zombie worker (stopped with SIGSTOP
//! past its lease and resumed), an S3 server that dies mid-run, and a fleet
//! of worker processes sharing hundreds of runs.

use crate::support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use support::{
    assert_restorable, assert_succeeded, bucket_on, create_run, garage_bucket, noise,
    registered_workers, snapshot_files, wait_until_final, worker_id, write, OwnGarage,
    WorkerProcess,
};

fn fast_leases(ttl: Duration) -> LeaseSettings {
    LeaseSettings {
        ttl,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        attempt_deadline: Duration::from_secs(600),
    }
}

fn bucket_target(bucket_id: &str) -> pb::target::Destination {
    pb::target::Destination::Bucket(pb::BucketTarget {
        bucket_id: bucket_id.into(),
        prefix: "repo".into(),
    })
}

/// Waits until the first object appears under `prefix` in `store`.
async fn wait_for_upload(store: &support::worker_api::Store, prefix: &str) -> usize {
    let cancel = CancellationToken::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let uploaded = store.list(prefix, &cancel).await.expect("list bucket");
        if !uploaded.is_empty() {
            return uploaded.len();
        }
        assert!(tokio::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn big_tree(root: &Path, files: u64, seed: u64) {
    for index in 0..files {
        write(
            &root.join(format!("big-{index}.bin")),
            &noise(48 << 20, seed + index),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_worker_process_commits_nothing_while_the_new_owner_finishes() {
    let server =
        TestServer::start_with_leases(Backend::Postgres, fast_leases(Duration::from_secs(3))).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let source = tempfile::tempdir().expect("source dir");
    big_tree(source.path(), 6, 300);
    let logs = tempfile::tempdir().expect("log dir");
    let zombie_log = logs.path().join("zombie.log");

    let run_id = create_run(&server, source.path(), bucket_target(&bucket_id)).await;
    // One slot: once frozen it has no credit, so the requeued run goes to the
    // other worker.
    let zombie = WorkerProcess::spawn_with(&server, "zombie", 1, &[], Some(&zombie_log));
    let uploaded = wait_for_upload(&store, "packs/").await;
    assert!(
        uploaded < 12,
        "nearly everything was uploaded before the freeze"
    );
    zombie.signal("STOP");
    let zombie_id = worker_id(&server, "zombie")
        .await
        .expect("zombie registered");

    // Its lease expires on the catalog's clock; a healthy worker takes over.
    let _owner = WorkerProcess::spawn_with(&server, "new-owner", 1, &[], None);
    let taken_over = server
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(120), |run| {
            run.attempt == 2 && run.state == pb::RunState::Running as i32
        })
        .await;
    assert_ne!(taken_over.worker_id, zombie_id);

    // The zombie wakes up mid-upload while the new owner works and goes on
    // writing under its old lease token.
    zombie.signal("CONT");
    let run = wait_until_final(&server, &run_id, Duration::from_secs(300)).await;
    assert_succeeded(&run);
    assert_eq!(
        run.attempt, 2,
        "the new owner's attempt is the one committed"
    );

    // The zombie was told its lease is gone and stopped; it committed nothing:
    // the snapshot has each file once, with the new owner's records.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&zombie_log).unwrap_or_default();
        if log.contains("lease revoked") || log.contains("no longer held") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the zombie never learned it lost the lease; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let final_run = server.get_run(&run_id).await;
    assert_eq!(final_run.state, pb::RunState::Succeeded as i32);
    assert_eq!(final_run.attempt, 2);
    let files = snapshot_files(&server, &run_id).await;
    let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len(), files.len(), "a path recorded twice: {files:?}");
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_fails_the_run_with_a_clear_error_and_a_later_run_succeeds() {
    let mut garage = OwnGarage::start();
    let server =
        TestServer::start_with_leases(Backend::Postgres, fast_leases(Duration::from_secs(5))).await;
    let (bucket_id, store) = bucket_on(&server, &garage.server).await;
    let source = tempfile::tempdir().expect("source dir");
    big_tree(source.path(), 4, 500);

    let run_id = create_run(&server, source.path(), bucket_target(&bucket_id)).await;
    let _worker = WorkerProcess::spawn(&server, "outage");
    wait_for_upload(&store, "packs/").await;
    garage.kill();

    let failed = wait_until_final(&server, &run_id, Duration::from_secs(300)).await;
    assert_eq!(
        failed.state,
        pb::RunState::Failed as i32,
        "a run cannot succeed without its storage"
    );
    assert_eq!(
        failed.attempt, failed.max_attempts,
        "every attempt was made"
    );
    assert!(
        failed.error.contains("S3") && failed.error.contains(&garage.server.endpoint),
        "the error names the storage and what failed: {}",
        failed.error
    );

    garage.restart().await;
    let retry_id = create_run(&server, source.path(), bucket_target(&bucket_id)).await;
    let run = wait_until_final(&server, &retry_id, Duration::from_secs(300)).await;
    assert_succeeded(&run);
    assert_eq!(
        assert_restorable(&server, &retry_id, source.path()).await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_worker_processes_with_four_slots_execute_500_runs_exactly_once() {
    const RUNS: usize = 500;
    let server =
        TestServer::start_with_leases(Backend::Postgres, fast_leases(Duration::from_secs(30)))
            .await;
    let source = tempfile::tempdir().expect("source dir");
    write(&source.path().join("note.txt"), b"one run, one snapshot\n");
    let targets = tempfile::tempdir().expect("targets dir");

    let mut run_ids = Vec::with_capacity(RUNS);
    for index in 0..RUNS {
        let target = targets.path().join(format!("run-{index}"));
        run_ids.push(
            create_run(
                &server,
                source.path(),
                pb::target::Destination::FilesystemPath(target.display().to_string()),
            )
            .await,
        );
    }
    let _fleet: Vec<WorkerProcess> = (0..8)
        .map(|n| WorkerProcess::spawn_with(&server, &format!("fleet-{n}"), 4, &[], None))
        .collect();

    for (index, run_id) in run_ids.iter().enumerate() {
        let run = wait_until_final(&server, run_id, Duration::from_secs(600)).await;
        assert_succeeded(&run);
        assert_eq!(run.attempt, 1, "run {index} was leased more than once");
        // Exactly one snapshot manifest in each run's own target.
        let snapshots = std::fs::read_dir(targets.path().join(format!("run-{index}/snapshots")))
            .expect("snapshots dir")
            .count();
        assert_eq!(snapshots, 1, "run {index} wrote {snapshots} snapshots");
    }

    let fleet = registered_workers(&server).await;
    assert_eq!(
        fleet
            .iter()
            .filter(|w| w.name.starts_with("fleet-") && w.connected && w.leases.is_empty())
            .count(),
        8,
        "all eight workers are connected and idle: {fleet:?}"
    );
}
