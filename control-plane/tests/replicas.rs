//! Run changes across control-plane replicas on one PostgreSQL: what one
//! replica changes, every other announces on its own run channel (the one
//! `WatchRun`, the lease sessions and the audit log listen on), also after
//! the connection that listens for them was cut. SQLite serves one replica,
//! so these run on PostgreSQL only.

mod support;

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
