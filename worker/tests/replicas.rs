//! Runs across control-plane replicas, with a real `coffer-worker` process:
//! two replicas serve one PostgreSQL database, the worker is connected to
//! the first, and runs are created, watched and cancelled through the
//! second. What one replica changes reaches the other as a notification
//! within milliseconds; the replicas' periodic re-reads (a second for lease
//! assignment, five for `WatchRun`) are only a fallback, and the bounds
//! below are set between the two.

use crate::support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;

use support::{create_run, noise, write, WorkerProcess};

/// Longest wait from creation to lease for a run created through the
/// replica the worker is not connected to (the assign tick is a second).
const LEASED_WITHIN: Duration = Duration::from_millis(300);
/// Longest delay between a run's end and `WatchRun` on the other replica
/// showing it (the fallback re-read is every five seconds).
const WATCHED_WITHIN: Duration = Duration::from_millis(1500);
/// Longest time from an accepted cancel to CANCELLED: well below the lease
/// TTL (30 s), which is what a cancel waited for without the worker's
/// acknowledgement.
const CANCELLED_WITHIN: Duration = Duration::from_secs(10);

fn filesystem(path: &Path) -> pb::target::Destination {
    pb::target::Destination::FilesystemPath(path.display().to_string())
}

fn elapsed(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> Duration {
    let time = |t: Option<&prost_types::Timestamp>| {
        SystemTime::try_from(*t.expect("timestamp set")).expect("valid timestamp")
    };
    time(to).duration_since(time(from)).unwrap_or_default()
}

fn is_final(run: &pb::Run) -> bool {
    [
        pb::RunState::Succeeded,
        pb::RunState::Failed,
        pb::RunState::Cancelled,
    ]
    .iter()
    .any(|state| run.state == *state as i32)
}

/// Every update `WatchRun` on `server` sends about run `id` until it is
/// final, each with the time it arrived.
async fn watch_to_the_end(server: &TestServer, id: &str) -> Vec<(pb::Run, SystemTime)> {
    let request = pb::WatchRunRequest { id: id.to_string() };
    let mut stream = server
        .admin()
        .runs
        .watch_run(request)
        .await
        .expect("watch run")
        .into_inner();
    let mut seen = Vec::new();
    let watching = async {
        while let Some(update) = stream.message().await.expect("watch stream") {
            let run = update.run.expect("run in update");
            let done = is_final(&run);
            seen.push((run, SystemTime::now()));
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), watching)
        .await
        .expect("the run ended within 5 minutes");
    seen
}

/// Two replicas on one database, and a worker process on the first, ready:
/// it has run a backup created through its own replica.
async fn replicas_with_a_worker(
    source: &Path,
    target: &Path,
) -> (TestServer, TestServer, WorkerProcess) {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let worker = WorkerProcess::spawn_with(&first, "on-first", 1, &[], None);
    write(&source.join("warm-up.txt"), b"ready");
    let warm_up = create_run(&first, source, filesystem(target)).await;
    let run = first
        .wait_until_final(&warm_up, Duration::from_secs(120))
        .await;
    support::assert_succeeded(&run);
    (first, second, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_created_and_watched_through_another_replica_are_leased_and_followed_at_once() {
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    let (_first, second, _worker) = replicas_with_a_worker(source.path(), target.path()).await;

    for round in 0..3u64 {
        write(
            &source.path().join(format!("data-{round}.bin")),
            &noise(24 << 20, round),
        );
        let run_id = create_run(&second, source.path(), filesystem(target.path())).await;
        let seen = watch_to_the_end(&second, &run_id).await;
        let (last, arrived) = seen.last().expect("at least one update").clone();
        support::assert_succeeded(&last);

        let states: Vec<i32> = seen.iter().map(|(run, _)| run.state).collect();
        assert!(
            states.contains(&(pb::RunState::Running as i32)),
            "WatchRun on the other replica showed the run running: {states:?}"
        );
        let leased_after = elapsed(last.create_time.as_ref(), last.start_time.as_ref());
        let shown_after = SystemTime::try_from(last.finish_time.expect("finish time"))
            .ok()
            .and_then(|finished| arrived.duration_since(finished).ok())
            .unwrap_or_default();
        eprintln!("round {round}: leased {leased_after:?} after creation; final state watched {shown_after:?} after the finish");
        assert!(
            leased_after < LEASED_WITHIN,
            "a run created through the other replica waited {leased_after:?} for the worker"
        );
        assert!(
            shown_after < WATCHED_WITHIN,
            "WatchRun on the other replica showed the end {shown_after:?} late"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_replica_stops_the_worker_and_ends_the_run_cancelled() {
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    let (_first, second, _worker) = replicas_with_a_worker(source.path(), target.path()).await;
    for index in 0..8u64 {
        write(
            &source.path().join(format!("big-{index}.bin")),
            &noise(48 << 20, 700 + index),
        );
    }

    let run_id = create_run(&second, source.path(), filesystem(target.path())).await;
    let working = second
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(120), |run| {
            run.state == pb::RunState::Running as i32
        })
        .await;
    assert!(!is_final(&working));

    let cancelled_at = SystemTime::now();
    let accepted = second.admin().cancel_run(&run_id).await.expect("cancel");
    assert!(
        accepted.cancel_requested,
        "the cancel was accepted while running"
    );
    let seen = watch_to_the_end(&second, &run_id).await;
    let (run, arrived) = seen.last().expect("final update").clone();
    let took = arrived.duration_since(cancelled_at).unwrap_or_default();
    eprintln!(
        "cancelled {took:?} after the cancel was accepted: {}",
        run.error
    );
    assert_eq!(
        run.state,
        pb::RunState::Cancelled as i32,
        "the run ended cancelled: {run:?}"
    );
    assert!(
        run.error.starts_with("cancelled on request")
            && run.error.contains("the worker stopped it"),
        "the error says the worker stopped the cancelled run: {}",
        run.error
    );
    assert!(took < CANCELLED_WITHIN, "the cancel took {took:?}");

    // The worker's slot is free again: the next run succeeds.
    let next = create_run(&second, source.path(), filesystem(target.path())).await;
    let next = second
        .wait_until_final(&next, Duration::from_secs(300))
        .await;
    support::assert_succeeded(&next);
}

/// Waits (up to a minute) until one of `replicas` serves the worker
/// `worker_id`; returns its index.
async fn replica_serving(replicas: &[&TestServer], worker_id: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(index) = replicas.iter().position(|r| r.serves_worker(worker_id)) {
            return index;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica serves worker {worker_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_replica_stops_mid_backup_moves_to_another_and_finishes_the_attempt() {
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let third = first.start_replica().await;
    let replicas = [&first, &second, &third];
    // Every worker is given every replica, and starts at a random one.
    let urls: Vec<String> = replicas.iter().map(|replica| replica.url()).collect();
    let urls = urls.join(",");
    let mut workers = Vec::new();
    for name in ["roaming-1", "roaming-2"] {
        let token = first.worker_token_for(name).await;
        let args = ["--slots".to_string(), "1".to_string()];
        workers.push(WorkerProcess::spawn_at(
            &urls,
            &token,
            name,
            &args,
            &[],
            None,
        ));
    }

    // A run created through any replica is leased by a worker, wherever
    // that worker is connected.
    write(&source.path().join("small.txt"), b"through every replica");
    for replica in replicas {
        let run_id = create_run(replica, source.path(), filesystem(target.path())).await;
        let run = replica
            .wait_until_final(&run_id, Duration::from_secs(120))
            .await;
        support::assert_succeeded(&run);
    }

    // A backup long enough to outlive its worker's replica.
    for index in 0..6u64 {
        write(
            &source.path().join(format!("big-{index}.bin")),
            &noise(32 << 20, 900 + index),
        );
    }
    let run_id = create_run(&first, source.path(), filesystem(target.path())).await;
    let running = first
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(120), |run| {
            run.state == pb::RunState::Running as i32
        })
        .await;
    assert!(!is_final(&running), "the backup is still running");
    let victim = replica_serving(&replicas, &running.worker_id).await;
    replicas[victim].stop();
    let stopped_at = SystemTime::now();
    eprintln!("stopped replica {victim}, which served the busy worker");

    let survivors: Vec<&TestServer> = replicas
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != victim)
        .map(|(_, replica)| *replica)
        .collect();
    let run = survivors[0]
        .wait_until_final(&run_id, Duration::from_secs(300))
        .await;
    support::assert_succeeded(&run);
    assert_eq!(
        run.attempt, 1,
        "the run finished on its first attempt: its lease went with the worker"
    );
    let finished = SystemTime::try_from(run.finish_time.expect("finish time")).expect("time");
    assert!(
        finished > stopped_at,
        "the run was still going when its worker's replica stopped"
    );
    let now_on = replica_serving(&survivors, &running.worker_id).await;
    eprintln!("the worker moved to surviving replica {now_on}");

    // Nothing lost: the backup restores byte for byte through a survivor.
    let files = support::assert_restorable(survivors[0], &run_id, source.path()).await;
    assert_eq!(files, 7, "every file of the source is in the snapshot");
    drop(workers);
}
