//! Retention and garbage collection end to end: a control plane on
//! PostgreSQL, a real worker process, and a repository on Garage or on a
//! filesystem path. Applying a policy removes exactly the snapshots the plan
//! listed, from the catalog and from storage; two collections later the
//! space they alone used is given back, and what is kept still restores.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::worker_api::Store;
use tonic::Code;

use support::{
    assert_restorable, assert_succeeded, backup_job, bucket_target, collect_garbage,
    create_job_into, garage_bucket, keep_last_policy, noise, pack_bytes, plan_retention,
    wait_until_final, write, WorkerProcess,
};

/// (path, version id, content hash) of every file of a snapshot.
async fn contents(server: &TestServer, run_id: &str) -> Vec<(String, String, String)> {
    support::snapshot_files(server, run_id)
        .await
        .into_iter()
        .map(|file| {
            let version = file.version.expect("version");
            (file.path, version.id, version.content_hash)
        })
        .collect()
}

/// Three snapshots of a tree whose big file is replaced each time; a
/// keep-last-1 policy is applied and the repository collected.
async fn assert_apply_and_collect_give_space_back(
    server: &TestServer,
    target: pb::Target,
    store: &Arc<Store>,
) {
    let source = tempfile::tempdir().expect("source dir");
    write(
        &source.path().join("notes.txt"),
        b"kept in every snapshot\n",
    );
    let policy = keep_last_policy(server, 1).await;
    let job_id = create_job_into(server, source.path(), target.clone(), &policy).await;
    let _worker = WorkerProcess::spawn(server, "retention");

    let mut snapshots = Vec::new();
    for round in 0..3u64 {
        let _ = std::fs::remove_file(
            source
                .path()
                .join(format!("big{}.bin", round.wrapping_sub(1))),
        );
        write(
            &source.path().join(format!("big{round}.bin")),
            &noise(4 << 20, 40 + round),
        );
        snapshots.push(backup_job(server, &job_id).await);
    }
    let newest = snapshots.last().expect("three snapshots").id.clone();

    // The plan keeps the newest only.
    let plan = plan_retention(server, &job_id).await;
    let mut planned_removals: Vec<String> = plan
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.run_id.clone())
        .collect();
    planned_removals.sort();
    let mut older: Vec<String> = snapshots[..2].iter().map(|r| r.id.clone()).collect();
    older.sort();
    assert_eq!(planned_removals, older);

    let with_all = pack_bytes(store).await;
    let newest_files = contents(server, &newest).await;
    let apply = pb::ApplyRetentionRequest {
        job_id: job_id.clone(),
        ..Default::default()
    };
    let mut retention = server.admin().retention;
    let applied = retention.apply_retention(apply).await.expect("apply");
    let applied = applied.into_inner();
    let applied = wait_until_final(server, &applied.run_id, Duration::from_secs(120)).await;
    assert_succeeded(&applied);
    // Apply removed exactly what the plan listed.
    let Some(pb::run::Spec::Retention(spec)) = applied.spec else {
        panic!("a retention run carries a retention spec")
    };
    let mut removed = spec.removed_run_ids.clone();
    removed.sort();
    assert_eq!(removed, planned_removals);
    for id in &removed {
        let status = server
            .admin()
            .get_run(id)
            .await
            .expect_err("a removed snapshot is gone from the catalog");
        assert_eq!(status.code(), Code::NotFound);
        let manifest = format!("snapshots/{id}");
        assert!(!store
            .exists(&manifest, &tokio_util::sync::CancellationToken::new())
            .await
            .expect("exists"));
    }
    // The kept snapshot lists the same files and versions as before (the
    // versions it shares with removed snapshots now start at it).
    assert_eq!(contents(server, &newest).await, newest_files);
    // Applying again removes nothing more.
    let again = plan_retention(server, &job_id).await;
    assert_eq!(again.decisions.len(), 1);
    assert!(again.decisions[0].keep);

    // Retention alone deletes no data; two collections do.
    assert_eq!(pack_bytes(store).await, with_all);
    let first = collect_garbage(server, &target).await;
    assert_eq!(first.progress.expect("progress").bytes_done, 0);
    let second = collect_garbage(server, &target).await;
    let after = pack_bytes(store).await;
    assert!(
        after < with_all / 2,
        "{after} of {with_all} bytes of packs left; {}",
        second.error
    );
    assert!(after >= 4 << 20, "the newest snapshot's data stays");
    assert_eq!(assert_restorable(server, &newest, source.path()).await, 2);

    // A later backup still builds on the kept snapshot and restores.
    write(&source.path().join("later.txt"), b"after the collection\n");
    let later = backup_job(server, &job_id).await;
    assert_eq!(assert_restorable(server, &later.id, source.path()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_collect_gives_space_back_on_garage() {
    let server = TestServer::start(Backend::Postgres).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let target = bucket_target(&bucket_id, "repo");
    assert_apply_and_collect_give_space_back(&server, target, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_then_collect_gives_space_back_on_a_filesystem_target() {
    let server = TestServer::start(Backend::Sqlite).await;
    let repository = tempfile::tempdir().expect("repository dir");
    let path = repository.path().display().to_string();
    let target = pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.clone())),
    };
    let store = Store::open(
        &pb::ResolvedTarget {
            filesystem_path: path,
            ..Default::default()
        },
        "",
    )
    .await
    .expect("filesystem store");
    assert_apply_and_collect_give_space_back(&server, target, &Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collection_of_a_repository_is_refused_while_one_is_queued() {
    let server = TestServer::start(Backend::Sqlite).await;
    let repository = tempfile::tempdir().expect("repository dir");
    let target = pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(
            repository.path().display().to_string(),
        )),
    };
    let admin = server.admin();
    let collection = || {
        pb::create_run_request::Spec::GarbageCollection(pb::GarbageCollectionSpec {
            target: Some(target.clone()),
            ..Default::default()
        })
    };
    let run = admin
        .create_run(collection())
        .await
        .expect("first collection");
    let Some(pb::run::Spec::GarbageCollection(spec)) = run.spec else {
        panic!("a collection carries its spec")
    };
    assert_eq!(spec.grace_period.expect("grace").seconds, 3600);
    assert_eq!(spec.repack_threshold_percent, 50.0);
    let refused = admin
        .create_run(collection())
        .await
        .expect_err("second refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let bad_values = pb::GarbageCollectionSpec {
        target: Some(target.clone()),
        grace_period: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        repack_threshold_percent: 150.0,
    };
    let bad = admin
        .create_run(pb::create_run_request::Spec::GarbageCollection(bad_values))
        .await
        .expect_err("bad values refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("grace_period"), "{}", bad.message());
    assert!(
        bad.message().contains("repack_threshold_percent"),
        "{}",
        bad.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_apply_after_backup_each_backup_prunes_its_job() {
    let server = TestServer::start(Backend::Sqlite).await;
    let apply_after_backup = pb::CreateConfigurationRequest {
        configuration: Some(pb::Configuration {
            key: "retention_apply_after_backup".into(),
            value: "true".into(),
            ..Default::default()
        }),
    };
    let mut configurations = server.admin().configurations;
    let configured = configurations.create_configuration(apply_after_backup);
    configured.await.expect("configure");
    let repository = tempfile::tempdir().expect("repository dir");
    let target = pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(
            repository.path().display().to_string(),
        )),
    };
    let source = tempfile::tempdir().expect("source dir");
    write(&source.path().join("a.txt"), b"first\n");
    let policy = keep_last_policy(&server, 1).await;
    let job_id = create_job_into(&server, source.path(), target, &policy).await;
    let _worker = WorkerProcess::spawn(&server, "pruning");

    let first = backup_job(&server, &job_id).await;
    write(&source.path().join("a.txt"), b"second\n");
    let second = backup_job(&server, &job_id).await;

    // The retention run queued after the second backup removes the first.
    // It is queued in the background once the backup has succeeded, and
    // what is awaited is a run's removal, which WatchRun cannot report: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match server.admin().get_run(&first.id).await {
            Err(status) if status.code() == Code::NotFound => break,
            Ok(_) => {}
            Err(status) => panic!("get run: {status}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first snapshot was not pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        assert_restorable(&server, &second.id, source.path()).await,
        1
    );
}
