//! `coffer-worker`: leases runs from the control plane and executes them.

use std::sync::Arc;

use coffer_worker::config::{Command, Config};
use coffer_worker::executor::RunExecutor;
use coffer_worker::session::{self, SessionConfig};
use coffer_worker::{liveness, process};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    process::main(run)
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::Healthcheck(args)) = &config.command {
        let Some(health_file) = &config.health_file else {
            anyhow::bail!("no health file to check: set COFFER_HEALTH_FILE (--health-file)");
        };
        let max_age = std::time::Duration::from_secs(args.max_age_seconds);
        return liveness::check(health_file, max_age);
    }
    let session_config = SessionConfig {
        control_plane: config.control_plane.clone(),
        token: Config::token()?,
        name: config.effective_name(),
        labels: config.parsed_labels()?,
        slots: config.slots.max(1),
        source_roots: config.parsed_source_roots(),
        class: config.class,
        drain_timeout: config.drain_timeout(),
        progress_interval: config.progress_interval(),
        tls: config.client_tls(),
    };
    let executor = Arc::new(RunExecutor {
        roots: config.worker_roots()?,
        class: config.class,
        commands: Arc::new(config.allowed_commands()?),
        bandwidth: config.bandwidth(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(process::cancel_on_signal(shutdown.clone()));
    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(metrics = %listener.local_addr()?, "serving Prometheus metrics on /metrics");
        tokio::spawn(coffer_telemetry::serve(listener, None, shutdown.clone()));
    }
    let keeper = config
        .health_file
        .clone()
        .map(|path| tokio::spawn(liveness::keep_fresh(path, shutdown.clone())));
    tracing::info!(name = %session_config.name, slots = session_config.slots, control_plane = %session_config.control_plane, upload_limit = %config.upload_limit, download_limit = %config.download_limit, "coffer worker starting");
    let result = session::run(session_config, executor, shutdown.clone()).await;
    // The health file goes before the process does, however the session ended.
    shutdown.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    result
}
