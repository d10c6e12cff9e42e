//! Start-up: connect the catalog, bootstrap credentials, choose the auth mode.

use std::path::Path;

use crate::auth::{
    ensure_admin_user, ensure_bootstrap_token, mint_secret, AuthMode, Authenticator,
};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::model::user::TokenScope;
use crate::state::AppState;

/// Name of the file the standalone mode writes a generated admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the file holding the embedded worker's token.
pub const WORKER_TOKEN_FILE: &str = "worker.token";

/// Connects the catalog (creating the data directory for SQLite), registers the
/// bootstrap tokens from the environment and returns the shared state.
pub async fn prepare(config: &Config) -> anyhow::Result<AppState> {
    let url = config.effective_database_url();
    if config.is_embedded() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let catalog = Catalog::connect(&url).await?;
    tracing::info!(backend = ?catalog.backend(), "catalog ready");

    if let Some(secret) = secret_from_env("COFFER_ADMIN_TOKEN")? {
        ensure_bootstrap_token(&catalog, &secret, TokenScope::User).await?;
    } else if catalog.count_admins().await? == 0 {
        if !config.is_embedded() {
            anyhow::bail!("the catalog has no admin yet: set COFFER_ADMIN_TOKEN (or COFFER_ADMIN_TOKEN_FILE) for the first start");
        }
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        let minted = mint_secret();
        write_secret_file(&path, &minted.secret)?;
        ensure_bootstrap_token(&catalog, &minted.secret, TokenScope::User).await?;
        tracing::info!(path = %path.display(), "generated the admin token (shown nowhere else)");
    }
    if let Some(secret) = secret_from_env("COFFER_WORKER_TOKEN")? {
        ensure_bootstrap_token(&catalog, &secret, TokenScope::Worker).await?;
    }

    let mode = if config.insecure_no_auth {
        tracing::warn!(listen = %config.listen, "authentication is DISABLED: every call acts as the admin (loopback only)");
        AuthMode::Disabled {
            as_user: ensure_admin_user(&catalog).await?,
        }
    } else {
        AuthMode::Required
    };
    let auth = Authenticator::new(catalog.clone(), mode);
    Ok(AppState::new(catalog, auth).with_scheduler_settings(config.scheduler_settings()))
}

/// Reads a secret from `NAME` or from the file named by `NAME_FILE`.
pub fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    if let Ok(value) = std::env::var(name) {
        if !value.trim().is_empty() {
            return Ok(Some(value.trim().to_string()));
        }
    }
    if let Ok(path) = std::env::var(format!("{name}_FILE")) {
        let value = std::fs::read_to_string(&path)?;
        if !value.trim().is_empty() {
            return Ok(Some(value.trim().to_string()));
        }
    }
    Ok(None)
}

fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(())
}

/// The embedded worker's token: read from the data directory, or minted,
/// stored there (mode 0600) and registered on first start.
pub async fn embedded_worker_token(config: &Config, catalog: &Catalog) -> anyhow::Result<String> {
    let path = config.data_dir.join(WORKER_TOKEN_FILE);
    let secret = match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => secret.trim().to_string(),
        _ => {
            std::fs::create_dir_all(&config.data_dir)?;
            let minted = mint_secret();
            write_secret_file(&path, &minted.secret)?;
            minted.secret
        }
    };
    ensure_bootstrap_token(catalog, &secret, TokenScope::Worker).await?;
    Ok(secret)
}

/// The embedded worker: a `coffer-worker` session in this process, talking
/// to this control plane over loopback like any other worker.
pub fn embedded_worker_config(
    config: &Config,
    port: u16,
    token: String,
) -> coffer_worker::session::SessionConfig {
    coffer_worker::session::SessionConfig {
        control_plane: format!("http://127.0.0.1:{port}"),
        token: Some(token),
        name: format!("embedded-{port}"),
        labels: std::iter::once(("embedded".to_string(), "true".to_string())).collect(),
        slots: config.embedded_worker_slots.max(1),
        source_roots: Vec::new(),
        drain_timeout: config.shutdown_grace(),
    }
}
