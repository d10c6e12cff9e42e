//! Control-plane configuration: built-in defaults, then `COFFER_*` environment
//! variables, then command-line flags. Secrets (the bootstrap tokens) come only
//! from the environment or files and are never printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::scheduler::SchedulerSettings;
use crate::tls::TlsSettings;

/// Control-plane settings.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "coffer-control-plane",
    version,
    about = "Coffer control plane: catalog and gRPC API"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "COFFER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory for the embedded catalog and generated secrets.
    #[arg(long, env = "COFFER_DATA_DIR", default_value = "coffer-data")]
    pub data_dir: PathBuf,

    /// Catalog URL: `postgres://user:pass@host/db` or `sqlite:///path/catalog.db`.
    /// Default: an SQLite file in the data directory. `SQLALCHEMY_DATABASE_URL`
    /// (the seeds' variable) is honoured when this is unset.
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Serve without authentication (calls act as the admin). Only allowed on a
    /// loopback address.
    #[arg(long, env = "COFFER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Log format: `text` or `json`.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Seconds to wait for in-flight calls on shutdown.
    #[arg(long, env = "COFFER_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// Run a worker inside this process (default: on with the embedded SQLite
    /// catalog, off with PostgreSQL, where workers are separate processes).
    #[arg(long, env = "COFFER_EMBEDDED_WORKER")]
    pub embedded_worker: Option<bool>,

    /// Parallel runs of the embedded worker.
    #[arg(long, env = "COFFER_EMBEDDED_WORKER_SLOTS", default_value_t = 2)]
    pub embedded_worker_slots: usize,

    /// Run the job scheduler in this replica. Replicas sharing a catalog elect
    /// one leader among those running it; only the leader fires.
    #[arg(long, env = "COFFER_SCHEDULER", default_value_t = true, action = clap::ArgAction::Set)]
    pub scheduler: bool,

    /// Longest pause between scheduler rounds, in seconds. The leader also
    /// wakes up exactly when the next tick is due.
    #[arg(long, env = "COFFER_SCHEDULER_POLL_SECONDS", default_value_t = 5)]
    pub scheduler_poll_seconds: u64,

    /// Lifetime of the scheduler leader lease, in seconds: how long a dead
    /// leader holds up scheduling before another replica takes over. At least
    /// three poll intervals.
    #[arg(long, env = "COFFER_SCHEDULER_LEASE_SECONDS", default_value_t = 30)]
    pub scheduler_lease_seconds: u64,

    /// Seconds after its time a tick may still fire normally; a tick reached
    /// later counts as missed (see the job's missed-run policy).
    #[arg(
        long,
        env = "COFFER_SCHEDULER_MISFIRE_GRACE_SECONDS",
        default_value_t = 120
    )]
    pub scheduler_misfire_grace_seconds: u64,

    // --- Transport security (TLS, mTLS, the plaintext rule) ---
    /// PEM certificate chain to serve TLS with (re-read when it changes).
    #[arg(long, env = "COFFER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert` (re-read when it changes).
    #[arg(long, env = "COFFER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate issued by
    /// one of them (mTLS). Bearer tokens are still required.
    #[arg(long, env = "COFFER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds between checks of the certificate and key files for change.
    #[arg(long, env = "COFFER_TLS_RELOAD_SECONDS", default_value_t = 5)]
    pub tls_reload_seconds: u64,

    /// Serve plaintext on a non-loopback address: bearer tokens and data
    /// travel in clear. Only behind a trusted network or a TLS proxy.
    #[arg(long, env = "COFFER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// File holding the key that seals secrets (S3 credentials) in the catalog:
    /// 32 random bytes as base64 or hex, mode 0600 (refused when group or
    /// others may read it). `COFFER_SECRETS_KEY` (environment only) gives the
    /// key itself instead. Default: with the embedded catalog, a key generated
    /// into the data directory; with PostgreSQL, none (secrets disabled).
    #[arg(long, env = "COFFER_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// Files of secrets keys that the current one replaced (comma-separated):
    /// secrets they sealed are still opened, and sealed again with the
    /// current key when rotated.
    #[arg(long, env = "COFFER_SECRETS_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub secrets_previous_key_files: Vec<PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    // --- Deployment: generated tokens, local access, health checks ---
    /// With PostgreSQL, generate the first admin token into
    /// `<data dir>/admin.token` (mode 0600) when the catalog has no admin and
    /// `COFFER_ADMIN_TOKEN` is unset, as the embedded catalog always does.
    #[arg(long, env = "COFFER_GENERATE_ADMIN_TOKEN")]
    pub generate_admin_token: bool,

    /// Directory of per-worker token files: for every name in
    /// `--worker-tokens`, `<dir>/<name>.token` is read, or minted (mode 0600)
    /// on first start, and registered as a worker token.
    #[arg(long, env = "COFFER_WORKER_TOKENS_DIR", requires = "worker_tokens")]
    pub worker_tokens_dir: Option<PathBuf>,

    /// Names of the workers that get a token in `--worker-tokens-dir`,
    /// separated by commas.
    #[arg(
        long,
        env = "COFFER_WORKER_TOKENS",
        value_delimiter = ',',
        requires = "worker_tokens_dir"
    )]
    pub worker_tokens: Vec<String>,

    /// An extra plaintext listener on a loopback address (e.g.
    /// `127.0.0.1:50052`) for the `healthcheck` subcommand and local tools
    /// when the main listener serves TLS.
    #[arg(long, env = "COFFER_LOCAL_LISTEN")]
    pub local_listen: Option<SocketAddr>,

    /// Serve Prometheus metrics on `http://ADDRESS/metrics` (e.g.
    /// `0.0.0.0:9090`): plain HTTP without authentication, on a port of its
    /// own. Off unless set.
    #[arg(long, env = "COFFER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// A one-off command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands of the control-plane binary.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Asks the control plane serving with this configuration for its
    /// `grpc.health.v1` status over its own port and exits 0 when SERVING.
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

