//! Test support shared by the integration tests of the control plane and the
//! worker: a real control plane on an ephemeral loopback port over a real
//! catalog (a fresh PostgreSQL database per test, or a fresh SQLite file).
//!
//! PostgreSQL needs `DATABASE_URL` pointing at a server where the user may
//! create databases; `scripts/test.sh` starts one. Without it, PostgreSQL tests
//! fail loudly rather than skip, so a green run always means both backends ran.

use std::net::SocketAddr;
use std::time::Duration;

use coffer_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Request;
use uuid::Uuid;

use crate::auth::{ensure_bootstrap_token, mint_secret, AuthMode, Authenticator};
use crate::catalog::leases::LeaseSettings;
use crate::catalog::Catalog;
use crate::model::grant::GrantUse;
use crate::model::user::TokenScope;
use crate::scheduler::{SchedulerHandle, SchedulerSettings};
use crate::secrets::{Keyring, SecretKey};
use crate::state::AppState;
use crate::tls::{Listeners, TlsServer};

mod client;
pub mod scrape;
pub mod tls;

pub use client::{Api, Bearer, ALL_USES};

/// Which catalog backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh database on the server named by `DATABASE_URL`.
    Postgres,
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
}

/// A fresh, migrated catalog of the given backend. Keep the returned guard alive.
pub async fn fresh_catalog(backend: Backend) -> (Catalog, CatalogGuard) {
    let guard = empty_database(backend).await;
    let catalog = Catalog::connect(&guard.url)
        .await
        .expect("migrate test database");
    (catalog, guard)
}

/// A fresh, empty database of the given backend, not migrated (its URL is
/// [`CatalogGuard::url`]). Keep the returned guard alive.
pub async fn empty_database(backend: Backend) -> CatalogGuard {
    match backend {
        Backend::Postgres => {
            let admin_url = std::env::var("DATABASE_URL").expect(
                "DATABASE_URL must name a PostgreSQL server for the postgres tests; run scripts/test.sh",
            );
            let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
            let admin = Catalog::connect_without_migrating(&admin_url)
                .await
                .expect("connect to DATABASE_URL");
            admin
                .execute_raw(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            admin.close().await;
            let url = replace_database(&admin_url, &name);
            CatalogGuard { _dir: None, url }
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
            CatalogGuard {
                _dir: Some(dir),
                url,
            }
        }
    }
}

/// Keeps a test's temporary files alive.
pub struct CatalogGuard {
    _dir: Option<tempfile::TempDir>,
    url: String,
}

impl CatalogGuard {
    /// The URL of the test's catalog, to connect another replica to it.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host_part = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{host_part}/{database}?{query}"),
        None => format!("{host_part}/{database}"),
    }
}

/// A control plane serving on 127.0.0.1 with an admin token.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Secret of the bootstrap admin token.
    pub admin_token: String,
    /// Secret of a worker-scope token.
    pub worker_token: String,
    /// The server's shared state; tests reach it through [`TestServer::catalog`]
    /// and [`TestServer::scheduler`] only.
    state: AppState,
    /// A lazily connecting channel to `addr`, shared by the typed clients.
    channel: Channel,
    shutdown: CancellationToken,
    serving: Option<tokio::task::JoinHandle<()>>,
    guard: Option<CatalogGuard>,
    tls: Option<ServerTls>,
}

/// TLS of a test server: what it serves, and how its own clients trust it.
#[derive(Clone)]
pub struct ServerTls {
    /// The server side.
    pub server: TlsServer,
    /// The client side the typed clients use.
    pub client: ClientTlsConfig,
}

impl TestServer {
    /// Starts a control plane with authentication required.
    pub async fn start(backend: Backend) -> TestServer {
        let (catalog, guard) = fresh_catalog(backend).await;
        Self::start_on(catalog, guard).await
    }

