//! Start-up: connect the catalog, bootstrap credentials, choose the auth mode.

use std::path::Path;

use crate::auth::{
    ensure_admin_user, ensure_bootstrap_token, mint_secret, AuthMode, Authenticator,
};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::model::user::TokenScope;
use crate::secrets::{Keyring, SecretKey, HOW_TO_CONFIGURE};
use crate::state::AppState;
use crate::tls::{standalone, TlsSettings};

/// Name of the file the standalone mode writes a generated admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the file holding the embedded worker's token.
pub const WORKER_TOKEN_FILE: &str = "worker.token";
/// Name of the file the standalone mode keeps its generated secrets key in.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Connects the catalog (creating the data directory for SQLite), registers the
/// bootstrap tokens from the environment and returns the shared state.
pub async fn prepare(config: &Config) -> anyhow::Result<AppState> {
    let url = config.effective_database_url();
    if config.is_embedded() {
        ensure_private_dir(&config.data_dir)?;
    }
    let catalog = Catalog::connect(&url).await?;
    if config.is_embedded() {
        // SQLite creates its files with the umask's mode.
        for file in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            restrict_to_owner(&config.data_dir.join(file))?;
        }
    }
    tracing::info!(backend = ?catalog.backend(), "catalog ready");

    if let Some(secret) = bootstrap_secret("COFFER_ADMIN_TOKEN")? {
        ensure_bootstrap_token(&catalog, &secret, TokenScope::User).await?;
    } else if catalog.count_admins().await? == 0 {
        if !config.is_embedded() && !config.generate_admin_token {
            anyhow::bail!("the catalog has no admin yet: set COFFER_ADMIN_TOKEN (or COFFER_ADMIN_TOKEN_FILE) for the first start, or COFFER_GENERATE_ADMIN_TOKEN=true to generate one into the data directory");
        }
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        let secret = read_or_mint_secret_file(&config.data_dir, &path)?;
        ensure_bootstrap_token(&catalog, &secret, TokenScope::User).await?;
        tracing::info!(path = %path.display(), "generated the admin token (shown nowhere else)");
    }
    if let Some(secret) = bootstrap_secret("COFFER_WORKER_TOKEN")? {
        ensure_bootstrap_token(&catalog, &secret, TokenScope::Worker).await?;
    }
    if let Some(dir) = &config.worker_tokens_dir {
        for name in &config.worker_tokens {
            let path = dir.join(format!("{name}.token"));
            let secret = read_or_mint_secret_file(dir, &path).map_err(|e| {
                anyhow::anyhow!(
                    "the token of worker {name}: {e} (provide {} or make its directory writable)",
                    path.display()
                )
            })?;
            check_strength(&path.display().to_string(), &secret)?;
            ensure_bootstrap_token(&catalog, &secret, TokenScope::Worker).await?;
        }
        tracing::info!(dir = %dir.display(), workers = config.worker_tokens.len(), "worker tokens ready");
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
    let secrets = secrets_keyring(config)?;
    reseal_under_primary_key(&catalog, &secrets).await?;
    Ok(AppState::new(catalog, auth)
        .with_scheduler_settings(config.scheduler_settings())
        .with_secrets(secrets))
}

/// Seals again under the primary key of `secrets` everything a previous key
/// sealed (secrets, repositories' catalog keys, notification channels), so
/// the old key can be retired once a start with both keys has run.
pub async fn reseal_under_primary_key(
    catalog: &Catalog,
    secrets: &Keyring,
) -> crate::error::DomainResult<()> {
    let counts = [
        ("secrets", catalog.reseal_secrets(secrets).await?),
        (
            "repository catalog keys",
            catalog.reseal_catalog_keys(secrets).await?,
        ),
        (
            "notification channels",
            catalog.reseal_notification_channels(secrets).await?,
        ),
    ];
    for (what, resealed) in counts {
        if resealed > 0 {
            tracing::info!(
                resealed,
                "{what} sealed by a previous key were sealed again with the current one"
            );
        }
    }
    Ok(())
}

/// The TLS material to serve with: `--tls-cert`/`--tls-key`, else in
/// standalone mode (embedded catalog, no `--insecure-plaintext`) the
/// certificate issued by the data directory's own CA, generated or renewed
/// here; `None` for plaintext.
pub fn tls_settings(config: &Config) -> anyhow::Result<Option<TlsSettings>> {
    if let Some(settings) = config.tls_settings() {
        return Ok(Some(settings));
    }
    if !config.generates_tls() {
        return Ok(None);
    }
    let generated = standalone::ensure(&config.data_dir, config.listen.ip())?;
    Ok(Some(TlsSettings {
        cert: generated.cert,
        key: generated.key,
        client_ca: None,
        reload_interval: config.tls_reload_interval(),
    }))
}