impl coffer_worker::process::BinaryConfig for Config {
    fn print_config(&self) -> bool {
        self.print_config
    }

    /// The effective configuration as `key = value` lines, passwords redacted.
    fn render(&self) -> String {
        let admin_token = if std::env::var_os("COFFER_ADMIN_TOKEN").is_some() {
            "(set)"
        } else {
            "(unset)"
        };
        let secrets_key = if std::env::var_os("COFFER_SECRETS_KEY").is_some() {
            "(set)".to_string()
        } else if let Some(path) = &self.secrets_key_file {
            path.display().to_string()
        } else {
            "(unset)".to_string()
        };
        let worker_token = if std::env::var_os("COFFER_WORKER_TOKEN").is_some() {
            "(set)"
        } else {
            "(unset)"
        };
        [
            format!("listen = {}", self.listen),
            format!("data_dir = {}", self.data_dir.display()),
            format!(
                "database_url = {}",
                redact_url(&self.effective_database_url())
            ),
            format!("insecure_no_auth = {}", self.insecure_no_auth),
            format!("log_format = {}", self.log_format),
            format!("shutdown_grace_seconds = {}", self.shutdown_grace_seconds),
            format!("embedded_worker = {}", self.runs_embedded_worker()),
            format!("embedded_worker_slots = {}", self.embedded_worker_slots),
            format!("scheduler = {}", self.scheduler),
            format!("scheduler_poll_seconds = {}", self.scheduler_poll_seconds),
            format!("scheduler_lease_seconds = {}", self.scheduler_lease_seconds),
            format!(
                "scheduler_misfire_grace_seconds = {}",
                self.scheduler_misfire_grace_seconds
            ),
            format!("tls_cert = {}", display_path(self.tls_cert.as_deref())),
            format!("tls_key = {}", display_path(self.tls_key.as_deref())),
            format!(
                "tls_client_ca = {}",
                display_path(self.tls_client_ca.as_deref())
            ),
            format!("tls_reload_seconds = {}", self.tls_reload_seconds),
            format!("tls_generated = {}", self.generates_tls()),
            format!("insecure_plaintext = {}", self.insecure_plaintext),
            format!("generate_admin_token = {}", self.generate_admin_token),
            format!(
                "worker_tokens_dir = {}",
                display_path(self.worker_tokens_dir.as_deref())
            ),
            format!("worker_tokens = {}", self.worker_tokens.join(",")),
            format!(
                "local_listen = {}",
                self.local_listen.map(|a| a.to_string()).unwrap_or_default()
            ),
            format!(
                "metrics_listen = {}",
                self.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            format!("admin_token = {admin_token}"),
            format!("worker_token = {worker_token}"),
            format!("secrets_key = {secrets_key}"),
            format!(
                "secrets_previous_key_files = {}",
                self.secrets_previous_key_files.len()
            ),
        ]
        .join("\n")
    }

    fn log_format(&self) -> &str {
        &self.log_format
    }
}

impl Config {
    /// The catalog URL in effect.
    pub fn effective_database_url(&self) -> String {
        if let Some(url) = &self.database_url {
            return url.clone();
        }
        if let Ok(url) = std::env::var("SQLALCHEMY_DATABASE_URL") {
            if !url.is_empty() {
                return normalize_sqlalchemy_url(&url);
            }
        }
        format!("sqlite://{}", self.data_dir.join("catalog.db").display())
    }