    /// Starts a control plane serving TLS (plaintext on loopback is the
    /// default of every other constructor).
    pub async fn start_with_tls(backend: Backend, tls: ServerTls) -> TestServer {
        let (catalog, guard) = fresh_catalog(backend).await;
        Self::start_configured(
            catalog,
            guard,
            LeaseSettings::default(),
            SchedulerSettings::default(),
            Some(tls),
            test_keyring(),
        )
        .await
    }

    /// Starts a control plane with the given lease timing.
    pub async fn start_with_leases(backend: Backend, settings: LeaseSettings) -> TestServer {
        let (catalog, guard) = fresh_catalog(backend).await;
        let scheduler = SchedulerSettings::default();
        Self::start_configured(catalog, guard, settings, scheduler, None, test_keyring()).await
    }

    /// Starts a control plane with the given scheduler timing.
    pub async fn start_with_scheduler(
        backend: Backend,
        scheduler: SchedulerSettings,
    ) -> TestServer {
        let (catalog, guard) = fresh_catalog(backend).await;
        let lease = LeaseSettings::default();
        Self::start_configured(catalog, guard, lease, scheduler, None, test_keyring()).await
    }

    /// Starts a control plane with the given secrets keys (e.g. none).
    pub async fn start_with_secrets(backend: Backend, secrets: Keyring) -> TestServer {
        let (catalog, guard) = fresh_catalog(backend).await;
        let (lease, scheduler) = (LeaseSettings::default(), SchedulerSettings::default());
        Self::start_configured(catalog, guard, lease, scheduler, None, secrets).await
    }

    /// Starts a control plane over an existing catalog.
    pub async fn start_on(catalog: Catalog, guard: CatalogGuard) -> TestServer {
        Self::start_configured(
            catalog,
            guard,
            LeaseSettings::default(),
            SchedulerSettings::default(),
            None,
            test_keyring(),
        )
        .await
    }

    /// Starts another replica of this control plane: its own connection pool
    /// to the same catalog, its own port, the same tokens and settings (and a
    /// scheduler instance of its own).
    pub async fn start_replica(&self) -> TestServer {
        self.start_replica_with(self.state.scheduler.settings())
            .await
    }

    /// Starts another replica of this control plane with other scheduler settings.
    pub async fn start_replica_with(&self, scheduler: SchedulerSettings) -> TestServer {
        let url = self
            .guard
            .as_ref()
            .expect("a running server holds its catalog guard")
            .url
            .clone();
        let catalog = Catalog::connect(&url).await.expect("connect replica");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(
            catalog,
            CatalogGuard { _dir: None, url },
            self.state.lease_settings,
            scheduler,
            listener,
            self.admin_token.clone(),
            self.worker_token.clone(),
            self.tls.clone(),
            self.state.secrets.clone(),
        )
    }

    async fn start_configured(
        catalog: Catalog,
        guard: CatalogGuard,
        settings: LeaseSettings,
        scheduler: SchedulerSettings,
        tls: Option<ServerTls>,
        secrets: Keyring,
    ) -> TestServer {
        let admin_token = mint_secret().secret;
        let worker_token = mint_secret().secret;
        ensure_bootstrap_token(&catalog, &admin_token, TokenScope::User)
            .await
            .expect("admin token");
        ensure_bootstrap_token(&catalog, &worker_token, TokenScope::Worker)
            .await
            .expect("worker token");
        grant_admin_everything(&catalog).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(
            catalog,
            guard,
            settings,
            scheduler,
            listener,
            admin_token,
            worker_token,
            tls,
            secrets,
        )
    }

