//! The lease protocol over real gRPC streams, with scripted workers: what
//! the control plane promises any worker, on both catalog backends.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::scrape::scrape_until;
use coffer_proto::v1 as pb;
use coffer_proto::v1::lease_session_request::Message as Up;
use coffer_proto::v1::lease_session_response::Message as Down;
use support::{Backend, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A worker driven step by step by the test.
struct ScriptedWorker {
    tx: mpsc::Sender<pb::LeaseSessionRequest>,
    rx: Streaming<pb::LeaseSessionResponse>,
}

impl ScriptedWorker {
    async fn connect(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> ScriptedWorker {
        let (tx, rx) = mpsc::channel(256);
        let hello = pb::WorkerHello {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            slots: 4,
            ..Default::default()
        };
        tx.send(up(Up::Hello(hello))).await.expect("send hello");
        let token = server.worker_token_for(name).await;
        let mut workers = server.as_user(&token).workers;
        let rx = workers.lease_session(ReceiverStream::new(rx)).await;
        let rx = rx.expect("open session").into_inner();
        let mut worker = ScriptedWorker { tx, rx };
        match worker.next().await {
            Down::Welcome(welcome) => assert!(!welcome.worker_id.is_empty()),
            other => panic!("expected welcome, got {other:?}"),
        }
        worker
    }

    async fn send(&self, message: Up) {
        self.tx.send(up(message)).await.expect("session open");
    }

    async fn credit(&self, free_slots: i32) {
        self.send(Up::Credit(pb::WorkerCredit { free_slots })).await;
    }

    async fn next(&mut self) -> Down {
        let message = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("control plane answered within 20 s")
            .expect("stream healthy")
            .expect("stream open");
        message.message.expect("message set")
    }

    async fn assignment(&mut self) -> pb::LeaseRef {
        loop {
            if let Down::Assignment(assignment) = self.next().await {
                return assignment.lease.expect("lease");
            }
        }
    }

    async fn ack(&mut self) -> pb::LeaseAck {
        loop {
            if let Down::Ack(ack) = self.next().await {
                return ack;
            }
        }
    }

    async fn succeed(&mut self, lease: &pb::LeaseRef, batch_count: i64) -> pb::LeaseAck {
        self.send(Up::Completion(pb::RunCompletion {
            lease: Some(lease.clone()),
            outcome: Some(pb::run_completion::Outcome::Success(pb::RunSuccess {
                size_bytes: 42,
                details: "scripted".into(),
                manifest_key: format!("snapshots/{}.{}", lease.run_id, lease.lease_token),
                parent_run_id: String::new(),
                ..Default::default()
            })),
            progress: None,
            batch_count,
        }))
        .await;
        self.ack().await
    }

    async fn fail(&mut self, lease: &pb::LeaseRef, error: &str, retryable: bool) -> pb::LeaseAck {
        self.send(Up::Completion(pb::RunCompletion {
            lease: Some(lease.clone()),
            outcome: Some(pb::run_completion::Outcome::Failure(pb::RunFailure {
                error: error.into(),
                retryable,
            })),
            progress: None,
            batch_count: 0,
        }))
        .await;
        self.ack().await
    }

    async fn heartbeat(&self, lease: &pb::LeaseRef) {
        self.send(Up::Heartbeat(pb::WorkerHeartbeat {
            leases: vec![pb::LeaseProgress {
                lease: Some(lease.clone()),
                progress: Some(pb::RunProgress {
                    files_done: 7,
                    ..Default::default()
                }),
            }],
        }))
        .await;
    }
}

fn up(message: Up) -> pb::LeaseSessionRequest {
    pb::LeaseSessionRequest {
        message: Some(message),
    }
}

/// Leases that expire within seconds, so that tests can wait for expiry;
/// long enough that a worker taking a few steps on a loaded machine keeps
/// its lease without heartbeating.
fn fast_leases() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(3),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        attempt_deadline: Duration::from_secs(600),
    }
}

