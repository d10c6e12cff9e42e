//! The fair-leasing attack with a real `coffer-worker` process: tenant A
//! floods the queue with runs no worker can take; tenant B's backup still
//! runs at once and stores B's files, while A's flood stays queued, never
//! leased, each run saying why. On both catalog backends.

use crate::support;

use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use futures::StreamExt;
use support::{assert_succeeded, snapshot_files, wait_until_final, write, WorkerProcess};

const FLOOD: usize = 200;

fn backup(source: &str, target: &str, selector: &[(&str, &str)]) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(target.into())),
        }),
        worker_selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

async fn unmatchable_flood_does_not_block_a_real_worker(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, attacker) = server.create_user("attacker").await;
    let (_, victim) = server.create_user("victim").await;
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    write(&source.path().join("notes.txt"), b"the victim's data\n");
    let source_path = source.path().display().to_string();
    let target_path = target.path().display().to_string();

    let attacker_api = server.as_user(&attacker);
    let flood_spec = backup("/data/attacker", "/backups/attacker", &[("gpu", "yes")]);
    let flooded: Vec<String> = futures::stream::iter(0..FLOOD)
        .map(|_| {
            let api = attacker_api.clone();
            let spec = flood_spec.clone();
            async move { api.queue_run(spec).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let victims_run = server
        .as_user(&victim)
        .queue_run(backup(&source_path, &target_path, &[]))
        .await;

    let _worker = WorkerProcess::spawn_with(
        &server,
        "eu-worker",
        1,
        &[("COFFER_WORKER_LABELS", "zone=eu")],
        None,
    );
    let run = wait_until_final(&server, &victims_run, Duration::from_secs(60)).await;
    assert_succeeded(&run);
    let files = snapshot_files(&server, &victims_run).await;
    assert!(
        files.iter().any(|file| file.path == "notes.txt"),
        "the victim's file was backed up: {files:?}"
    );

    let mut runs = attacker_api.runs.clone();
    let mut request = pb::ListRunsRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut seen = 0;
    loop {
        let page = runs
            .list_runs(request.clone())
            .await
            .expect("list")
            .into_inner();
        for run in &page.runs {
            assert!(flooded.contains(&run.id), "a foreign run leaked: {run:?}");
            assert_eq!(run.state, pb::RunState::Queued as i32, "{run:?}");
            assert_eq!(run.attempt, 0, "a flooded run was leased: {run:?}");
            assert_eq!(
                run.waiting_reason,
                pb::WaitingReason::NoMatchingWorker as i32
            );
            assert_eq!(
                run.waiting_message,
                "no connected worker has labels {gpu=yes}"
            );
            seen += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen, FLOOD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatchable_flood_does_not_block_a_real_worker_postgres() {
    unmatchable_flood_does_not_block_a_real_worker(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatchable_flood_does_not_block_a_real_worker_sqlite() {
    unmatchable_flood_does_not_block_a_real_worker(Backend::Sqlite).await;
}
