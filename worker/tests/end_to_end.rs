//! End to end: a real control plane (in-process, real gRPC over loopback, real
//! PostgreSQL) and real `coffer-worker` processes moving real files to a
//! filesystem target and to Garage.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::{authed, Backend, TestServer};
use coffer_proto::v1 as pb;
use coffer_worker::store::Store;
use pb::run_service_client::RunServiceClient;
use tokio_util::sync::CancellationToken;

/// A `coffer-worker` child process, killed when dropped.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(server: &TestServer, name: &str) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_coffer-worker"))
            .args([
                "--control-plane",
                &format!("http://{}", server.addr),
                "--name",
                name,
                "--slots",
                "2",
            ])
            .env("COFFER_WORKER_TOKEN", &server.worker_token)
            .env("COFFER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn coffer-worker");
        WorkerProcess { child }
    }

    fn kill_hard(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write source file");
}

/// Pseudo-random, incompressible bytes without a dependency.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

async fn create_run(server: &TestServer, source: &Path, target: pb::target::Destination) -> String {
    let mut runs = RunServiceClient::new(server.channel().await);
    runs.create_run(authed(
        &server.admin_token,
        pb::CreateRunRequest {
            spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
                source_path: source.display().to_string(),
                target: Some(pb::Target {
                    destination: Some(target),
                }),
                ..Default::default()
            })),
            request_id: String::new(),
        },
    ))
    .await
    .expect("create run")
    .into_inner()
    .run
    .expect("run")
    .id
}

/// Follows WatchRun until the run is final.
async fn wait_until_final(server: &TestServer, id: &str, limit: Duration) -> pb::Run {
    let mut runs = RunServiceClient::new(server.channel().await);
    let mut stream = runs
        .watch_run(authed(
            &server.admin_token,
            pb::WatchRunRequest { id: id.into() },
        ))
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(limit, async {
        let mut last = None;
        while let Some(update) = stream.message().await.expect("watch stream") {
            last = update.run;
        }
        last.expect("at least one update")
    })
    .await
    .unwrap_or_else(|_| panic!("run {id} did not finish within {limit:?}"))
}

async fn snapshot_files(server: &TestServer, run_id: &str) -> Vec<pb::SnapshotFile> {
    let mut objects = pb::object_service_client::ObjectServiceClient::new(server.channel().await);
    let mut files = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = objects
            .list_snapshot_files(authed(
                &server.admin_token,
                pb::ListSnapshotFilesRequest {
                    run_id: run_id.into(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    path_prefix: String::new(),
                },
            ))
            .await
            .expect("snapshot files")
            .into_inner();
        files.extend(page.files);
        if page.next_page_token.is_empty() {
            return files;
        }
        page_token = page.next_page_token;
    }
}

/// Every regular file of the snapshot, read back from the store, equals the source.
async fn assert_restorable(
    server: &TestServer,
    run_id: &str,
    source: &Path,
    store: &Store,
) -> usize {
    let cancel = CancellationToken::new();
    let mut checked = 0;
    for file in snapshot_files(server, run_id).await {
        let version = file.version.expect("version");
        if version.kind != pb::FileKind::Regular as i32 {
            continue;
        }
        let hash = &version.content_hash;
        let stored = store
            .get_bytes(&format!("data/{}/{hash}", &hash[..2]), &cancel)
            .await
            .unwrap_or_else(|e| panic!("content of {} missing: {e}", file.path));
        let original = std::fs::read(source.join(&file.path)).expect("read source");
        assert!(stored == original, "{} differs from its backup", file.path);
        checked += 1;
    }
    checked
}

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
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "run failed: {}",
        run.error
    );

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
    assert_eq!(
        assert_restorable(&server, &run_id, source.path(), &store).await,
        4
    );
    // Identical files are stored once: three distinct contents (the empty one included).
    let objects = store
        .list("data/", &CancellationToken::new())
        .await
        .expect("list");
    assert_eq!(objects.len(), 3, "{objects:?}");
    assert!(target
        .path()
        .join(format!("snapshots/{run_id}.json"))
        .exists());

    let mut metadata = pb::backup_metadata_service_client::BackupMetadataServiceClient::new(
        server.channel().await,
    );
    let records = metadata
        .list_backup_metadata(authed(
            &server.admin_token,
            pb::ListBackupMetadataRequest {
                run_id: run_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("metadata")
        .into_inner()
        .backup_metadata;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].size_bytes, (3 << 20) + 2 * 13);
}

