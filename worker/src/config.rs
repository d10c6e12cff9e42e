//! Worker configuration: defaults, then `COFFER_*` environment, then flags.
//! The worker token comes only from the environment or a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::bandwidth::{Timetable, WorkerLimits};
use crate::class::WorkerClass;
use crate::connect::ClientTls;
use crate::paths::grant::WorkerRoots;
use crate::paths::normalise;

/// Worker settings.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "coffer-worker",
    version,
    about = "Coffer worker: leases runs and moves backup data"
)]
pub struct Config {
    /// Control-plane URLs, separated by commas: replicas to fail over
    /// between. A host name that resolves to several addresses (a headless
    /// Service) counts as one replica per address. The worker starts at a
    /// random one and moves to the next when a session breaks.
    #[arg(
        long,
        env = "COFFER_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_plane: String,

    /// Stable worker name (default: the host name).
    #[arg(long, env = "COFFER_WORKER_NAME")]
    pub name: Option<String>,

    /// Labels for job selectors, `key=value` separated by commas.
    #[arg(long, env = "COFFER_WORKER_LABELS", default_value = "")]
    pub labels: String,

    /// Runs executed at once.
    #[arg(long, env = "COFFER_WORKER_SLOTS", default_value_t = 2)]
    pub slots: usize,

    /// What this worker runs: `all`, `backup` (append-only: backups,
    /// restores, verifies; never deletes) or `maintenance` (retention and
    /// garbage collection too).
    #[arg(long, env = "COFFER_WORKER_CLASS", value_enum, default_value_t = WorkerClass::All)]
    pub class: WorkerClass,

    /// Source roots this worker may read, separated by commas (empty: any).
    #[arg(long, env = "COFFER_SOURCE_ROOTS", default_value = "")]
    pub source_roots: String,

    /// Roots restores may write beneath, separated by commas (empty: any).
    #[arg(long, env = "COFFER_RESTORE_ROOTS", default_value = "")]
    pub restore_roots: String,

    /// Roots filesystem and NFS repositories may live beneath, separated by
    /// commas (empty: any).
    #[arg(long, env = "COFFER_REPOSITORY_ROOTS", default_value = "")]
    pub repository_roots: String,

    /// Paths no run reads or writes, separated by commas: the control
    /// plane's data directory (`coffer-data` in the working directory, the
    /// image's `/var/lib/coffer`) by default. Relative paths are taken from
    /// the working directory; the worker's token file is always added.
    #[arg(
        long,
        env = "COFFER_PROTECTED_PATHS",
        default_value = "/var/lib/coffer,coffer-data"
    )]
    pub protected_paths: String,

    /// Admin-defined commands (CommandService) this worker runs as backup
    /// sources and hooks, by name, separated by commas; `name=/path` also
    /// pins the command's program. Empty (the default): none, so that the
    /// catalog or a control plane can never make this worker run a
    /// program its operator did not name.
    #[arg(long, env = "COFFER_WORKER_ALLOW_COMMANDS", default_value = "")]
    pub allow_commands: String,

    /// Upload limit of all this worker's runs together: a rate per second
    /// such as `10MiB` or `500kB`, `off`, or a timetable by the host's
    /// local time of day such as `08:00,2MiB 18:00,off` (each rate from its
    /// time until the next entry's). A job's own limit applies too; the
    /// tighter one wins.
    #[arg(long, env = "COFFER_WORKER_UPLOAD_LIMIT", default_value = "off")]
    pub upload_limit: Timetable,

    /// Download limit of all this worker's runs together, written as
    /// `--upload-limit` is.
    #[arg(long, env = "COFFER_WORKER_DOWNLOAD_LIMIT", default_value = "off")]
    pub download_limit: Timetable,

    /// Seconds a drain (SIGTERM) waits for running work before releasing it.
    #[arg(long, env = "COFFER_DRAIN_TIMEOUT_SECONDS", default_value_t = 30)]
    pub drain_timeout_seconds: u64,

    /// Milliseconds between progress reports of a running run (100 to
    /// 10000). Each report is a catalog write, so a large fleet may want
    /// them rarer; a demo or a test, more frequent.
    #[arg(
        long,
        env = "COFFER_PROGRESS_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(100..=10_000)
    )]
    pub progress_interval_ms: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    // --- Transport security (TLS, mTLS, the plaintext rule) ---
    /// PEM CA certificates trusted for the control plane, besides the system roots.
    #[arg(long, env = "COFFER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for a control plane that requires one (mTLS).
    #[arg(long, env = "COFFER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "COFFER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The name the control plane's certificate must carry, instead of the
    /// host of each URL (e.g. replicas dialled by IP address).
    #[arg(long, env = "COFFER_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// Allow an `http://` control plane off loopback: the worker token
    /// travels in clear. Only behind a trusted network.
    #[arg(long, env = "COFFER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// File the worker rewrites every few seconds while its runtime is
    /// alive, and removes when it stops; `coffer-worker healthcheck` reads
    /// its age. Containers set it (e.g. `/tmp/coffer-worker.alive`); unset,
    /// there is none.
    #[arg(long, env = "COFFER_HEALTH_FILE")]
    pub health_file: Option<PathBuf>,

    /// Serve Prometheus metrics on `http://ADDRESS/metrics` (e.g.
    /// `0.0.0.0:9091`): plain HTTP without authentication, on a port of its
    /// own. Off unless set.
    #[arg(long, env = "COFFER_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// A one-off command instead of working.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands of the worker binary.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Exits 0 when the worker running with this configuration touched its
    /// health file recently (the probe of containers and Kubernetes).
    Healthcheck(crate::liveness::HealthcheckArgs),
}