/// The keys secrets are sealed with: `COFFER_SECRETS_KEY`, else the file
/// `--secrets-key-file`, else (embedded catalog only) the data directory's
/// `secrets.key`, generated on first start. None of them: secrets are
/// disabled, and the rest of the server works.
pub fn secrets_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let previous = config
        .secrets_previous_key_files
        .iter()
        .map(|path| read_key_file(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let from_env = std::env::var("COFFER_SECRETS_KEY")
        .ok()
        .map(zeroize::Zeroizing::new)
        .filter(|text| !text.trim().is_empty());
    let primary = if let Some(text) = from_env {
        SecretKey::parse(&text).map_err(|e| anyhow::anyhow!("COFFER_SECRETS_KEY {e}"))?
    } else if let Some(path) = &config.secrets_key_file {
        read_key_file(path)?
    } else if config.is_embedded() {
        embedded_secrets_key(config)?
    } else {
        tracing::warn!("no secrets key: SecretService is disabled and buckets cannot use secrets; {HOW_TO_CONFIGURE}");
        return Ok(Keyring::disabled());
    };
    tracing::info!(
        key = primary.id(),
        previous = previous.len(),
        "secrets key loaded"
    );
    Ok(Keyring::new(primary, previous))
}

/// Reads a key file, refused when group or others may read it.
fn read_key_file(path: &Path) -> anyhow::Result<SecretKey> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read the secrets key file {shown}: {e}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the secrets key file {shown} has mode {mode:o}: it must be readable by its owner only (chmod 600)"
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the secrets key file {shown}: {e}"))?,
    );
    SecretKey::parse(&text).map_err(|e| anyhow::anyhow!("the secrets key file {shown} {e}"))
}

/// The standalone mode's key: read from the data directory, or generated
/// and stored there (mode 0600) on first start.
fn embedded_secrets_key(config: &Config) -> anyhow::Result<SecretKey> {
    let path = config.data_dir.join(SECRETS_KEY_FILE);
    if let Some(text) = read_secret_file(&path)?.map(zeroize::Zeroizing::new) {
        return SecretKey::parse(&text)
            .map_err(|e| anyhow::anyhow!("the secrets key file {} {e}", path.display()));
    }
    ensure_private_dir(&config.data_dir)?;
    let key = SecretKey::generate();
    write_secret_file(&path, &key.encode())?;
    tracing::info!(path = %path.display(), "generated the secrets key");
    Ok(key)
}

/// The fewest characters a bootstrap token from the environment may have:
/// 32 hex digits are 128 bits, out of reach of guessing over the network.
const MIN_BOOTSTRAP_SECRET_CHARS: usize = 32;

/// A bootstrap token from `NAME` or `NAME_FILE`, refused when it is too short
/// or one character repeated (`change-me` placeholders and the like).
fn bootstrap_secret(name: &str) -> anyhow::Result<Option<String>> {
    let Some(secret) = secret_from_env(name)? else {
        return Ok(None);
    };
    check_strength(name, &secret)?;
    Ok(Some(secret))
}

/// Refuses a secret that is too short or one character repeated.
fn check_strength(name: &str, secret: &str) -> anyhow::Result<()> {
    let distinct: std::collections::BTreeSet<char> = secret.chars().collect();
    if secret.chars().count() < MIN_BOOTSTRAP_SECRET_CHARS || distinct.len() < 8 {
        anyhow::bail!(
            "{name} is too weak: use at least {MIN_BOOTSTRAP_SECRET_CHARS} random characters \
             (for example `openssl rand -hex 32`)"
        );
    }
    Ok(())
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

/// Creates `dir` (and its parents) if needed and makes it private to its
/// owner (0700) whatever the umask: it holds the catalog and the tokens.
pub(crate) fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    restrict_to_owner(dir)
}

/// Takes group and other permissions away from `path` (a directory keeps
/// its owner's search bit); a path that does not exist is left alone.
fn restrict_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o777;
    let private = mode & 0o700;
    if mode != private {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "permissions were looser than owner-only; tightened");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))?;
    }
    Ok(())
}

/// Writes a secret to `path`, mode 0600 whatever the umask or the mode of a
/// file already there, refusing to follow a symlink planted at `path`.
pub(crate) fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {} (a symlink is refused): {e}",
                path.display()
            )
        })?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(())
}

/// Reads a secret file written by [`write_secret_file`], tightening its
/// mode to 0600 if someone loosened it; `None` if it is missing or empty.
pub(crate) fn read_secret_file(path: &Path) -> anyhow::Result<Option<String>> {
    let Ok(secret) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    if let Err(error) = restrict_to_owner(path) {
        // A read-only mount (a Kubernetes Secret) cannot be changed, nor
        // written by anyone; its mode is the mount's business.
        tracing::warn!(path = %path.display(), %error, "could not tighten the permissions of a secret file");
    }
    Ok(Some(secret.trim().to_string()).filter(|secret| !secret.is_empty()))
}

/// The embedded worker's token: read from the data directory, or minted,
/// stored there (mode 0600) and registered on first start.
pub async fn embedded_worker_token(config: &Config, catalog: &Catalog) -> anyhow::Result<String> {
    let path = config.data_dir.join(WORKER_TOKEN_FILE);
    let secret = read_or_mint_secret_file(&config.data_dir, &path)?;
    ensure_bootstrap_token(catalog, &secret, TokenScope::Worker).await?;
    Ok(secret)
}

