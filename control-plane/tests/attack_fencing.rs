//! Attacks on lease fencing and worker identity, as a worker credential's
//! holder would make them, over real gRPC on both catalog backends: each is
//! refused with the right code, and nothing is recorded, changed or handed
//! out.

use crate::support;
use crate::support::lease_session;

use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_proto::v1 as pb;
use coffer_proto::v1::lease_session_request::Message as Up;
use lease_session::{attempt_key, queue_backup};
use support::{violated_fields, Backend, TestServer};
use tonic::Code;

/// Leases of a few seconds, so that "silent for half a TTL" is quick.
fn short_leases() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(3),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        attempt_deadline: Duration::from_secs(600),
    }
}

async fn workers(server: &TestServer) -> Vec<pb::Worker> {
    server.registered_workers().await
}

/// Nothing of a run was committed: no manifest key, no metadata.
async fn assert_nothing_committed(server: &TestServer, run: &pb::Run) {
    assert_eq!(run.state, pb::RunState::Running as i32, "still the owner's");
    assert!(
        server.admin().run_metadata(&run.id).await.is_empty(),
        "no metadata was recorded"
    );
}

async fn a_completion_naming_another_attempts_manifest_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, "/backups/fencing").await;
    let token = server.worker_token_for("w").await;
    let mut worker = lease_session::open(&server, &token, "w")
        .await
        .expect("session");
    worker.credit(1).await;
    let lease = worker.assignment().await;

    // The key every attempt used to share, which a zombie could overwrite.
    worker
        .succeed(&lease, format!("snapshots/{}", lease.run_id))
        .await;
    let status = worker.closed().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        violated_fields(&status),
        vec!["completion.success.manifest_key".to_string()]
    );
    let run = server.get_run(&run_id).await;
    assert_nothing_committed(&server, &run).await;

    // An earlier attempt's key is refused the same way.
    let mut again = lease_session::open(&server, &token, "w")
        .await
        .expect("session");
    let earlier = pb::LeaseRef {
        lease_token: lease.lease_token - 1,
        ..lease.clone()
    };
    again.succeed(&lease, attempt_key(&earlier)).await;
    assert_eq!(again.closed().await.code(), Code::InvalidArgument);
    assert_nothing_committed(&server, &server.get_run(&run_id).await).await;

    // The attempt's own key is what gets committed.
    let honest = lease_session::open(&server, &token, "w")
        .await
        .expect("session");
    honest.succeed(&lease, attempt_key(&lease)).await;
    let run = server
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(20), |run| {
            run.state == pb::RunState::Succeeded as i32
        })
        .await;
    assert_eq!(run.attempt, 1);
}

async fn a_worker_cannot_complete_or_extend_another_workers_lease(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, "/backups/fencing").await;
    let owner_token = server.worker_token_for("owner").await;
    let mut owner = lease_session::open(&server, &owner_token, "owner")
        .await
        .expect("session");
    owner.credit(1).await;
    let lease = owner.assignment().await;
    let before = server.get_run(&run_id).await;

    let thief_token = server.worker_token_for("thief").await;
    let mut thief = lease_session::open(&server, &thief_token, "thief")
        .await
        .expect("session");
    thief.heartbeat(std::slice::from_ref(&lease)).await;
    let extended = thief.heartbeat_ack().await;
    assert!(extended.leases.is_empty(), "the thief extended nothing");
    thief.succeed(&lease, attempt_key(&lease)).await;
    let ack = thief.ack().await;
    assert!(!ack.accepted);
    assert_eq!(ack.reason, "the lease is held by another worker");

    let after = server.get_run(&run_id).await;
    assert_nothing_committed(&server, &after).await;
    assert_eq!(
        after.worker_id, before.worker_id,
        "the owner still holds it"
    );
    assert_eq!(after.attempt, before.attempt);

    owner.succeed(&lease, attempt_key(&lease)).await;
    assert!(
        owner.ack().await.accepted,
        "the owner's own completion counts"
    );
}

