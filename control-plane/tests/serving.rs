//! Serving concerns: health follows the catalog.

use crate::support;

use std::time::Duration;

use coffer_control_plane::server::LIVENESS_SERVICE;
use support::{Backend, TestServer};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn status_of(server: &TestServer, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut health = HealthClient::new(server.channel().await);
    let response = health
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).expect("known status"))
}

/// Polls until the status is `expected`, for at most 15 s (the monitor
/// checks every 2 s). A call that fails (a loaded machine can time one out)
/// is polled again; the last outcome is reported if time runs out.
async fn wait_for_status(server: &TestServer, service: &str, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = status_of(server, service).await;
        if status.as_ref().ok() == Some(&expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service:?}: last answer {status:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn health_is_not_serving_while_the_catalog_is_unreachable(backend: Backend) {
    let server = TestServer::start(backend).await;
    wait_for_status(&server, "", ServingStatus::Serving).await;
    wait_for_status(&server, "coffer.v1.JobService", ServingStatus::Serving).await;

    // Closing the pool makes every catalog call fail, as a lost database would.
    server.catalog().close().await;
    wait_for_status(&server, "", ServingStatus::NotServing).await;
    wait_for_status(&server, "coffer.v1.RunService", ServingStatus::NotServing).await;
}

both_backends!(health_is_not_serving_while_the_catalog_is_unreachable);

/// What a liveness probe asks stays SERVING through a database outage, so
/// the outage makes replicas unready without restarting every one of them.
async fn liveness_is_serving_while_the_catalog_is_unreachable(backend: Backend) {
    let server = TestServer::start(backend).await;
    wait_for_status(&server, LIVENESS_SERVICE, ServingStatus::Serving).await;

    server.catalog().close().await;
    wait_for_status(&server, "", ServingStatus::NotServing).await;
    let status = status_of(&server, LIVENESS_SERVICE).await;
    assert_eq!(status.expect("liveness answers"), ServingStatus::Serving);
}

both_backends!(liveness_is_serving_while_the_catalog_is_unreachable);