    #[allow(clippy::too_many_arguments)] // test set-up: every part of a server
    fn serve(
        catalog: Catalog,
        guard: CatalogGuard,
        settings: LeaseSettings,
        scheduler: SchedulerSettings,
        listener: TcpListener,
        admin_token: String,
        worker_token: String,
        tls: Option<ServerTls>,
        secrets: Keyring,
    ) -> TestServer {
        let auth = Authenticator::new(catalog.clone(), AuthMode::Required);
        let state = AppState::new(catalog, auth)
            .with_lease_settings(settings)
            .with_scheduler_settings(scheduler)
            .with_secrets(secrets);
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let serve_state = state.clone();
        let serve_shutdown = shutdown.clone();
        let listeners = match &tls {
            Some(tls) => Listeners::tls(listener, &tls.server),
            None => Listeners::plaintext(listener),
        };
        let serving = tokio::spawn(async move {
            crate::server::serve_with(serve_state, listeners, serve_shutdown.cancelled_owned())
                .await
                .expect("server failed");
        });
        let channel = endpoint(addr, tls.as_ref()).connect_lazy();
        TestServer {
            addr,
            admin_token,
            worker_token,
            state,
            channel,
            shutdown,
            serving: Some(serving),
            guard: Some(guard),
            tls,
        }
    }

    /// Serves this server's Prometheus metrics on a loopback port of its own
    /// until the server stops; returns the URL to scrape.
    pub async fn serve_metrics(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the metrics listener");
        let addr = listener.local_addr().expect("local addr");
        // Installed now, so that what happens from here on is counted.
        coffer_telemetry::recorder();
        tokio::spawn(coffer_telemetry::serve(
            listener,
            Some(crate::monitoring::refresh(
                self.catalog().clone(),
                self.state.lease_settings,
            )),
            self.shutdown.clone(),
        ));
        format!("http://{addr}/metrics")
    }

    /// Deletes every grant of the bootstrap admin, so the admin is refused
    /// like anyone without a grant.
    pub async fn revoke_admin_grants(&self) {
        let admin = crate::auth::ensure_admin_user(self.catalog())
            .await
            .expect("admin user");
        for grant in self.catalog().grants_of(admin.id).await.expect("grants") {
            self.catalog()
                .delete_grant(grant.id)
                .await
                .expect("delete grant");
        }
    }

    /// Stops serving, waits until the server is gone, and serves again on the
    /// same address over the same catalog, as a restarted control plane would.
    pub async fn restart(mut self) -> TestServer {
        self.shutdown.cancel();
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(std::time::Duration::from_secs(30), serving)
                .await
                .expect("server stopped within 30 s")
                .expect("server task");
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the same address again");
        let guard = self.guard.take().expect("catalog guard");
        Self::serve(
            self.state.catalog.clone(),
            guard,
            self.state.lease_settings,
            self.state.scheduler.settings(),
            listener,
            self.admin_token.clone(),
            self.worker_token.clone(),
            self.tls.clone(),
            self.state.secrets.clone(),
        )
    }

    /// Restarts like [`TestServer::restart`] with other secrets keys, after
    /// the start-up's resealing under the new primary key.
    pub async fn restart_with_secrets(mut self, secrets: Keyring) -> TestServer {
        crate::startup::reseal_under_primary_key(&self.state.catalog, &secrets)
            .await
            .expect("reseal under the new key");
        self.state = self.state.clone().with_secrets(secrets);
        self.restart().await
    }