async fn queue_backup(server: &TestServer, selector: &[(&str, &str)]) -> String {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: "/data/source".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/backups/scripted".into(),
            )),
        }),
        worker_selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    });
    server.admin().queue_run(spec).await
}

/// Waits for a run to reach `state`, following WatchRun.
async fn wait_for_state(server: &TestServer, id: &str, state: pb::RunState) -> pb::Run {
    let limit = Duration::from_secs(30);
    server
        .admin()
        .wait_for_run(id, limit, |run| run.state == state as i32)
        .await
}

async fn queued_run_is_pushed_to_a_worker_with_credit(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    assert_eq!(lease.run_id, run_id);
    assert_eq!(lease.lease_token, 1);
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Running as i32);
    assert_eq!(run.attempt, 1);
    assert!(!run.worker_id.is_empty());

    let ack = worker.succeed(&lease, 0).await;
    assert!(ack.accepted, "{ack:?}");
    let run = wait_for_state(&server, &run_id, pb::RunState::Succeeded).await;
    assert!(run.finish_time.is_some());
}

async fn zombie_worker_cannot_complete_a_run(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let metrics = server.serve_metrics().await;
    let run_id = queue_backup(&server, &[]).await;
    let mut zombie = ScriptedWorker::connect(&server, "zombie", &[]).await;
    zombie.credit(1).await;
    let old_lease = zombie.assignment().await;
    zombie.credit(0).await;

    // The zombie stops heartbeating: its lease expires and the run is requeued.
    wait_for_state(&server, &run_id, pb::RunState::Queued).await;
    let mut healthy = ScriptedWorker::connect(&server, "healthy", &[]).await;
    healthy.credit(1).await;
    let new_lease = healthy.assignment().await;
    assert_eq!(new_lease.run_id, run_id);
    assert!(new_lease.lease_token > old_lease.lease_token);

    // Everything the zombie says now is refused and changes nothing.
    zombie.heartbeat(&old_lease).await;
    let ack = zombie.succeed(&old_lease, 0).await;
    assert!(!ack.accepted, "zombie completion must be refused");
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Running as i32);
    assert_eq!(run.progress.map(|p| p.files_done).unwrap_or_default(), 0);

    let ack = healthy.succeed(&new_lease, 0).await;
    assert!(ack.accepted);
    let run = wait_for_state(&server, &run_id, pb::RunState::Succeeded).await;
    assert_eq!(run.attempt, 2);
    assert!(run.error.is_empty());

    // Two grants, one expiry that requeued the run, one succeeded backup.
    let succeeded = r#"coffer_runs_finished_total{kind="backup",state="succeeded"}"#;
    let counted = scrape_until(&metrics, |s| s.value(succeeded) == 1.0).await;
    assert_eq!(counted.value("coffer_lease_grants_total"), 2.0);
    assert_eq!(counted.value("coffer_lease_expiries_total"), 1.0);
    assert_eq!(counted.value("coffer_lease_requeues_total"), 1.0);
}

async fn completion_retried_after_a_timeout_is_idempotent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    assert!(worker.succeed(&lease, 0).await.accepted);
    assert!(
        worker.succeed(&lease, 0).await.accepted,
        "a repeated completion gets the same answer"
    );
    let records = server.admin().run_metadata(&run_id).await;
    assert_eq!(
        records.len(),
        1,
        "exactly one automatic record: {records:?}"
    );
    assert_eq!(records[0].source, pb::MetadataSource::Automatic as i32);
    assert_eq!(records[0].size_bytes, 42);
}

async fn released_run_is_requeued_without_using_an_attempt(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "draining", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    worker.credit(0).await;
    worker
        .send(Up::Release(pb::RunRelease {
            lease: Some(lease.clone()),
            reason: "worker draining".into(),
        }))
        .await;
    assert!(worker.ack().await.accepted);
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Queued as i32);
    assert_eq!(run.attempt, 0, "a release must not use up an attempt");

    let mut other = ScriptedWorker::connect(&server, "other", &[]).await;
    other.credit(1).await;
    let second = other.assignment().await;
    assert!(
        second.lease_token > lease.lease_token,
        "tokens never repeat"
    );
    assert_eq!(server.get_run(&run_id).await.attempt, 1);
}