/// Batches, failures and releases are fenced on the worker as completions
/// are: a thief's batch is not staged (the owner's success naming no
/// batches is then complete), its failure burns no attempt, and its release
/// does not requeue the run.
async fn a_worker_cannot_stage_fail_or_release_another_workers_lease(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, "/backups/fencing").await;
    let owner_token = server.worker_token_for("owner").await;
    let mut owner = lease_session::open(&server, &owner_token, "owner")
        .await
        .expect("session");
    owner.credit(1).await;
    let lease = owner.assignment().await;
    let before = server.get_run(&run_id).await;

    let thief_token = server.worker_token_for("thief").await;
    let mut thief = lease_session::open(&server, &thief_token, "thief")
        .await
        .expect("session");
    thief
        .send(Up::FileBatch(pb::FileBatch {
            lease: Some(lease.clone()),
            sequence: 0,
            ..Default::default()
        }))
        .await;
    thief.fail(&lease).await;
    thief
        .send(Up::Release(pb::RunRelease {
            lease: Some(lease.clone()),
            reason: "stolen".into(),
        }))
        .await;
    for write in ["file batch", "failure", "release"] {
        let ack = thief.ack().await;
        assert!(!ack.accepted, "the thief's {write} was accepted");
        assert_eq!(ack.reason, "the lease is held by another worker", "{write}");
    }

    let after = server.get_run(&run_id).await;
    assert_nothing_committed(&server, &after).await;
    assert_eq!(
        after.worker_id, before.worker_id,
        "the owner still holds it"
    );
    assert_eq!(after.attempt, before.attempt, "no attempt was burnt");

    owner.succeed(&lease, attempt_key(&lease)).await;
    assert!(
        owner.ack().await.accepted,
        "nothing of the thief's was staged"
    );
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
}

async fn a_worker_token_speaks_for_one_worker_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = server.worker_token_for("first").await;
    let first = lease_session::open(&server, &token, "first")
        .await
        .expect("session");
    let registered = workers(&server).await;

    // The same credential under another name: refused, and no worker appears.
    let status = lease_session::open(&server, &token, "second")
        .await
        .err()
        .expect("a second identity is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        !status.message().contains("coffer_"),
        "no secret in {status:?}"
    );

    // Another credential under the first one's name: refused, and the
    // registration (labels, source roots) is not taken over.
    let other = server.worker_token_for("intruder").await;
    let status = lease_session::open(&server, &other, "first")
        .await
        .err()
        .expect("a name registered with another credential is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let now = workers(&server).await;
    assert_eq!(now.len(), registered.len(), "no worker was added: {now:?}");
    let (was, is) = (&registered[0], &now[0]);
    assert_eq!(
        (&is.name, &is.labels, &is.id),
        (&was.name, &was.labels, &was.id)
    );
    drop(first);
}

async fn a_new_session_of_the_same_worker_replaces_the_old_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run_id = queue_backup(&server, "/backups/fencing").await;
    let token = server.worker_token_for("w").await;
    let mut old = lease_session::open(&server, &token, "w")
        .await
        .expect("session");
    old.credit(1).await;
    let lease = old.assignment().await;

    let new = lease_session::open(&server, &token, "w")
        .await
        .expect("the same worker may reconnect");
    let status = old.closed().await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // The lease carried over: the new session completes it.
    new.succeed(&lease, attempt_key(&lease)).await;
    server
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(20), |run| {
            run.state == pb::RunState::Succeeded as i32
        })
        .await;
}

async fn a_silent_worker_is_pushed_no_runs(backend: Backend) {
    let server = TestServer::start_with_leases(backend, short_leases()).await;
    let token = server.worker_token_for("quiet").await;
    let mut worker = lease_session::open(&server, &token, "quiet")
        .await
        .expect("session");
    worker.credit(1).await;
    // Silent for more than half a TTL (as a frozen worker is)...
    assert!(worker.next_within(Duration::from_secs(2)).await.is_none());
    let run_id = queue_backup(&server, "/backups/fencing").await;
    // ...it is offered nothing while it stays silent...
    assert!(
        worker.next_within(Duration::from_secs(2)).await.is_none(),
        "a run was pushed to a silent worker"
    );
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Queued as i32);
    assert_eq!(run.attempt, 0, "no attempt was spent on it");
    // ...and gets the run as soon as it speaks again.
    worker.heartbeat(&[]).await;
    let lease = worker.assignment().await;
    assert_eq!(lease.run_id, run_id);
}

both_backends!(
    a_completion_naming_another_attempts_manifest_is_refused,
    a_worker_cannot_complete_or_extend_another_workers_lease,
    a_worker_cannot_stage_fail_or_release_another_workers_lease,
    a_worker_token_speaks_for_one_worker_only,
    a_new_session_of_the_same_worker_replaces_the_old_one,
    a_silent_worker_is_pushed_no_runs,
);