/// The secret in `path`, or a freshly minted one written there (mode 0600,
/// in `dir` made private) when the file is missing or empty. Replicas
/// sharing `dir` that start together all end up with the same secret: the
/// new file is written aside and linked into place, which fails when
/// another process linked its own first; that one is then read.
fn read_or_mint_secret_file(dir: &Path, path: &Path) -> anyhow::Result<String> {
    if let Some(secret) = read_secret_file(path)? {
        return Ok(secret);
    }
    ensure_private_dir(dir)?;
    let minted = mint_secret();
    let aside = dir.join(format!(".minting-{}", uuid::Uuid::new_v4().simple()));
    write_secret_file(&aside, &minted.secret)?;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        // An empty file left by an interrupted write is replaced.
        std::fs::remove_file(path)?;
    }
    let linked = std::fs::hard_link(&aside, path);
    std::fs::remove_file(&aside)?;
    match linked {
        Ok(()) => Ok(minted.secret),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path)?
            .ok_or_else(|| anyhow::anyhow!("{} appeared empty while minting it", path.display())),
        Err(error) => Err(anyhow::anyhow!("cannot write {}: {error}", path.display())),
    }
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
        class: coffer_worker::class::WorkerClass::All,
        drain_timeout: config.shutdown_grace(),
        progress_interval: coffer_worker::session::PROGRESS_INTERVAL,
        // Plaintext over loopback to its own process.
        tls: coffer_worker::connect::ClientTls::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn data_dir_becomes_private_whatever_it_was() {
        let root = tempfile::tempdir().expect("temp dir");
        let fresh = root.path().join("a/b/data");
        ensure_private_dir(&fresh).expect("create");
        assert_eq!(mode_of(&fresh), 0o700);
        let loose = root.path().join("loose");
        std::fs::create_dir(&loose).expect("create");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&loose).expect("tighten");
        assert_eq!(mode_of(&loose), 0o700);
    }

    #[test]
    fn secret_files_are_owner_only_and_never_written_through_a_symlink() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("admin.token");
        std::fs::write(&path, "old\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_secret_file(&path, "new-secret").expect("write secret");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            read_secret_file(&path).expect("read").as_deref(),
            Some("new-secret")
        );

        let elsewhere = root.path().join("authorized_keys");
        std::fs::write(&elsewhere, "ssh-ed25519 AAAA\n").expect("write");
        let planted = root.path().join("worker.token");
        std::os::unix::fs::symlink(&elsewhere, &planted).expect("symlink");
        assert!(write_secret_file(&planted, "secret").is_err());
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "ssh-ed25519 AAAA\n"
        );
    }

    #[test]
    fn weak_bootstrap_tokens_are_refused() {
        let name = "COFFER_TEST_BOOTSTRAP_SECRET";
        for weak in ["change-me-admin-token", &"a".repeat(64)] {
            std::env::set_var(name, weak);
            let error = bootstrap_secret(name).expect_err("weak token refused");
            assert!(error.to_string().contains(name), "{error}");
        }
        let strong = "3f9c2a7be1d04c58a6e2b9f07d13c4e8";
        std::env::set_var(name, strong);
        assert_eq!(
            bootstrap_secret(name).expect("accepted").as_deref(),
            Some(strong)
        );
        std::env::remove_var(name);
        assert_eq!(bootstrap_secret(name).expect("unset is fine"), None);
    }

    #[test]
    fn a_secrets_key_file_others_may_read_is_refused() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("secrets.key");
        let key = SecretKey::generate();
        write_secret_file(&path, &key.encode()).expect("write");
        assert_eq!(read_key_file(&path).expect("owner-only").id(), key.id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = read_key_file(&path).expect_err("group-readable");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert!(!error.to_string().contains(key.encode().as_str()));
    }

    #[test]
    fn processes_minting_one_token_file_at_once_agree_on_one_secret() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("worker-tokens");
        let path = dir.join("worker-1.token");
        let secrets: Vec<String> = std::thread::scope(|scope| {
            let minters: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| read_or_mint_secret_file(&dir, &path).expect("mint")))
                .collect();
            minters
                .into_iter()
                .map(|m| m.join().expect("minter"))
                .collect()
        });
        assert!(secrets.iter().all(|s| *s == secrets[0]), "{secrets:?}");
        assert_eq!(
            read_secret_file(&path).expect("read"),
            Some(secrets[0].clone())
        );
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).expect("list").count(),
            1,
            "no leftovers"
        );
    }

    #[test]
    fn a_loosened_token_file_is_tightened_when_read() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("worker.token");
        write_secret_file(&path, "secret").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        assert_eq!(
            read_secret_file(&path).expect("read").as_deref(),
            Some("secret")
        );
        assert_eq!(mode_of(&path), 0o600);
    }
}
