//! Serving: every gRPC service, health, reflection, and ordered shutdown.

use std::future::Future;
use std::time::Duration;

use coffer_proto::v1;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api;
use crate::catalog::Catalog;
use crate::state::AppState;
use crate::tls::Listeners;

/// Fully-qualified names of the services whose health is reported.
pub const SERVICE_NAMES: &[&str] = &[
    "coffer.v1.UserService",
    "coffer.v1.ConfigurationService",
    "coffer.v1.BucketService",
    "coffer.v1.JobService",
    "coffer.v1.RunService",
    "coffer.v1.BackupMetadataService",
    "coffer.v1.ObjectService",
    "coffer.v1.TagService",
    "coffer.v1.RetentionService",
    "coffer.v1.SecretService",
    "coffer.v1.WorkerService",
    "coffer.v1.GrantService",
    "coffer.v1.AuditService",
    "coffer.v1.CommandService",
    "coffer.v1.DownloadService",
    "coffer.v1.NotificationService",
    "coffer.v1.CopyService",
];

/// The health service name that reports whether the process serves calls,
/// whatever the catalog's state: what a liveness probe asks, so that a
/// database outage makes replicas unready but does not restart them.
pub const LIVENESS_SERVICE: &str = "coffer.liveness";

/// What reflection describes: the API, health, and the `google.rpc` error
/// details (the `BadRequest` of INVALID_ARGUMENT) so grpcurl can print them.
/// Those come from tonic-types, which carries the upstream googleapis file: a
/// copy in `proto/` would collide with googleapis-common-protos in clients
/// generated from that directory.
const DESCRIPTOR_SETS: [&[u8]; 3] = [
    coffer_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_types::pb::FILE_DESCRIPTOR_SET,
];

/// How long shutdown waits for the scheduler to release its leadership.
const SCHEDULER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long serving waits for the relay of other replicas' run changes to
/// listen before it starts anyway (the relay keeps trying).
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the API in plaintext on `listener` until `shutdown` resolves, then
/// stops accepting, lets in-flight calls finish and returns. Whether
/// plaintext is allowed on its address is the caller's decision
/// (`Config::validate`).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(state, Listeners::plaintext(listener), shutdown).await
}

/// Starts relaying other replicas' run changes (PostgreSQL) and waits a
/// little for it to listen, so that a replica serving calls already hears
/// the others: a `WatchRun` or a worker session opened at once must not
/// miss a change made elsewhere.
async fn start_run_relay(catalog: &Catalog, background: &CancellationToken) {
    let (listening, mut status) = tokio::sync::watch::channel(false);
    tokio::spawn(
        catalog
            .clone()
            .relay_run_events(listening, background.clone()),
    );
    if catalog.backend() != crate::catalog::Backend::Postgres {
        return;
    }
    let started =
        tokio::time::timeout(RELAY_START_TIMEOUT, status.wait_for(|listening| *listening));
    if started.await.is_err() {
        tracing::warn!("not yet listening for other replicas' run changes; serving anyway");
    }
}

