//! Worker classes over real gRPC on both catalog backends: retention and
//! garbage collection are leased only to maintenance (or `all`) workers and
//! wait, saying why, while only backup workers are connected; backups go
//! to any class; a class the control plane does not know is refused.

#[path = "support/fair_lease.rs"]
mod fair_lease;
mod support;

use std::time::Duration;

use coffer_proto::v1 as pb;
use fair_lease::{backup, LeaseClient, WorkerShape};
use support::{Backend, TestServer};

fn worker(class: pb::WorkerClass) -> WorkerShape {
    WorkerShape {
        slots: 2,
        class,
        ..WorkerShape::default()
    }
}

fn garbage_collection(repository: &str) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::GarbageCollection(pb::GarbageCollectionSpec {
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                repository.to_string(),
            )),
        }),
        grace_period: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        ..Default::default()
    })
}

fn run_kind(assignment: &pb::RunAssignment) -> Option<pb::RunKind> {
    assignment
        .run
        .as_ref()
        .and_then(|run| pb::RunKind::try_from(run.kind).ok())
}

async fn garbage_collection_waits_for_a_maintenance_worker(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let repository = format!("/backups/classes/{}", uuid::Uuid::new_v4().simple());

    let mut append_only =
        LeaseClient::open(&server, "backup-1", &worker(pb::WorkerClass::Backup)).await;
    let gc = api.queue_run(garbage_collection(&repository)).await;
    let waiting = api.get_run(&gc).await.expect("own run");
    assert_eq!(
        pb::WaitingReason::try_from(waiting.waiting_reason),
        Ok(pb::WaitingReason::NoMatchingWorker)
    );
    assert!(
        waiting
            .waiting_message
            .contains("waits for a maintenance worker"),
        "{}",
        waiting.waiting_message
    );

    // The backup worker takes backups, never the collection.
    let backup_run = api.queue_run(backup("/data/classes", &[])).await;
    append_only.credit(2).await;
    let assigned = append_only.assignment().await;
    assert_eq!(assigned.lease.expect("lease").run_id, backup_run);
    assert!(
        append_only
            .assignment_within(Duration::from_millis(1500))
            .await
            .is_none(),
        "a backup-class worker was given a run that deletes"
    );
    let still = api.get_run(&gc).await.expect("own run");
    assert_eq!(
        pb::RunState::try_from(still.state),
        Ok(pb::RunState::Queued)
    );

    // A maintenance worker connects and gets it.
    let mut maintenance = LeaseClient::open(
        &server,
        "maintenance-1",
        &worker(pb::WorkerClass::Maintenance),
    )
    .await;
    maintenance.credit(1).await;
    let assigned = maintenance.assignment().await;
    assert_eq!(assigned.lease.as_ref().expect("lease").run_id, gc);
    assert_eq!(run_kind(&assigned), Some(pb::RunKind::GarbageCollection));
}

async fn workers_without_a_class_take_everything(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let repository = format!("/backups/classes/{}", uuid::Uuid::new_v4().simple());
    let gc = api.queue_run(garbage_collection(&repository)).await;
    let mut old = LeaseClient::open(&server, "old-1", &worker(pb::WorkerClass::Unspecified)).await;
    old.credit(1).await;
    let assigned = old.assignment().await;
    assert_eq!(assigned.lease.expect("lease").run_id, gc);
}

both_backends!(
    garbage_collection_waits_for_a_maintenance_worker,
    workers_without_a_class_take_everything,
);