async fn garage_bucket(server: &TestServer) -> (String, Arc<Store>) {
    let endpoint = std::env::var("COFFER_TEST_S3_ENDPOINT")
        .expect("COFFER_TEST_S3_ENDPOINT: start Garage with `eval \"$(scripts/start-garage.sh)\"` (scripts/test.sh does)");
    let region = std::env::var("COFFER_TEST_S3_REGION").unwrap_or_else(|_| "garage".into());
    let name = format!(
        "coffer-e2e-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let resolved = pb::ResolvedTarget {
        bucket: Some(pb::ResolvedBucket {
            endpoint: endpoint.clone(),
            bucket: name.clone(),
            region: region.clone(),
            force_path_style: true,
            credentials_ref: "env:COFFER_TEST_S3".into(),
            prefix: "repo".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let store = Store::open(&resolved, "").await.expect("open garage");
    let Store::S3(s3) = &store else {
        panic!("S3 store expected")
    };
    s3.ensure_bucket(&CancellationToken::new())
        .await
        .expect("create bucket");

    let mut buckets = pb::bucket_service_client::BucketServiceClient::new(server.channel().await);
    let bucket = buckets
        .create_bucket(authed(
            &server.admin_token,
            pb::CreateBucketRequest {
                bucket: Some(pb::Bucket {
                    name: name.clone(),
                    location: Some(pb::bucket::Location::S3(pb::S3Location {
                        endpoint,
                        bucket: name,
                        region,
                        force_path_style: true,
                        credentials_ref: "env:COFFER_TEST_S3".into(),
                    })),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("register bucket")
        .into_inner()
        .bucket
        .expect("bucket");
    (bucket.id, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_upload_is_replaced_and_nothing_is_lost_or_duplicated() {
    let settings = LeaseSettings {
        ttl: Duration::from_secs(3),
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
            &noise(48 << 20, index + 1),
        );
    }
    let run_id = create_run(
        &server,
        source.path(),
        pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id,
            prefix: "repo".into(),
        }),
    )
    .await;

    let mut doomed = WorkerProcess::spawn(&server, "doomed");
    // Kill it as soon as its first content object lands in the bucket: it
    // is uploading and far from done (progress itself only arrives with
    // heartbeats, too late to rely on).
    let cancel = CancellationToken::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let uploaded = store.list("data/", &cancel).await.expect("list bucket");
        if !uploaded.is_empty() {
            assert!(
                uploaded.len() < 6,
                "everything was uploaded before the kill; make the corpus bigger"
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
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "run failed: {}",
        run.error
    );
    assert_eq!(run.attempt, 2, "the second attempt finished the run");
    assert_eq!(
        assert_restorable(&server, &run_id, source.path(), &store).await,
        6
    );
    let objects = store
        .list("data/", &CancellationToken::new())
        .await
        .expect("list");
    assert_eq!(
        objects.len(),
        6,
        "each content stored exactly once: {objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_mid_run_loses_nothing() {
    let settings = LeaseSettings {
        ttl: Duration::from_secs(15),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        attempt_deadline: Duration::from_secs(600),
    };
    let server = TestServer::start_with_leases(Backend::Postgres, settings).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let source = tempfile::tempdir().expect("source dir");
    for index in 0..6u64 {
        write(
            &source.path().join(format!("part-{index}.bin")),
            &noise(48 << 20, index + 100),
        );
    }
    let run_id = create_run(
        &server,
        source.path(),
        pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id,
            prefix: "repo".into(),
        }),
    )
    .await;
    let _worker = WorkerProcess::spawn(&server, "steady");
    // Restart as soon as the worker holds the lease: the upload is in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let run = server.get_run(&run_id).await;
        if run.state == pb::RunState::Running as i32 {
            break;
        }
        assert_eq!(
            run.state,
            pb::RunState::Queued as i32,
            "unexpected state before the restart"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run was never leased"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let server = server.restart().await;
    let run = wait_until_final(&server, &run_id, Duration::from_secs(300)).await;
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "run failed: {}",
        run.error
    );
    assert_eq!(
        run.attempt, 1,
        "the worker kept its lease across the restart"
    );
    assert_eq!(
        assert_restorable(&server, &run_id, source.path(), &store).await,
        6
    );
}
