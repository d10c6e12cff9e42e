//! Run changes across control-plane replicas on one PostgreSQL: what one
//! replica changes, every other announces on its own run channel (the one
//! `WatchRun`, the lease sessions and the audit log listen on), also after
//! the connection that listens for them was cut; and `ListWorkers` tells
//! the same on every replica. SQLite serves one replica,
//! so these run on PostgreSQL only.

use crate::support;
use crate::support::lease_session;

use std::time::Duration;

use coffer_proto::v1 as pb;
use support::{Backend, TestServer};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Far above the milliseconds a notification takes, far below anything a
/// periodic re-read would explain (there is none on this channel).
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(10);

async fn queue_backup(server: &TestServer) -> String {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: "/data/source".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/backups/replicas".into(),
            )),
        }),
        ..Default::default()
    });
    server.admin().queue_run(spec).await
}

/// Waits until `events` announces run `id`.
async fn announced(events: &mut broadcast::Receiver<Uuid>, id: &str) {
    let id = Uuid::parse_str(id).expect("run id");
    let waiting = async {
        loop {
            match events.recv().await {
                Ok(announced) if announced == id => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("run channel closed"),
            }
        }
    };
    tokio::time::timeout(ANNOUNCED_WITHIN, waiting)
        .await
        .unwrap_or_else(|_| panic!("run {id} was not announced within {ANNOUNCED_WITHIN:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_changed_through_one_replica_is_announced_by_the_others() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let mut heard_by_first = first.catalog().subscribe_runs();

    let run_id = queue_backup(&second).await;
    announced(&mut heard_by_first, &run_id).await;

    let mut heard_by_second = second.catalog().subscribe_runs();
    first.admin().cancel_run(&run_id).await.expect("cancel");
    announced(&mut heard_by_second, &run_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_listening_connection_was_cut_catches_up() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let mut heard_by_first = first.catalog().subscribe_runs();

    // Cut every connection listening for run changes (both replicas'); a
    // change made at once is notified while nobody listens, and is found
    // again by the catch-up after the reconnect.
    second
        .catalog()
        .execute_raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await
        .expect("terminate the listening connections");
    let run_id = queue_backup(&second).await;
    announced(&mut heard_by_first, &run_id).await;

    // And the relay listens again: a later change arrives as a notification.
    let later = queue_backup(&second).await;
    announced(&mut heard_by_first, &later).await;
}

/// The workers `server` lists, offline ones too when `include_offline`.
async fn listed_workers(server: &TestServer, include_offline: bool) -> Vec<pb::Worker> {
    let request = pb::ListWorkersRequest { include_offline };
    let mut workers = server.admin().workers;
    workers
        .list_workers(request)
        .await
        .expect("list workers")
        .into_inner()
        .workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_a_replica_that_died_is_not_listed_connected_by_the_others() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let token = first.worker_token_for("on-first").await;
    let _session = lease_session::open(&first, &token, "on-first")
        .await
        .expect("session on the first replica");
    let listed = listed_workers(&second, false).await;
    assert!(
        listed.iter().any(|w| w.name == "on-first" && w.connected),
        "the other replica lists the worker connected: {listed:?}"
    );

    // The first replica dies: nobody marks the worker disconnected, and its
    // row is no longer touched. A TTL of that silence, as the row shows it:
    second
        .catalog()
        .execute_raw("UPDATE workers SET last_seen_time = last_seen_time - interval '1 hour'")
        .await
        .expect("age the worker row");
    let listed = listed_workers(&second, false).await;
    assert!(
        listed.iter().all(|w| w.name != "on-first"),
        "a worker silent for a TTL is offline: {listed:?}"
    );
    let all = listed_workers(&second, true).await;
    let worker = all
        .iter()
        .find(|w| w.name == "on-first")
        .expect("listed with the offline workers");
    assert!(!worker.connected, "shown disconnected: {worker:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_does_not_wait_for_the_worker_of_a_replica_that_died() {
    let first = TestServer::start(Backend::Postgres).await;
    let second = first.start_replica().await;
    let token = first.worker_token_for("on-first").await;
    // The session announces no credit, so the run stays queued.
    let _session = lease_session::open(&first, &token, "on-first")
        .await
        .expect("session on the first replica");
    let run_id = queue_backup(&second).await;
    let run = second.get_run(&run_id).await;
    assert_eq!(
        run.waiting_reason,
        pb::WaitingReason::Ready as i32,
        "while the worker's replica lives, the run waits for its free slot: {}",
        run.waiting_message
    );

    // The first replica dies: its worker's row is no longer touched.
    second
        .catalog()
        .execute_raw("UPDATE workers SET last_seen_time = last_seen_time - interval '1 hour'")
        .await
        .expect("age the worker row");
    let run = second.get_run(&run_id).await;
    assert_eq!(
        run.waiting_reason,
        pb::WaitingReason::NoMatchingWorker as i32,
        "a worker silent for a TTL is not counted: {}",
        run.waiting_message
    );
    assert_eq!(run.waiting_message, "no worker is connected");
}
