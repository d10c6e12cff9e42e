//! End to end: a real control plane (in-process, real gRPC over loopback, real
//! PostgreSQL) and real `coffer-worker` processes moving real files to a
//! filesystem target and to Garage.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::worker_api::Store;
use tokio_util::sync::CancellationToken;

use support::{
    assert_restorable, assert_succeeded, backup_job, backup_metadata, create_run, garage_bucket,
    noise, pack_bytes, run_to_success, snapshot_files, wait_until_final, write, WorkerProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_backs_up_a_tree_to_a_filesystem_target() {
    let server = TestServer::start(Backend::Postgres).await;
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    write(&source.path().join("docs/readme.txt"), b"hello coffer\n");
    write(
        &source.path().join("docs/copy-of-readme.txt"),
        b"hello coffer\n",
    );
    write(&source.path().join("empty"), b"");
    write(&source.path().join("data/big.bin"), &noise(3 << 20, 7));
    std::os::unix::fs::symlink("docs/readme.txt", source.path().join("link")).expect("symlink");

    let run_id = create_run(
        &server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    let _worker = WorkerProcess::spawn(&server, "e2e-fs");
    let run = wait_until_final(&server, &run_id, Duration::from_secs(120)).await;
    assert_succeeded(&run);

    let files = snapshot_files(&server, &run_id).await;
    let mut paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    for expected in [
        "data",
        "data/big.bin",
        "docs",
        "docs/copy-of-readme.txt",
        "docs/readme.txt",
        "empty",
        "link",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    let link = files
        .iter()
        .find(|f| f.path == "link")
        .and_then(|f| f.version.clone())
        .expect("link");
    assert_eq!(link.kind, pb::FileKind::Symlink as i32);
    assert_eq!(link.symlink_target, "docs/readme.txt");

    let store = Store::open(
        &pb::ResolvedTarget {
            filesystem_path: target.path().display().to_string(),
            ..Default::default()
        },
        "",
    )
    .await
    .expect("open target");
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 4);
    // Identical files are stored once: the packs hold about one copy of
    // the incompressible 3 MiB file, not two.
    let packed = pack_bytes(&store).await;
    assert!(
        packed < (3 << 20) + (64 << 10),
        "{packed} bytes of packs for 3 MiB of distinct content"
    );
    // The manifest of the run's one attempt, under the attempt's own key.
    assert!(target
        .path()
        .join(format!("snapshots/{run_id}.{}", run.attempt))
        .exists());

    let records = backup_metadata(&server, &run_id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].size_bytes, (3 << 20) + 2 * 13);
}

/// A control plane with leases of `ttl` and a Garage bucket, six files of
/// 48 MiB of noise (seeded from `seed`) and a backup of them queued:
/// `(server, store, source, run id)`.
async fn six_big_files_queued(
    ttl: Duration,
    seed: u64,
) -> (TestServer, Arc<Store>, tempfile::TempDir, String) {
    let settings = LeaseSettings {
        ttl,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        attempt_deadline: Duration::from_secs(600),
    };
    let server = TestServer::start_with_leases(Backend::Postgres, settings).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let source = tempfile::tempdir().expect("source dir");
    for index in 0..6u64 {
        write(
            &source.path().join(format!("big-{index}.bin")),
            &noise(48 << 20, index + seed),
        );
    }
    let target = pb::target::Destination::Bucket(pb::BucketTarget {
        bucket_id,
        prefix: "repo".into(),
    });
    let run_id = create_run(&server, source.path(), target).await;
    (server, store, source, run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_upload_is_replaced_and_nothing_is_lost_or_duplicated() {
    let (server, store, source, run_id) = six_big_files_queued(Duration::from_secs(3), 1).await;

    let mut doomed = WorkerProcess::spawn(&server, "doomed");
    // Kill it as soon as its first pack lands in the bucket: it is
    // uploading and far from done (288 MiB make about 18 packs).
    let cancel = CancellationToken::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let uploaded = store.list("packs/", &cancel).await.expect("list bucket");
        if !uploaded.is_empty() {
            assert!(
                uploaded.len() < 12,
                "nearly everything was uploaded before the kill; make the corpus bigger"
            );
            break;
        }
        let run = server.get_run(&run_id).await;
        assert!(
            run.state != pb::RunState::Succeeded as i32,
            "finished before it could be killed"
        );
        assert!(tokio::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill_hard();

    let _replacement = WorkerProcess::spawn(&server, "replacement");
    let run = wait_until_final(&server, &run_id, Duration::from_secs(300)).await;
    assert_succeeded(&run);
    assert_eq!(run.attempt, 2, "the second attempt finished the run");
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 6);
    // Packs the killed attempt had indexed are reused, not uploaded again:
    // at most the packs in flight at the kill are stored twice.
    let packed = pack_bytes(&store).await;
    let source_bytes = 6 * (48u64 << 20);
    assert!(
        packed < source_bytes + source_bytes / 2,
        "{packed} bytes of packs for {source_bytes} bytes of distinct content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_mid_run_loses_nothing() {
    let (server, _store, source, run_id) = six_big_files_queued(Duration::from_secs(15), 100).await;
    let _worker = WorkerProcess::spawn(&server, "steady");
    // Restart as soon as the worker holds the lease: the upload is in flight.
    let leased = server
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(120), |run| {
            run.state != pb::RunState::Queued as i32
        })
        .await;
    assert_eq!(
        leased.state,
        pb::RunState::Running as i32,
        "unexpected state before the restart"
    );

    let server = server.restart().await;
    let run = wait_until_final(&server, &run_id, Duration::from_secs(300)).await;
    assert_succeeded(&run);
    assert_eq!(
        run.attempt, 1,
        "the worker kept its lease across the restart"
    );
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 6);
}

async fn create_job(server: &TestServer, source: &std::path::Path, bucket_id: &str) -> String {
    let job = pb::Job {
        name: "documents".into(),
        source_path: source.display().to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket_id.into(),
                prefix: "repo".into(),
            })),
        }),
        ..Default::default()
    };
    support::create_job(server, job).await
}