async fn cancellation_reaches_the_running_worker(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;

    server.admin().cancel_run(&run_id).await.expect("cancel");
    loop {
        if let Down::Revocation(revocation) = worker.next().await {
            assert_eq!(revocation.lease.expect("lease").run_id, run_id);
            assert_eq!(revocation.reason, "cancelled");
            break;
        }
    }
    // The worker stops and says so: that acknowledgement ends the run.
    let ack = worker.fail(&lease, "cancelled", true).await;
    assert!(ack.accepted);
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Cancelled as i32);
    assert!(
        run.error.starts_with("cancelled on request") && !run.error.contains("lease expired"),
        "the error says the run was cancelled: {}",
        run.error
    );
}

async fn success_reported_after_an_accepted_cancel_ends_cancelled(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;

    // The worker finished before the cancel reached it; its success comes
    // after the cancel was accepted, so the cancel wins.
    server.admin().cancel_run(&run_id).await.expect("cancel");
    let ack = worker.succeed(&lease, 0).await;
    assert!(ack.accepted, "the completion is answered: {}", ack.reason);
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Cancelled as i32);
    assert!(
        run.error.starts_with("cancelled on request"),
        "{}",
        run.error
    );
    assert!(
        server.admin().run_metadata(&run_id).await.is_empty(),
        "no backup metadata for a cancelled run"
    );
}

async fn cancelled_run_of_a_lost_worker_ends_cancelled(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "lost", &[]).await;
    worker.credit(1).await;
    worker.assignment().await;
    drop(worker);
    server.admin().cancel_run(&run_id).await.expect("cancel");
    wait_for_state(&server, &run_id, pb::RunState::Cancelled).await;
}

async fn retryable_failures_requeue_until_the_last_attempt(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let metrics = server.serve_metrics().await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    let max_attempts = server.get_run(&run_id).await.max_attempts;
    assert!(max_attempts >= 2);
    for attempt in 1..=max_attempts {
        worker.credit(1).await;
        let lease = worker.assignment().await;
        assert!(
            worker
                .fail(&lease, &format!("disk full #{attempt}"), true)
                .await
                .accepted
        );
        if attempt < max_attempts {
            let run = server.get_run(&run_id).await;
            assert_eq!(
                run.state,
                pb::RunState::Queued as i32,
                "requeued after attempt {attempt}"
            );
            assert!(run.not_before_time.is_some());
        }
    }
    let run = wait_for_state(&server, &run_id, pb::RunState::Failed).await;
    assert_eq!(run.attempt, max_attempts);
    let failed = r#"coffer_runs_finished_total{kind="backup",state="failed"}"#;
    let counted = scrape_until(&metrics, |s| s.value(failed) == 1.0).await;
    assert_eq!(
        counted.value("coffer_lease_requeues_total"),
        f64::from(max_attempts - 1)
    );
    assert_eq!(counted.value("coffer_lease_expiries_total"), 0.0);
    assert!(
        run.error.contains(&format!("disk full #{max_attempts}")),
        "last error kept: {}",
        run.error
    );
}

/// Nothing announces the end of a retry backoff: the coordinator's timer
/// does, long before its 10 s safety tick.
async fn a_run_is_leased_again_as_soon_as_its_backoff_ends(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    let failed_at = std::time::Instant::now();
    assert!(worker.fail(&lease, "try again", true).await.accepted);
    worker.credit(1).await;
    let again = worker.assignment().await;
    let waited = failed_at.elapsed();
    assert_eq!(again.run_id, run_id);
    assert!(again.lease_token > lease.lease_token);
    assert!(
        waited < Duration::from_secs(3),
        "leased again {waited:?} after a 50 ms backoff"
    );
}

async fn non_retryable_failure_fails_at_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    assert!(
        worker
            .fail(&lease, "source path does not exist", false)
            .await
            .accepted
    );
    let run = wait_for_state(&server, &run_id, pb::RunState::Failed).await;
    assert_eq!(run.attempt, 1);
    assert!(run.error.contains("source path does not exist"));
}