/// Serves the API on `listeners` (TLS or plaintext each) until `shutdown`
/// resolves, then stops accepting, lets in-flight calls finish and returns.
pub async fn serve_with(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let background = CancellationToken::new();
    start_run_relay(&state.catalog, &background).await;
    tokio::spawn(watch_catalog_health(
        state.catalog.clone(),
        health_reporter,
        background.clone(),
    ));
    tokio::spawn(state.dispatch.clone().run(
        state.catalog.clone(),
        state.lease_settings,
        background.clone(),
    ));
    tokio::spawn(crate::leasing::run_reaper(
        state.catalog.clone(),
        state.lease_settings,
        background.clone(),
    ));
    // The scheduler stops firing as soon as shutdown begins.
    let scheduler_stop = background.child_token();
    let scheduler = tokio::spawn(crate::scheduler::run(
        state.catalog.clone(),
        state.runs.clone(),
        state.scheduler.clone(),
        scheduler_stop.clone(),
    ));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tokio::spawn(crate::audit::record_run_events(
        state.catalog.clone(),
        background.clone(),
    ));
    // Notifications: every replica finds events and sends what it claims.
    tokio::spawn(
        crate::notifications::Notifier::new(
            state.catalog.clone(),
            state.secrets.clone(),
            crate::notifications::NotifierSettings::default(),
        )
        .run(background.clone()),
    );

    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // The web console: its assets on plain GETs, gRPC-Web (also over
        // HTTP/1.1) translated to gRPC before the audit log sees the call.
        .accept_http1(true)
        .layer(crate::console::ConsoleLayer)
        // Every call passes the audit log, which records the mutating ones.
        .layer(crate::audit::AuditLayer::new(state.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(v1::user_service_server::UserServiceServer::new(
            api::users::UserApi::new(state.clone()),
        ))
        .add_service(
            v1::configuration_service_server::ConfigurationServiceServer::new(
                api::configurations::ConfigurationApi::new(state.clone()),
            ),
        )
        .add_service(v1::bucket_service_server::BucketServiceServer::new(
            api::buckets::BucketApi::new(state.clone()),
        ))
        .add_service(v1::job_service_server::JobServiceServer::new(
            api::jobs::JobApi::new(state.clone()),
        ))
        .add_service(v1::run_service_server::RunServiceServer::new(
            api::runs::RunApi::new(state.clone()),
        ))
        .add_service(
            v1::backup_metadata_service_server::BackupMetadataServiceServer::new(
                api::metadata::BackupMetadataApi::new(state.clone()),
            ),
        )
        .add_service(v1::object_service_server::ObjectServiceServer::new(
            api::objects::ObjectApi::new(state.clone()),
        ))
        .add_service(v1::tag_service_server::TagServiceServer::new(
            api::tags::TagApi::new(state.clone()),
        ))
        .add_service(v1::retention_service_server::RetentionServiceServer::new(
            api::retention::RetentionApi::new(state.clone()),
        ))
        .add_service(v1::secret_service_server::SecretServiceServer::new(
            api::secrets::SecretApi::new(state.clone()),
        ))
        .add_service(v1::worker_service_server::WorkerServiceServer::new(
            api::workers::WorkerApi::new(state.clone()),
        ))
        .add_service(v1::download_service_server::DownloadServiceServer::new(
            api::downloads::DownloadApi::new(state.clone()),
        ))
        .add_service(v1::copy_service_server::CopyServiceServer::new(
            api::copies::CopyApi::new(state.clone()),
        ))
        .add_service(v1::grant_service_server::GrantServiceServer::new(
            api::grants::GrantApi::new(state.clone()),
        ))
        .add_service(v1::audit_service_server::AuditServiceServer::new(
            api::audit::AuditApi::new(state.clone()),
        ))
        .add_service(v1::command_service_server::CommandServiceServer::new(
            api::commands::CommandApi::new(state.clone()),
        ))
        .add_service(
            v1::notification_service_server::NotificationServiceServer::new(
                api::notifications::NotificationApi::new(state.clone()),
            ),
        );

    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        // Ends lease sessions; workers reconnect to another replica or to
        // this one after a restart, and keep their leases meanwhile.
        stopping.cancel();
        scheduler_stop.cancel();
    };
    let result = router
        .serve_with_incoming_shutdown(listeners.accept(&background), shutdown)
        .await;
    background.cancel();
    // The scheduler stopped firing when shutdown began; wait for it to give up
    // its leadership (one catalog call) before the caller closes the catalog.
    if tokio::time::timeout(SCHEDULER_STOP_TIMEOUT, scheduler)
        .await
        .is_err()
    {
        tracing::warn!("scheduler did not stop in time; its leadership expires by itself");
    }
    result?;
    Ok(())
}

/// A reflection service over [`DESCRIPTOR_SETS`].
fn reflection() -> tonic_reflection::server::Builder<'static> {
    DESCRIPTOR_SETS.into_iter().fold(
        tonic_reflection::server::Builder::configure(),
        |builder, set| builder.register_encoded_file_descriptor_set(set),
    )
}

/// Reports NOT_SERVING for every service while the catalog does not answer.
async fn watch_catalog_health(
    catalog: Catalog,
    reporter: HealthReporter,
    cancel: CancellationToken,
) {
    let mut last: Option<bool> = None;
    loop {
        let healthy = tokio::time::timeout(Duration::from_secs(3), catalog.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if last != Some(healthy) {
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if healthy {
                tracing::info!("catalog reachable; serving");
            } else {
                tracing::warn!("catalog unreachable; health is NOT_SERVING");
            }
            reporter.set_service_status("", status).await;
            for name in SERVICE_NAMES {
                reporter.set_service_status(*name, status).await;
            }
            last = Some(healthy);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