/// (path, kind, size, content hash) of every entry of a snapshot, sorted.
async fn listing(server: &TestServer, run_id: &str) -> Vec<(String, i32, i64, String)> {
    let mut entries: Vec<_> = snapshot_files(server, run_id)
        .await
        .into_iter()
        .map(|file| {
            let version = file.version.expect("version");
            (
                file.path,
                version.kind,
                version.size_bytes,
                version.content_hash,
            )
        })
        .collect();
    entries.sort();
    entries
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_snapshots_are_incremental_restorable_verifiable_and_rebuildable() {
    let server = TestServer::start(Backend::Postgres).await;
    // Unencrypted: a new catalog rebuilds it below without any key (an
    // encrypted repository needs its passphrase for that).
    let (bucket_name, _) = support::new_bucket_on(&support::S3Server::shared()).await;
    let bucket_id = support::register_bucket_with(
        &server,
        &support::S3Server::shared(),
        &bucket_name,
        pb::RepositoryEncryption::None,
    )
    .await;
    let source = tempfile::tempdir().expect("source dir");
    write(&source.path().join("docs/a.txt"), b"version one of a\n");
    write(&source.path().join("docs/b.txt"), b"b is removed later\n");
    write(&source.path().join("data/big.bin"), &noise(5 << 20, 11));
    let job_id = create_job(&server, source.path(), &bucket_id).await;
    let _worker = WorkerProcess::spawn(&server, "e2e-incremental");

    let first = backup_job(&server, &job_id).await;
    let old_tree = tempfile::tempdir().expect("old tree copy");
    copy_tree(source.path(), old_tree.path());

    // Same size, new content and mtime; one file added, one removed.
    write(&source.path().join("docs/a.txt"), b"version two of a\n");
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(source.path().join("docs/a.txt"))
        .and_then(|f| f.set_modified(later))
        .expect("touch a.txt");
    std::fs::remove_file(source.path().join("docs/b.txt")).expect("remove b");
    write(&source.path().join("docs/c.txt"), b"c is new\n");
    let second = backup_job(&server, &job_id).await;

    // The second snapshot is the new tree; the first is unchanged.
    let first_listing = listing(&server, &first.id).await;
    let second_listing = listing(&server, &second.id).await;
    let paths =
        |l: &[(String, i32, i64, String)]| l.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert!(paths(&first_listing).contains(&"docs/b.txt".to_string()));
    assert!(!paths(&second_listing).contains(&"docs/b.txt".to_string()));
    assert!(paths(&second_listing).contains(&"docs/c.txt".to_string()));
    // Only the changed file was read again: the big file was carried over.
    let details = backup_metadata(&server, &second.id).await[0]
        .details
        .clone();
    assert!(details.contains("2 files read"), "{details}");

    // Both snapshots restore byte for byte.
    assert_eq!(
        assert_restorable(&server, &second.id, source.path()).await,
        3
    );
    assert_eq!(
        assert_restorable(&server, &first.id, old_tree.path()).await,
        3
    );

    // A full verification finds nothing wrong.
    let verify = pb::create_run_request::Spec::Verify(pb::VerifySpec {
        snapshot_run_id: second.id.clone(),
        read_data_percent: 100.0,
    });
    run_to_success(&server, verify).await;

    // The catalog is lost: a fresh control plane rebuilds both snapshots
    // from the manifests in the bucket, equal to what the original had.
    let fresh = TestServer::start(Backend::Postgres).await;
    let fresh_bucket = support::register_bucket_with(
        &fresh,
        &support::S3Server::shared(),
        &bucket_name,
        pb::RepositoryEncryption::None,
    )
    .await;
    let _fresh_worker = WorkerProcess::spawn(&fresh, "e2e-rebuild");
    let rebuild = pb::RebuildCatalogRequest {
        bucket_id: fresh_bucket,
        prefix: "repo".into(),
    };
    let mut objects = fresh.admin().objects;
    let rebuilt = objects.rebuild_catalog(rebuild).await.expect("rebuild");
    let rebuild_id = rebuilt.into_inner().run_id;
    let rebuilt = wait_until_final(&fresh, &rebuild_id, Duration::from_secs(120)).await;
    assert_succeeded(&rebuilt);
    assert_eq!(listing(&fresh, &first.id).await, first_listing);
    assert_eq!(listing(&fresh, &second.id).await, second_listing);
    assert_eq!(
        assert_restorable(&fresh, &second.id, source.path()).await,
        3
    );
}
