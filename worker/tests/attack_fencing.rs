//! Fenced storage writes, attacked with real worker processes: a worker
//! frozen (SIGSTOP) past its lease and resumed after another worker
//! committed its run, against a tree that changed meanwhile; and a second
//! worker process presenting another worker's credential.

use crate::support;
use crate::support::fencing;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;

use fencing::{hashed_objects, sorted_names, wait_for_log};
use support::{
    assert_succeeded, create_run, garage_bucket, noise, registered_workers, restore,
    wait_until_final, worker_id, write, WorkerProcess,
};

/// Leases of 6 s with quick retries: the frozen worker loses its leases
/// within seconds, and the new owner picks the runs up at once; the control
/// plane still pushes to it during the first 3 s of its silence, which is
/// when the test queues the run that must never start.
fn fast_leases() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(6),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..LeaseSettings::default()
    }
}

/// The `repo` prefix of bucket `bucket_id`.
fn in_bucket(bucket_id: &str) -> pb::target::Destination {
    let target = pb::BucketTarget {
        prefix: "repo".into(),
        bucket_id: bucket_id.into(),
    };
    pb::target::Destination::Bucket(target)
}

/// Big incompressible files, so that an upload to S3 is still running when
/// the test freezes the worker, and one small file the test changes later.
fn tree(root: &Path) {
    for index in 0..4 {
        write(
            &root.join(format!("big-{index}.bin")),
            &noise(48 << 20, 700 + index),
        );
    }
    write(&root.join("note.txt"), b"as the snapshot recorded it\n");
}

/// Asserts that `restored` holds exactly the tree [`tree`] wrote: the big
/// files equal to `source`'s, the original note, and nothing else.
fn assert_original_tree(restored: &Path, source: &Path) {
    let names = sorted_names(restored);
    let mut expected: Vec<String> = (0..4).map(|i| format!("big-{i}.bin")).collect();
    expected.push("note.txt".into());
    assert_eq!(names, expected, "the restored tree has other entries");
    for index in 0..4 {
        let name = format!("big-{index}.bin");
        let same = std::fs::read(restored.join(&name)).expect("restored file")
            == std::fs::read(source.join(&name)).expect("source file");
        assert!(same, "{name} differs from the recorded tree");
    }
    assert_eq!(
        std::fs::read(restored.join("note.txt")).expect("restored note"),
        b"as the snapshot recorded it\n"
    );
}

async fn frozen_worker_overwrites_no_committed_snapshot_and_starts_nothing_pushed_while_frozen(
    backend: Backend,
) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let source = tempfile::tempdir().expect("source dir");
    tree(source.path());
    let logs = tempfile::tempdir().expect("log dir");
    let frozen_log = logs.path().join("frozen.log");

    let first = create_run(&server, source.path(), in_bucket(&bucket_id)).await;
    // Two slots: while it works on the first run it still has credit, so
    // the control plane pushes it the second one right after the freeze.
    let frozen = WorkerProcess::spawn_with(&server, "frozen", 2, &[], Some(&frozen_log));
    wait_for_log(&frozen_log, "run started", 1, Duration::from_secs(120)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while hashed_objects(&store, "packs/").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    frozen.signal("STOP");
    let frozen_id = worker_id(&server, "frozen").await.expect("registered");
    let second = create_run(&server, source.path(), in_bucket(&bucket_id)).await;
    let pushed = server
        .admin()
        .wait_for_run(&second, Duration::from_secs(30), |run| run.attempt >= 1)
        .await;
    assert_eq!(
        pushed.worker_id, frozen_id,
        "the second run went to the frozen worker"
    );

    // Both leases expire; another worker takes both runs and commits them.
    let owner = WorkerProcess::spawn_with(&server, "owner", 2, &[], None);
    for run_id in [&first, &second] {
        let run = wait_until_final(&server, run_id, Duration::from_secs(300)).await;
        assert_succeeded(&run);
        assert!(
            run.attempt >= 2,
            "the frozen worker's attempt is not the one committed"
        );
    }
    drop(owner);
    // Every manifest stored so far; besides the committed ones there may be
    // a manifest of an attempt the owner lost under load (never committed).
    let committed = hashed_objects(&store, "snapshots/").await;
    for run_id in [&first, &second] {
        assert!(
            committed
                .iter()
                .any(|(key, _)| key.contains(run_id.as_str())),
            "run {run_id} has a manifest: {committed:?}"
        );
    }

    // The tree changes, then the frozen worker resumes mid-upload.
    write(
        &source.path().join("note.txt"),
        b"changed after the snapshot\n",
    );
    write(
        &source.path().join("new.txt"),
        b"added after the snapshot\n",
    );
    frozen.signal("CONT");
    let log = wait_for_log(
        &frozen_log,
        "session established",
        2,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        log.contains("paused for longer than a lease lives"),
        "the worker noticed its pause: {log}"
    );
    // Settled: it answers as a fresh session, with its old work dropped.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        hashed_objects(&store, "snapshots/").await,
        committed,
        "no manifest was written or replaced after the resume"
    );
    let log = std::fs::read_to_string(&frozen_log).expect("log");
    assert_eq!(
        log.matches("run started").count(),
        1,
        "the run pushed while frozen was never started: {log}"
    );
    for run_id in [&first, &second] {
        let restored = tempfile::tempdir().expect("restore dir");
        assert_succeeded(&restore(&server, run_id, restored.path()).await);
        assert_original_tree(restored.path(), source.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_postgres() {
    frozen_worker_overwrites_no_committed_snapshot_and_starts_nothing_pushed_while_frozen(
        Backend::Postgres,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_sqlite() {
    frozen_worker_overwrites_no_committed_snapshot_and_starts_nothing_pushed_while_frozen(
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_another_workers_credential_is_refused() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = tempfile::tempdir().expect("source dir");
    write(
        &source.path().join("file.txt"),
        b"only the owner backs this up\n",
    );
    let target = tempfile::tempdir().expect("target dir");
    let logs = tempfile::tempdir().expect("log dir");
    let impostor_log = logs.path().join("impostor.log");

    let _owner = WorkerProcess::spawn(&server, "owner");
    let run = create_run(
        &server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    assert_succeeded(&wait_until_final(&server, &run, Duration::from_secs(120)).await);
    let before = registered_workers(&server).await;

    let stolen = server.worker_token_for("owner").await;
    let _impostor = WorkerProcess::spawn_with(
        &server,
        "impostor",
        2,
        &[("COFFER_WORKER_TOKEN", stolen.as_str())],
        Some(&impostor_log),
    );
    let log = wait_for_log(
        &impostor_log,
        "belongs to another worker",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert!(!log.contains(&stolen), "the secret is not logged");
    let after = registered_workers(&server).await;
    assert_eq!(after.len(), before.len(), "no worker was added: {after:?}");
    assert!(after.iter().all(|worker| worker.name != "impostor"));
    let second = create_run(
        &server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    assert_succeeded(&wait_until_final(&server, &second, Duration::from_secs(120)).await);
}
