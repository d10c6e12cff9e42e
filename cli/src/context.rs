//! Contexts: named control planes with their endpoint, CA and token, kept in
//! `$XDG_CONFIG_HOME/coffer/config.yaml` (mode 0600, it holds tokens), and
//! how flags and the environment override them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The endpoint a fresh install listens on.
pub const DEFAULT_ENDPOINT: &str = "localhost:50051";

/// The config file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One control plane and how to reach it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `host:port` (TLS), `https://…` or `http://…` (plaintext).
    pub endpoint: String,
    /// PEM file of the CA that signed the server's certificate (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// The API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What the command line and the environment say, before contexts.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub context: Option<String>,
    pub endpoint: Option<String>,
    pub cacert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// `COFFER_TOKEN`.
    pub token: Option<String>,
}

/// Where to connect, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/coffer/config.yaml`, or `~/.config/coffer/config.yaml`.
pub fn config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home =
                std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("coffer").join("config.yaml"))
}

impl Config {
    /// Reads the config file; a missing one is empty.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a coffer config", path.display()))
    }

    /// Writes the file with mode 0600 in a 0700 directory, atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().context("config path has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let text = serde_yaml_ng::to_string(self)?;
        let temporary = dir.join(".config.yaml.tmp");
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The named context, or the current one.
    pub fn context(&self, name: Option<&str>) -> anyhow::Result<Option<&Context>> {
        match name.or(self.current.as_deref()) {
            Some(name) => match self.contexts.get(name) {
                Some(context) => Ok(Some(context)),
                None => bail!("no context named {name:?} (coffer context list)"),
            },
            None => Ok(None),
        }
    }
}

impl Overrides {
    /// Flags and environment over the chosen context over the defaults.
    pub fn resolve(&self, config: &Config) -> anyhow::Result<Target> {
        let context = config
            .context(self.context.as_deref())?
            .cloned()
            .unwrap_or_default();
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| Some(context.endpoint.clone()).filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = match (&self.token_file, &self.token) {
            (Some(file), _) => Some(read_token_file(file)?),
            (None, Some(token)) => Some(token.trim().to_string()),
            (None, None) => context.token.clone(),
        };
        let cacert = self.cacert.clone().or(context.cacert.clone());
        let ca_pem = match cacert {
            Some(path) => Some(
                std::fs::read(&path)
                    .with_context(|| format!("reading the CA file {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Target {
            endpoint,
            ca_pem,
            token,
        })
    }
}

/// A token file holds the token on its first line.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}