    /// Whether the catalog is the embedded SQLite file.
    pub fn is_embedded(&self) -> bool {
        self.effective_database_url().starts_with("sqlite:")
    }

    /// Whether an embedded worker runs in this process.
    pub fn runs_embedded_worker(&self) -> bool {
        self.embedded_worker.unwrap_or_else(|| self.is_embedded())
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The scheduler's settings.
    pub fn scheduler_settings(&self) -> SchedulerSettings {
        SchedulerSettings {
            enabled: self.scheduler,
            poll_interval: Duration::from_secs(self.scheduler_poll_seconds),
            lease_ttl: Duration::from_secs(self.scheduler_lease_seconds),
            misfire_grace: Duration::from_secs(self.scheduler_misfire_grace_seconds),
        }
    }

    /// The TLS material of `--tls-cert`/`--tls-key`, `None` without them
    /// (see [`crate::startup::tls_settings`] for standalone mode's own).
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        Some(TlsSettings {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
            reload_interval: self.tls_reload_interval(),
        })
    }

    /// How often certificate files are checked for change.
    pub fn tls_reload_interval(&self) -> Duration {
        Duration::from_secs(self.tls_reload_seconds.max(1))
    }

    /// Whether this is standalone mode serving TLS with certificates it
    /// generates: the embedded catalog, no certificate files given, and
    /// plaintext not asked for.
    pub fn generates_tls(&self) -> bool {
        self.tls_cert.is_none() && self.is_embedded() && !self.insecure_plaintext
    }

