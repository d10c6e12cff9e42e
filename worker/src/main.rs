//! `coffer-worker`: leases runs from the control plane and executes them.

use std::sync::Arc;

use clap::Parser;
use coffer_worker::config::Config;
use coffer_worker::executor::RunExecutor;
use coffer_worker::session::{self, SessionConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    coffer_worker::allocator::block_on(run())?
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_config {
        println!("{}", config.render());
        return Ok(());
    }
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let session_config = SessionConfig {
        control_plane: config.control_plane.clone(),
        token: Config::token()?,
        name: config.effective_name(),
        labels: config.parsed_labels()?,
        slots: config.slots.max(1),
        source_roots: config.parsed_source_roots(),
        drain_timeout: config.drain_timeout(),
    };
    let executor = Arc::new(RunExecutor {
        source_roots: session_config.source_roots.clone(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tracing::info!(name = %session_config.name, slots = session_config.slots, control_plane = %session_config.control_plane, "coffer worker starting");
    session::run(session_config, executor, shutdown).await
}

async fn wait_for_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received: draining");
    token.cancel();
}