async fn heartbeats_keep_a_lease_longer_than_its_ttl(backend: Backend) {
    let settings = LeaseSettings {
        ttl: Duration::from_millis(1500),
        ..fast_leases()
    };
    let server = TestServer::start_with_leases(backend, settings).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "slow", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    // Three TTLs of work, heartbeating at a fifth of the TTL.
    for _ in 0..15 {
        worker.heartbeat(&lease).await;
        // Time passing is the point: three TTLs go by on the catalog's clock.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Running as i32);
    assert_eq!(run.attempt, 1);
    assert_eq!(run.progress.map(|p| p.files_done).unwrap_or_default(), 7);
    assert!(worker.succeed(&lease, 0).await.accepted);
}

async fn selectors_route_runs_to_matching_workers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, &[("host", "db1")]).await;
    let mut wrong = ScriptedWorker::connect(&server, "web1", &[("host", "web1")]).await;
    wrong.credit(4).await;
    let mut right = ScriptedWorker::connect(&server, "db1", &[("host", "db1")]).await;
    right.credit(1).await;
    let lease = right.assignment().await;
    assert_eq!(lease.run_id, run_id);
    // The other worker got nothing: its next message is the answer to a release of nothing.
    wrong
        .send(Up::Release(pb::RunRelease {
            lease: Some(pb::LeaseRef {
                run_id: run_id.clone(),
                lease_token: 99,
            }),
            reason: "probe".into(),
        }))
        .await;
    match wrong.next().await {
        Down::Ack(ack) => assert!(!ack.accepted),
        other => panic!("the non-matching worker was sent {other:?}"),
    }
}

async fn staged_files_become_versions_only_when_the_attempt_succeeds(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let first = worker.assignment().await;
    let batch = |lease: &pb::LeaseRef| {
        Up::FileBatch(pb::FileBatch {
            lease: Some(lease.clone()),
            files: vec![pb::FileRecord {
                path: b"docs/readme.txt".to_vec(),
                kind: "regular".into(),
                size_bytes: 5,
                mode: 0o644,
                content_hash: "ab".repeat(32),
                storage_key: "data/ab/abab".into(),
                ..Default::default()
            }],
            errors: vec![pb::RunError {
                path: "docs/secret".into(),
                message: "permission denied".into(),
                ..Default::default()
            }],
            sequence: 0,
            snapshot: None,
            exclusions: Vec::new(),
        })
    };
    worker.send(batch(&first)).await;
    assert!(worker.ack().await.accepted);
    // The first attempt fails: nothing it staged becomes visible.
    assert!(worker.fail(&first, "network", true).await.accepted);
    let mut objects = server.admin().objects;
    let listed = objects.list_objects(pb::ListObjectsRequest::default());
    let listed = listed.await.expect("list objects").into_inner();
    assert!(
        listed.objects.is_empty(),
        "failed attempt leaked objects: {listed:?}"
    );

    worker.credit(1).await;
    let second = worker.assignment().await;
    worker.send(batch(&second)).await;
    assert!(worker.ack().await.accepted);
    // The same batch resent (a retry after a lost ack) is stored once.
    worker.send(batch(&second)).await;
    assert!(worker.ack().await.accepted);
    assert!(worker.succeed(&second, 1).await.accepted);
    wait_for_state(&server, &run_id, pb::RunState::Succeeded).await;
    let snapshot = pb::ListSnapshotFilesRequest {
        run_id: run_id.clone(),
        ..Default::default()
    };
    let files = objects.list_snapshot_files(snapshot).await;
    let files = files.expect("snapshot files").into_inner().files;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "docs/readme.txt");
    let errors = pb::ListRunErrorsRequest {
        run_id: run_id.clone(),
        ..Default::default()
    };
    let mut runs = server.admin().runs;
    let errors = runs.list_run_errors(errors).await;
    let errors = errors.expect("run errors").into_inner().errors;
    assert!(
        errors
            .iter()
            .any(|e| e.path == "docs/secret" && e.attempt == 2),
        "{errors:?}"
    );
}