    /// Sets the configuration `key` to `value` as the admin; panics when it
    /// is refused.
    pub async fn configure(&self, key: &str, value: &str) -> pb::Configuration {
        self.admin()
            .create_configuration(pb::Configuration {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("configuration {key}={value} refused: {status:?}"))
    }

    /// The keys this server seals secrets with.
    pub fn secrets(&self) -> &Keyring {
        &self.state.secrets
    }

    /// The catalog under the server, for white-box assertions and set-up the
    /// API cannot make.
    pub fn catalog(&self) -> &Catalog {
        &self.state.catalog
    }

    /// This replica's scheduler handle: its settings, lease identity and status.
    pub fn scheduler(&self) -> &SchedulerHandle {
        &self.state.scheduler
    }

    /// The API as the bootstrap admin.
    pub fn admin(&self) -> Api {
        self.as_user(&self.admin_token)
    }

    /// The API as the worker-scope token.
    pub fn as_worker(&self) -> Api {
        self.as_user(&self.worker_token)
    }

    /// The worker-scope token of the worker named `name`. A worker token
    /// belongs to one worker, so every worker of a test gets its own:
    /// derived from `worker_token` and the name, so that asking again (a
    /// restarted worker, a replica) gives the same one.
    pub async fn worker_token_for(&self, name: &str) -> String {
        use base64::Engine;
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{}/{name}", self.worker_token));
        let secret = format!(
            "{}{}",
            crate::auth::TOKEN_PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        );
        ensure_bootstrap_token(self.catalog(), &secret, TokenScope::Worker)
            .await
            .expect("worker token");
        secret
    }

    /// The API as the holder of `token`.
    pub fn as_user(&self, token: &str) -> Api {
        Api::new(self.channel.clone(), token)
    }

    /// A run as the admin sees it through `RunService/GetRun`.
    pub async fn get_run(&self, id: &str) -> pb::Run {
        self.admin().get_run(id).await.expect("get run")
    }

    /// Every registered worker as the admin sees it through
    /// `WorkerService/ListWorkers`, offline ones included.
    pub async fn registered_workers(&self) -> Vec<pb::Worker> {
        self.admin()
            .workers
            .list_workers(pb::ListWorkersRequest {
                include_offline: true,
            })
            .await
            .expect("list workers")
            .into_inner()
            .workers
    }

    /// Whether a lease session of the worker with id `worker_id` is open on
    /// this replica.
    pub fn serves_worker(&self, worker_id: &str) -> bool {
        Uuid::parse_str(worker_id).is_ok_and(|id| self.state.dispatch.serves(id))
    }

    /// Waits (up to `limit`) until the run is final.
    pub async fn wait_until_final(&self, id: &str, limit: Duration) -> pb::Run {
        self.admin().wait_for_run(id, limit, is_final).await
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        endpoint(self.addr, self.tls.as_ref())
            .connect()
            .await
            .expect("connect to test server")
    }

    /// The server's URL: `https://127.0.0.1:<port>` when it serves TLS.
    pub fn url(&self) -> String {
        url(self.addr, self.tls.as_ref())
    }

    /// Stops serving (as a crash or restart of the control plane would).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// A user created by the admin, with a user token: `(user, token secret)`.
    pub async fn create_user(&self, username: &str) -> (pb::User, String) {
        self.admin().create_user_with_token(username).await
    }
}

fn url(addr: SocketAddr, tls: Option<&ServerTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// An endpoint for the server at `addr`, over TLS when it serves TLS.
fn endpoint(addr: SocketAddr, tls: Option<&ServerTls>) -> Endpoint {
    let endpoint = Endpoint::from_shared(url(addr, tls)).expect("valid uri");
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client.clone())
            .expect("client TLS config"),
        None => endpoint,
    }
}

/// A fresh random secrets key, as a standalone control plane generates.
fn test_keyring() -> Keyring {
    Keyring::new(SecretKey::generate(), Vec::new())
}

/// Whether a run has reached a final state (succeeded, failed or cancelled).
pub fn is_final(run: &pb::Run) -> bool {
    [
        pb::RunState::Succeeded,
        pb::RunState::Failed,
        pb::RunState::Cancelled,
    ]
    .into_iter()
    .any(|state| run.state == state as i32)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Wraps a message in a request carrying `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("token is ASCII"),
    );
    request
}

/// Grants the bootstrap admin `/` for every use, so tests about other
/// things run as before grants existed; [`TestServer::revoke_admin_grants`]
/// takes it back for tests about grants.
async fn grant_admin_everything(catalog: &Catalog) {
    let admin = crate::auth::ensure_admin_user(catalog)
        .await
        .expect("admin user");
    let spec = crate::model::grant::GrantSpec {
        grantee_id: admin.id,
        worker_selector: Default::default(),
        root: "/".to_string(),
        uses: vec![
            GrantUse::BackupSource,
            GrantUse::RestoreDestination,
            GrantUse::Repository,
            GrantUse::InPlaceRestore,
        ],
        restore_ownership: true,
        restore_special_bits: true,
    };
    catalog
        .create_grant(&spec, admin.id)
        .await
        .expect("grant the admin everything");
}
