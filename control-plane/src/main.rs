//! `coffer-control-plane`: serves the Coffer API.

use std::sync::Arc;

use coffer_control_plane::config::{Command, Config};
use coffer_control_plane::tls::{Listeners, TlsServer};
use coffer_control_plane::{healthcheck, monitoring, server, startup};
use coffer_worker::executor::RunExecutor;
use coffer_worker::process;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    process::main(run)
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::Healthcheck(args)) = &config.command {
        return healthcheck::run(&config, args).await;
    }
    config.validate()?;

    let state = startup::prepare(&config).await?;
    let tls = startup::tls_settings(&config)?
        .map(|s| TlsServer::new(&s))
        .transpose()?;
    let listener = TcpListener::bind(config.listen).await?;
    let listen = listener.local_addr()?;
    let (listeners, port) = match &tls {
        Some(tls) => {
            tracing::info!(%listen, client_certificates = config.tls_client_ca.is_some(), generated = config.generates_tls(), "coffer control plane serving TLS");
            let listeners = Listeners::tls(listener, tls);
            if config.runs_embedded_worker() {
                // The embedded worker speaks plaintext to its own process
                // over a loopback port of its own.
                let loopback = TcpListener::bind("127.0.0.1:0").await?;
                let port = loopback.local_addr()?.port();
                (listeners.with_plaintext(loopback), port)
            } else {
                (listeners, listen.port())
            }
        }
        None => {
            if !listen.ip().is_loopback() {
                tracing::warn!(%listen, "serving PLAINTEXT off loopback (--insecure-plaintext): tokens travel in clear");
            }
            tracing::info!(%listen, "coffer control plane serving");
            (Listeners::plaintext(listener), listen.port())
        }
    };

    let listeners = match config.local_listen {
        Some(local) => {
            tracing::info!(%local, "serving plaintext on loopback too (--local-listen)");
            listeners.with_plaintext(TcpListener::bind(local).await?)
        }
        None => listeners,
    };

    let signal = CancellationToken::new();
    let stop_serving = CancellationToken::new();
    tokio::spawn(process::cancel_on_signal(signal.clone()));
    if let Some(address) = config.metrics_listen {
        let listener = TcpListener::bind(address).await?;
        tracing::info!(metrics = %listener.local_addr()?, "serving Prometheus metrics on /metrics");
        tokio::spawn(coffer_telemetry::serve(
            listener,
            Some(monitoring::refresh(
                state.catalog.clone(),
                state.lease_settings,
            )),
            stop_serving.clone(),
        ));
    }
    let serving = tokio::spawn(server::serve_with(
        state.clone(),
        listeners,
        stop_serving.clone().cancelled_owned(),
    ));

    // The embedded worker drains first (it needs the API to release its
    // leases), then the server stops.
    let worker = if config.runs_embedded_worker() {
        let token = startup::embedded_worker_token(&config, &state.catalog).await?;
        let worker_config = startup::embedded_worker_config(&config, port, token);
        let executor = Arc::new(RunExecutor::protecting(&config.data_dir)?);
        tracing::info!(slots = worker_config.slots, "embedded worker starting");
        Some(tokio::spawn(coffer_worker::session::run(
            worker_config,
            executor,
            signal.clone(),
        )))
    } else {
        None
    };

    signal.cancelled().await;
    if let Some(worker) = worker {
        tracing::info!("draining the embedded worker");
        match tokio::time::timeout(config.shutdown_grace() * 2, worker).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "embedded worker stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "embedded worker panicked"),
            Err(_) => {
                tracing::warn!("embedded worker did not drain in time; its leases will expire")
            }
        }
    }
    stop_serving.cancel();
    tracing::info!("shutting down: no new calls; waiting for in-flight calls");
    match tokio::time::timeout(config.shutdown_grace(), serving).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("in-flight calls did not finish within the grace period"),
    }
    state.catalog.close().await;
    tracing::info!("stopped");
    Ok(())
}
