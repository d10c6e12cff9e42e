//! The lease configuration keys take effect: `lease_ttl_seconds` decides how
//! long a lease lives (new leases, heartbeats, the reaper, and what workers
//! are told), `retry_backoff_seconds` how long a failed attempt's run waits
//! before it may be leased again — on both catalog backends, changed while
//! the server runs.

use crate::support;
use crate::support::lease_session;

use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_proto::v1 as pb;
use lease_session::queue_backup;
use support::{Backend, TestServer};

/// The server's own settings: leases that would outlive any test, and a
/// backoff of a second, so that only a configuration key can explain a
/// lease that ends within seconds or a retry that waits for minutes.
fn server_settings() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(600),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        attempt_deadline: Duration::from_secs(3600),
    }
}

async fn reconfigure(server: &TestServer, entry: &pb::Configuration, value: &str) {
    server
        .admin()
        .update_configuration(pb::UpdateConfigurationRequest {
            configuration: Some(pb::Configuration {
                value: value.into(),
                ..entry.clone()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["value".into()],
            }),
        })
        .await
        .expect("update configuration");
}

fn seconds(duration: Option<prost_types::Duration>) -> i64 {
    duration.expect("a duration").seconds
}

async fn lease_ttl_seconds_decides_how_long_a_lease_lives(backend: Backend) {
    let server = TestServer::start_with_leases(backend, server_settings()).await;
    let token = server.worker_token_for("ttl").await;

    // A session opened before the key is set is told the server's TTL...
    let mut worker = lease_session::open(&server, &token, "ttl")
        .await
        .expect("session");
    assert_eq!(seconds(worker.welcome.lease_ttl), 600);
    let entry = server.configure("lease_ttl_seconds", "30").await;
    let run_id = queue_backup(&server, "/backups/settings").await;
    worker.credit(1).await;
    let lease = worker.assignment().await;
    assert_eq!(lease.run_id, run_id);

    // ...and picks the change up at its next heartbeat.
    reconfigure(&server, &entry, "5").await;
    worker.heartbeat(std::slice::from_ref(&lease)).await;
    let answer = worker.heartbeat_ack().await;
    assert_eq!(answer.leases, vec![lease.clone()], "the lease was extended");
    assert_eq!(seconds(answer.lease_ttl), 5, "by the configured TTL");

    // Silent from here on: the lease ends after the configured 5 s, not the
    // server's 600 s, and the run is queued again.
    let requeued = server
        .admin()
        .wait_for_run(&run_id, Duration::from_secs(30), |run| {
            run.state == pb::RunState::Queued as i32
        })
        .await;
    assert!(
        requeued.error.contains("lease expired"),
        "{}",
        requeued.error
    );

    // A new session is welcomed with the configured TTL.
    let other = server.worker_token_for("ttl-2").await;
    let fresh = lease_session::open(&server, &other, "ttl-2")
        .await
        .expect("session");
    assert_eq!(seconds(fresh.welcome.lease_ttl), 5);
    assert_eq!(seconds(fresh.welcome.heartbeat_interval), 1);
}

async fn retry_backoff_seconds_delays_the_next_attempt(backend: Backend) {
    let server = TestServer::start_with_leases(backend, server_settings()).await;
    server.configure("retry_backoff_seconds", "900").await;
    let run_id = queue_backup(&server, "/backups/settings").await;
    let token = server.worker_token_for("backoff").await;
    let mut worker = lease_session::open(&server, &token, "backoff")
        .await
        .expect("session");
    worker.credit(1).await;
    let lease = worker.assignment().await;
    worker.fail(&lease).await;
    assert!(worker.ack().await.accepted);

    let run = server.get_run(&run_id).await;
    assert_eq!(
        run.state,
        pb::RunState::Queued as i32,
        "retryable: queued again"
    );
    let finished = run.start_time.expect("the attempt started").seconds;
    let not_before = run.not_before_time.expect("a retry time").seconds;
    let waits = not_before - finished;
    assert!(
        (890..=1000).contains(&waits),
        "the first retry waits the configured 900 s (the server's own backoff is 1 s), not {waits} s"
    );
}

both_backends!(
    lease_ttl_seconds_decides_how_long_a_lease_lives,
    retry_backoff_seconds_delays_the_next_attempt,
);