    /// Checks combinations that flags alone cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.tls_settings().is_none()
            && !self.generates_tls()
            && !self.insecure_plaintext
            && !self.listen.ip().is_loopback()
        {
            anyhow::bail!(
                "refusing to serve plaintext on {}: bearer tokens would travel in clear; \
                 give --tls-cert and --tls-key, listen on a loopback address, \
                 or pass --insecure-plaintext",
                self.listen
            );
        }
        if self.insecure_no_auth && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "--insecure-no-auth is only allowed on a loopback address, not {}",
                self.listen
            );
        }
        if let Some(local) = self.local_listen {
            if !local.ip().is_loopback() {
                anyhow::bail!("--local-listen must be a loopback address, not {local}");
            }
        }
        if let Some(name) = self.worker_tokens.iter().find(|name| !is_plain_name(name)) {
            anyhow::bail!(
                "--worker-tokens: {name:?} is not a worker name (1-63 of a-z, 0-9, '-', '_', '.', not starting with '.')"
            );
        }
        if self.scheduler_poll_seconds == 0 {
            anyhow::bail!("--scheduler-poll-seconds must be at least 1");
        }
        // The leader renews its lease every round; three rounds per lease
        // survive a slow round or two without losing the leadership.
        if self.scheduler_lease_seconds < 3 * self.scheduler_poll_seconds {
            anyhow::bail!(
                "--scheduler-lease-seconds ({}) must be at least three times --scheduler-poll-seconds ({})",
                self.scheduler_lease_seconds,
                self.scheduler_poll_seconds
            );
        }
        Ok(())
    }
}

/// A name safe as a file name in a token directory.
fn is_plain_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn display_path(path: Option<&std::path::Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

/// `postgresql+psycopg2://…` (SQLAlchemy style) becomes `postgresql://…`.
fn normalize_sqlalchemy_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let base = scheme.split('+').next().unwrap_or(scheme);
            format!("{base}://{rest}")
        }
        None => url.to_string(),
    }
}

/// Replaces the password of a URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlalchemy_driver_suffix_is_dropped() {
        assert_eq!(
            normalize_sqlalchemy_url("postgresql+psycopg2://u:p@db/coffer"),
            "postgresql://u:p@db/coffer"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://coffer:secret@db:5432/c"),
            "postgres://coffer:***@db:5432/c"
        );
        assert_eq!(
            redact_url("sqlite:///x/catalog.db"),
            "sqlite:///x/catalog.db"
        );
    }

    #[test]
    fn no_auth_is_refused_off_loopback() {
        let config = Config::parse_from([
            "coffer-control-plane",
            "--listen",
            "0.0.0.0:50051",
            "--insecure-no-auth",
        ]);
        assert!(config.validate().is_err());
        let config = Config::parse_from([
            "coffer-control-plane",
            "--listen",
            "127.0.0.1:50051",
            "--insecure-no-auth",
        ]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn plaintext_off_loopback_needs_tls_or_the_insecure_flag() {
        let parse = |args: &[&str]| {
            let mut all = vec![
                "coffer-control-plane",
                "--listen",
                "0.0.0.0:50051",
                "--database-url",
                "postgres://db/coffer",
            ];
            all.extend_from_slice(args);
            Config::parse_from(all)
        };
        assert!(parse(&[]).validate().is_err());
        assert!(!parse(&[]).generates_tls());
        assert!(parse(&["--insecure-plaintext"]).validate().is_ok());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .validate()
            .is_ok());
        assert!(Config::try_parse_from(["coffer-control-plane", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn standalone_mode_generates_tls_unless_told_otherwise() {
        let parse = |args: &[&str]| {
            let mut all = vec!["coffer-control-plane", "--listen", "0.0.0.0:50051"];
            all.extend_from_slice(args);
            Config::parse_from(all)
        };
        let config = parse(&[]);
        assert!(config.is_embedded() && config.generates_tls());
        assert!(config.validate().is_ok());
        assert!(!parse(&["--insecure-plaintext"]).generates_tls());
        assert!(!parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).generates_tls());
    }

    #[test]
    fn scheduler_lease_must_outlast_three_rounds() {
        let config = Config::parse_from(["coffer-control-plane"]);
        assert!(config.validate().is_ok());
        assert!(config.scheduler_settings().enabled);
        let config = Config::parse_from([
            "coffer-control-plane",
            "--scheduler-poll-seconds",
            "10",
            "--scheduler-lease-seconds",
            "20",
        ]);
        assert!(config.validate().is_err());
        let config = Config::parse_from(["coffer-control-plane", "--scheduler=false"]);
        assert!(!config.scheduler_settings().enabled);
    }
}
