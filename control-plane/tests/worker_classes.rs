//! Worker classes over real gRPC on both catalog backends: retention and
//! garbage collection are leased only to maintenance (or `all`) workers and
//! wait, saying why, while only backup workers are connected; backups go
//! to any class; a class the control plane does not know is refused.

use crate::support;
use crate::support::fair_lease;

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

/// Connects a worker of `class` with one free slot and returns its first
/// assignment.
async fn first_assignment(
    server: &TestServer,
    name: &str,
    class: pb::WorkerClass,
) -> pb::RunAssignment {
    let mut client = LeaseClient::open(server, name, &worker(class)).await;
    client.credit(1).await;
    client.assignment().await
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
    let assigned = first_assignment(&server, "maintenance-1", pb::WorkerClass::Maintenance).await;
    assert_eq!(assigned.lease.as_ref().expect("lease").run_id, gc);
    assert_eq!(run_kind(&assigned), Some(pb::RunKind::GarbageCollection));
}

async fn workers_without_a_class_take_everything(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let repository = format!("/backups/classes/{}", uuid::Uuid::new_v4().simple());
    let gc = api.queue_run(garbage_collection(&repository)).await;
    let assigned = first_assignment(&server, "old-1", pb::WorkerClass::Unspecified).await;
    assert_eq!(assigned.lease.expect("lease").run_id, gc);
}

fn leased_key(assignment: &pb::RunAssignment) -> String {
    let bucket = assignment
        .target
        .as_ref()
        .and_then(|target| target.bucket.as_ref())
        .expect("a resolved bucket");
    bucket
        .credentials
        .as_ref()
        .expect("leased credentials")
        .access_key_id
        .clone()
}

async fn only_maintenance_leases_carry_the_maintenance_credentials(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, tenant) = server.create_user("tenant").await;
    let api = server.as_user(&tenant);
    let write = support::s3_secret(&api, "write-only", "WRITEKEY").await;
    let delete = support::s3_secret(&api, "maintenance", "DELETEKEY").await;
    let bucket = api
        .create_bucket(pb::Bucket {
            name: "vault".into(),
            location: Some(pb::bucket::Location::S3(pb::S3Location {
                endpoint: "http://minio:9000".into(),
                bucket: "vault".into(),
                force_path_style: true,
                secret_id: write,
                ..Default::default()
            })),
            maintenance_secret_id: delete,
            ..Default::default()
        })
        .await
        .expect("bucket");
    let target = pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket.id,
            prefix: "repo".into(),
        })),
    };
    let backup_run = api
        .queue_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/data/vault".into(),
            target: Some(target.clone()),
            ..Default::default()
        }))
        .await;
    let assigned = first_assignment(&server, "backup-1", pb::WorkerClass::Backup).await;
    assert_eq!(assigned.lease.as_ref().expect("lease").run_id, backup_run);
    assert_eq!(leased_key(&assigned), "WRITEKEY");

    let gc = api
        .queue_run(pb::create_run_request::Spec::GarbageCollection(
            pb::GarbageCollectionSpec {
                target: Some(target),
                ..Default::default()
            },
        ))
        .await;
    let assigned = first_assignment(&server, "maintenance-1", pb::WorkerClass::Maintenance).await;
    assert_eq!(assigned.lease.as_ref().expect("lease").run_id, gc);
    assert_eq!(leased_key(&assigned), "DELETEKEY");
}

async fn an_unknown_class_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::WorkerHello {
        name: "odd-1".into(),
        slots: 1,
        class: 99,
        ..Default::default()
    };
    let up = pb::LeaseSessionRequest {
        message: Some(pb::lease_session_request::Message::Hello(hello)),
    };
    tx.send(up).await.expect("send hello");
    let token = server.worker_token_for("odd-1").await;
    let mut workers = server.as_user(&token).workers;
    let opened = workers
        .lease_session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let status = match opened {
        Err(status) => status,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("the session is refused"),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hello.class"), "{status:?}");
}

both_backends!(
    garbage_collection_waits_for_a_maintenance_worker,
    workers_without_a_class_take_everything,
    only_maintenance_leases_carry_the_maintenance_credentials,
    an_unknown_class_is_refused,
);