impl crate::process::BinaryConfig for Config {
    fn print_config(&self) -> bool {
        self.print_config
    }

    /// The effective configuration as `key = value` lines.
    fn render(&self) -> String {
        let token = if std::env::var_os("COFFER_WORKER_TOKEN").is_some()
            || std::env::var_os("COFFER_WORKER_TOKEN_FILE").is_some()
        {
            "(set)"
        } else {
            "(unset)"
        };
        [
            format!("control_plane = {}", self.control_plane),
            format!("name = {}", self.effective_name()),
            format!("labels = {}", self.labels),
            format!("slots = {}", self.slots),
            format!("class = {}", self.class.as_str()),
            format!("source_roots = {}", self.source_roots),
            format!("restore_roots = {}", self.restore_roots),
            format!("repository_roots = {}", self.repository_roots),
            format!("protected_paths = {}", self.protected_paths),
            format!("allow_commands = {}", self.allow_commands),
            format!("drain_timeout_seconds = {}", self.drain_timeout_seconds),
            format!("progress_interval_ms = {}", self.progress_interval_ms),
            format!("log_format = {}", self.log_format),
            format!(
                "metrics_listen = {}",
                self.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            format!("tls_ca = {}", display_path(self.tls_ca.as_ref())),
            format!("tls_cert = {}", display_path(self.tls_cert.as_ref())),
            format!("tls_key = {}", display_path(self.tls_key.as_ref())),
            format!(
                "tls_server_name = {}",
                self.tls_server_name.as_deref().unwrap_or("")
            ),
            format!("insecure_plaintext = {}", self.insecure_plaintext),
            format!("health_file = {}", display_path(self.health_file.as_ref())),
            format!("token = {token}"),
        ]
        .join("\n")
    }

    fn log_format(&self) -> &str {
        &self.log_format
    }
}

impl Config {
    /// The worker's name: the flag, else the host name.
    pub fn effective_name(&self) -> String {
        if let Some(name) = self.name.as_ref().filter(|n| !n.trim().is_empty()) {
            return name.trim().to_string();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "coffer-worker".to_string())
    }

