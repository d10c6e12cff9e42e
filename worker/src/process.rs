//! What every Coffer binary does around its own work: parse its layered
//! configuration, print it when asked, start logging, cap the allocator's
//! arenas and build the runtime; and turn SIGINT or SIGTERM into a
//! cancellation. The control plane and the worker share it so their start-up
//! and shutdown cannot drift apart.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::allocator;

/// The configuration of a Coffer binary, as far as start-up needs it.
pub trait BinaryConfig: clap::Parser {
    /// Whether `--print-config` asked for the effective configuration only.
    fn print_config(&self) -> bool;
    /// The effective configuration, one `key = value` a line, secrets left out.
    fn render(&self) -> String;
    /// `text` or `json`.
    fn log_format(&self) -> &str;
}

/// Runs a binary: parses `C` (defaults, file, `COFFER_*` environment, flags),
/// prints it and stops when asked to, starts logging, then runs `run` on a
/// multi-threaded runtime.
pub fn main<C, F, Fut>(run: F) -> anyhow::Result<()>
where
    C: BinaryConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = C::parse();
    if config.print_config() {
        println!("{}", config.render());
        return Ok(());
    }
    init_logging(config.log_format());
    // Nothing above starts a thread, as `block_on` requires.
    allocator::block_on(run(config))?
}

/// Logs to standard error, filtered by `COFFER_LOG` (default `info`), as text
/// or, with `json`, one JSON object a line.
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

/// Cancels `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops this process");
            let _ = interrupt.await;
        }
    }
    tracing::info!("signal received: shutting down");
    token.cancel();
}
