//! `coffer-control-plane`: serves the Coffer API.

use clap::Parser;
use coffer_control_plane::config::Config;
use coffer_control_plane::{server, startup};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.print_config {
        println!("{}", config.render());
        return Ok(());
    }
    init_logging(&config.log_format);
    config.validate()?;

    let state = startup::prepare(&config).await?;
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "coffer control plane serving");

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let serving = tokio::spawn(server::serve(
        state.clone(),
        listener,
        shutdown.clone().cancelled_owned(),
    ));

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new calls; waiting for in-flight calls");
    match tokio::time::timeout(config.shutdown_grace(), serving).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("in-flight calls did not finish within the grace period"),
    }
    state.catalog.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received");
    token.cancel();
}