    /// Parsed labels.
    pub fn parsed_labels(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        for pair in self
            .labels
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("label {pair:?} is not key=value"))?;
            labels.insert(key.trim().to_string(), value.trim().to_string());
        }
        Ok(labels)
    }

    /// The commands this worker runs.
    pub fn allowed_commands(&self) -> anyhow::Result<crate::commands::CommandAllowList> {
        crate::commands::CommandAllowList::parse(&self.allow_commands)
    }

    /// Parsed source roots.
    pub fn parsed_source_roots(&self) -> Vec<String> {
        split_list(&self.source_roots).map(str::to_string).collect()
    }

    /// The worker's own path limits from the root and protected-path
    /// flags; a root that is not a normalised absolute path is an error.
    pub fn worker_roots(&self) -> anyhow::Result<WorkerRoots> {
        let mut protected = Vec::new();
        let token_file = std::env::var("COFFER_WORKER_TOKEN_FILE").unwrap_or_default();
        for path in split_list(&self.protected_paths)
            .chain(Some(token_file.as_str()).filter(|p| !p.is_empty()))
        {
            protected.extend(protected_forms(Path::new(path))?);
        }
        Ok(WorkerRoots {
            source: parse_roots("--source-roots", &self.source_roots)?,
            restore: parse_roots("--restore-roots", &self.restore_roots)?,
            repository: parse_roots("--repository-roots", &self.repository_roots)?,
            protected,
        })
    }

    /// TLS towards the control plane.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            insecure_plaintext: self.insecure_plaintext,
            server_name: self.tls_server_name.clone(),
        }
    }

    /// Drain timeout.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }

    /// Time between progress reports.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }

    /// The worker's own bandwidth limits, shared by all its runs.
    pub fn bandwidth(&self) -> WorkerLimits {
        WorkerLimits::new(self.upload_limit.clone(), self.download_limit.clone())
    }

    /// The worker token from `COFFER_WORKER_TOKEN` or the file in `COFFER_WORKER_TOKEN_FILE`.
    pub fn token() -> anyhow::Result<Option<String>> {
        if let Ok(token) = std::env::var("COFFER_WORKER_TOKEN") {
            if !token.trim().is_empty() {
                return Ok(Some(token.trim().to_string()));
            }
        }
        if let Ok(path) = std::env::var("COFFER_WORKER_TOKEN_FILE") {
            let token = std::fs::read_to_string(&path)?;
            return Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()));
        }
        Ok(None)
    }
}

fn display_path(path: Option<&PathBuf>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|r| !r.is_empty())
}

fn parse_roots(flag: &str, list: &str) -> anyhow::Result<Vec<PathBuf>> {
    split_list(list)
        .map(|root| normalise(root).map_err(|e| anyhow::anyhow!("{flag}: root {root:?} {e}")))
        .collect()
}

/// A protected path as written (made absolute) and, when it exists, with
/// its symlinks resolved, so that neither spelling reaches it.
pub fn protected_forms(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let absolute = std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("protected path {}: {e}", path.display()))?;
    let mut forms = vec![absolute.clone()];
    if let Ok(canonical) = std::fs::canonicalize(&absolute) {
        if canonical != absolute {
            forms.push(canonical);
        }
    }
    Ok(forms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_defaults_to_all_and_parses() {
        let default = Config::parse_from(["coffer-worker"]);
        assert_eq!(default.class, WorkerClass::All);
        let backup = Config::parse_from(["coffer-worker", "--class", "backup"]);
        assert_eq!(backup.class, WorkerClass::Backup);
        assert!(!backup.class.may_delete());
        assert!(Config::try_parse_from(["coffer-worker", "--class", "janitor"]).is_err());
    }

    #[test]
    fn labels_and_roots_parse() {
        let config = Config::parse_from([
            "coffer-worker",
            "--labels",
            "host=db1, zone = a",
            "--source-roots",
            "/data,/srv",
        ]);
        let labels = config.parsed_labels().expect("labels");
        assert_eq!(labels.get("host").map(String::as_str), Some("db1"));
        assert_eq!(labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(config.parsed_source_roots(), vec!["/data", "/srv"]);
        let bad = Config::parse_from(["coffer-worker", "--labels", "nonsense"]);
        assert!(bad.parsed_labels().is_err());
    }

    #[test]
    fn roots_must_be_normalised_and_protected_paths_become_absolute() {
        let config = Config::parse_from([
            "coffer-worker",
            "--restore-roots",
            "/restore",
            "--protected-paths",
            "state,/var/lib/coffer",
        ]);
        let roots = config.worker_roots().expect("roots");
        assert_eq!(roots.restore, vec![PathBuf::from("/restore")]);
        assert!(roots.source.is_empty());
        assert!(roots.protected.iter().all(|p| p.is_absolute()));
        assert!(roots.protected.iter().any(|p| p.ends_with("state")));
        let bad = Config::parse_from(["coffer-worker", "--source-roots", "/a/../etc"]);
        assert!(bad.worker_roots().is_err());
    }
}