async fn success_with_missing_batches_is_retried(backend: Backend) {
    let server = TestServer::start_with_leases(backend, fast_leases()).await;
    let run_id = queue_backup(&server, &[]).await;
    let mut worker = ScriptedWorker::connect(&server, "w1", &[]).await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    assert!(worker.succeed(&lease, 3).await.accepted);
    let run = server.get_run(&run_id).await;
    assert_eq!(
        run.state,
        pb::RunState::Queued as i32,
        "an incomplete success is a retryable failure"
    );
    assert!(run.error.contains("0 of 3"), "{}", run.error);
}

async fn many_workers_execute_every_run_exactly_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    const RUNS: usize = 500;
    const WORKERS: usize = 8;
    let mut run_ids = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        run_ids.push(queue_backup(&server, &[]).await);
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut tasks = Vec::new();
    for index in 0..WORKERS {
        let mut worker = ScriptedWorker::connect(&server, &format!("w{index}"), &[]).await;
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            // Completions are sent without waiting, so no assignment is ever
            // skipped; a slot is free again when its completion is acknowledged.
            let mut free = 4;
            worker.credit(free).await;
            loop {
                match worker.next().await {
                    Down::Assignment(assignment) => {
                        let lease = assignment.lease.expect("lease");
                        free -= 1;
                        worker
                            .send(Up::Completion(pb::RunCompletion {
                                lease: Some(lease.clone()),
                                outcome: Some(pb::run_completion::Outcome::Success(
                                    pb::RunSuccess {
                                        manifest_key: format!(
                                            "snapshots/{}.{}",
                                            lease.run_id, lease.lease_token
                                        ),
                                        ..Default::default()
                                    },
                                )),
                                progress: None,
                                batch_count: 0,
                            }))
                            .await;
                        if done.send((index, lease.run_id)).is_err() {
                            return;
                        }
                    }
                    Down::Ack(ack) => {
                        assert!(ack.accepted, "{ack:?}");
                        free += 1;
                        worker.credit(free).await;
                    }
                    Down::Welcome(_) | Down::Revocation(_) | Down::HeartbeatAck(_) => {}
                }
            }
        }));
    }
    drop(done_tx);
    let mut executions: HashMap<String, usize> = HashMap::new();
    let mut per_worker = [0usize; WORKERS];
    while executions.values().sum::<usize>() < RUNS {
        let (index, run_id) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .expect("progress within 60 s")
            .expect("workers alive");
        *executions.entry(run_id).or_default() += 1;
        per_worker[index] += 1;
    }
    assert_eq!(executions.len(), RUNS, "every run executed");
    assert!(executions.values().all(|&n| n == 1), "a run executed twice");
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() > 1,
        "work spread over workers: {per_worker:?}"
    );
    // The last completions may still be in flight: wait for each run's final state.
    for id in &run_ids {
        wait_for_state(&server, id, pb::RunState::Succeeded).await;
    }
    for task in &tasks {
        task.abort();
    }
}

both_backends!(
    queued_run_is_pushed_to_a_worker_with_credit,
    zombie_worker_cannot_complete_a_run,
    completion_retried_after_a_timeout_is_idempotent,
    released_run_is_requeued_without_using_an_attempt,
    cancellation_reaches_the_running_worker,
    success_reported_after_an_accepted_cancel_ends_cancelled,
    cancelled_run_of_a_lost_worker_ends_cancelled,
    retryable_failures_requeue_until_the_last_attempt,
    a_run_is_leased_again_as_soon_as_its_backoff_ends,
    non_retryable_failure_fails_at_once,
    heartbeats_keep_a_lease_longer_than_its_ttl,
    selectors_route_runs_to_matching_workers,
    staged_files_become_versions_only_when_the_attempt_succeeds,
    success_with_missing_batches_is_retried,
    many_workers_execute_every_run_exactly_once,
);
