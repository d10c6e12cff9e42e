//! Attacks on the transport: a plaintext client against a TLS server, an
//! impostor control plane, certificate renewal, client certificates (mTLS)
//! and the refusal to serve plaintext off loopback.

use crate::support;
use crate::support::lease_session;

use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::testing::tls::{client_tls, Issued, TestCa, TlsFiles};
use coffer_control_plane::testing::ServerTls;
use coffer_control_plane::tls::TlsServer;
use coffer_proto::v1 as pb;
use support::{authed, Backend, TestServer};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A TLS server of `ca`, with client certificates of `client_ca` required
/// when given. Returns the server, its files and the CA.
async fn tls_server(
    backend: Backend,
    client_ca: Option<&TestCa>,
) -> (TestServer, TlsFiles, TestCa) {
    let ca = TestCa::new("coffer test CA");
    let files = TlsFiles::new(&ca.server_certificate());
    let client_ca_path = client_ca.map(|ca| files.write("client-ca.pem", ca.pem()));
    let identity = client_ca.map(|ca| ca.client_certificate("harness"));
    let server = TlsServer::new(&files.settings(client_ca_path.as_deref())).expect("TLS server");
    let tls = ServerTls {
        server,
        client: client_tls(&ca, identity.as_ref()),
    };
    (TestServer::start_with_tls(backend, tls).await, files, ca)
}

async fn channel(
    url: String,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url)
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(5));
    let endpoint = match tls {
        Some(tls) => endpoint.tls_config(tls)?,
        None => endpoint,
    };
    endpoint.connect().await
}

async fn user_count(server: &TestServer) -> usize {
    server
        .admin()
        .users
        .list_users(pb::ListUsersRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list users over TLS")
        .into_inner()
        .users
        .len()
}

/// Creates a user through `channel` with the admin token.
async fn try_create_user(server: &TestServer, channel: Channel) -> Result<(), tonic::Status> {
    pb::user_service_client::UserServiceClient::new(channel)
        .create_user(authed(
            &server.admin_token,
            pb::CreateUserRequest {
                user: Some(pb::User {
                    username: "mallory".into(),
                    email: "mallory@example.com".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .map(|_| ())
}

async fn plaintext_client_learns_nothing_from_a_tls_server(backend: Backend) {
    let (server, _files, _ca) = tls_server(backend, None).await;
    let before = user_count(&server).await;
    let plain = format!("http://{}", server.addr);
    // The HTTP/2 preface is no TLS ClientHello: the connection is dropped
    // before anything is served, health and reflection included.
    if let Ok(channel) = channel(plain.clone(), None).await {
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await;
        assert!(health.is_err(), "health answered in plaintext: {health:?}");
        let reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([
                tonic_reflection::pb::v1::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
                    ),
                },
            ]))
            .await;
        assert!(reflection.is_err(), "reflection answered in plaintext");
        assert!(try_create_user(&server, channel).await.is_err());
    }
    assert_eq!(user_count(&server).await, before, "nothing was created");
}

async fn a_client_trusting_another_ca_refuses_the_server(backend: Backend) {
    let (server, _files, _ca) = tls_server(backend, None).await;
    let before = user_count(&server).await;
    let stranger = TestCa::new("someone else's CA");
    let result = channel(server.url(), Some(client_tls(&stranger, None))).await;
    match result {
        Err(_) => {}
        Ok(channel) => {
            let status = try_create_user(&server, channel)
                .await
                .expect_err("a server of another CA is refused");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
    }
    assert_eq!(user_count(&server).await, before);
}

/// The leaf certificate a new TLS connection to `server` is shown.
async fn served_certificate(server: &TestServer, ca: &TestCa) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("add CA");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(coffer_control_plane::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .to_vec()
}

/// Waits until new connections are shown `expected`.
async fn wait_for_certificate(server: &TestServer, ca: &TestCa, expected: &Issued) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served_certificate(server, ca).await != expected.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_renewed_certificate_is_served_without_a_restart(backend: Backend) {
    let ca = TestCa::new("coffer test CA");
    let first = ca.server_certificate();
    let files = TlsFiles::new(&first);
    let tls = ServerTls {
        server: TlsServer::new(&files.settings(None)).expect("TLS server"),
        client: client_tls(&ca, None),
    };
    let server = TestServer::start_with_tls(backend, tls).await;
    assert_eq!(served_certificate(&server, &ca).await, first.der);
    let existing = server.admin();

    let renewed = ca.server_certificate();
    files.replace(&renewed);
    wait_for_certificate(&server, &ca, &renewed).await;

    // A broken replacement keeps the renewed certificate in service.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("break");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_certificate(&server, &ca).await, renewed.der);
    // Connections made before the renewal keep working.
    existing
        .users
        .clone()
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("an existing connection outlives the renewal");
}

async fn mtls_refuses_clients_without_a_certificate_of_its_ca(backend: Backend) {
    let clients = TestCa::new("worker CA");
    let (server, _files, ca) = tls_server(backend, Some(&clients)).await;
    let before = user_count(&server).await;

    let no_certificate = channel(server.url(), Some(client_tls(&ca, None))).await;
    if let Ok(channel) = no_certificate {
        assert!(try_create_user(&server, channel).await.is_err());
    }
    let forger = TestCa::new("forged worker CA");
    let forged = forger.client_certificate("w1");
    let foreign = channel(server.url(), Some(client_tls(&ca, Some(&forged)))).await;
    if let Ok(channel) = foreign {
        assert!(try_create_user(&server, channel).await.is_err());
    }
    assert_eq!(user_count(&server).await, before, "nothing was created");

    // A good certificate is not enough: the bearer token is still required.
    let good = clients.client_certificate("w1");
    let channel = channel(server.url(), Some(client_tls(&ca, Some(&good))))
        .await
        .expect("a client of the CA connects");
    let status = pb::user_service_client::UserServiceClient::new(channel.clone())
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    try_create_user(&server, channel)
        .await
        .expect("certificate and token together are accepted");
}

/// Every worker server-side, offline ones included.
async fn worker_names(server: &TestServer) -> Vec<String> {
    server
        .registered_workers()
        .await
        .into_iter()
        .map(|worker| worker.name)
        .collect()
}

async fn a_worker_certificate_cannot_announce_another_workers_name(backend: Backend) {
    let clients = TestCa::new("worker CA");
    let ca = TestCa::new("coffer test CA");
    let files = TlsFiles::new(&ca.server_certificate());
    let client_ca = files.write("client-ca.pem", clients.pem());
    // Every connection of this server's clients presents worker-a's certificate.
    let worker_a = clients.client_certificate("worker-a");
    let tls = ServerTls {
        server: TlsServer::new(&files.settings(Some(&client_ca))).expect("TLS server"),
        client: client_tls(&ca, Some(&worker_a)),
    };
    let server = TestServer::start_with_tls(backend, tls).await;
    let run_id = lease_session::queue_backup(&server, "/backups/identity").await;
    let token = server.worker_token_for("worker-b").await;

    let status = lease_session::open(&server, &token, "worker-b")
        .await
        .err()
        .expect("worker-a's certificate cannot register worker-b");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("worker-b") && status.message().contains("worker-a"),
        "the refusal names the mismatch: {status:?}"
    );
    assert!(
        !worker_names(&server)
            .await
            .contains(&"worker-b".to_string()),
        "nothing about worker-b was registered"
    );
    let run = server.get_run(&run_id).await;
    assert_eq!(run.state, pb::RunState::Queued as i32, "nothing was leased");

    // The same token announcing the certificate's own name is welcome and
    // leases the run.
    let mut session = lease_session::open(&server, &token, "worker-a")
        .await
        .expect("worker-a announces its own name");
    session.credit(1).await;
    let lease = session.assignment().await;
    assert_eq!(lease.run_id, run_id);
    assert_eq!(worker_names(&server).await, vec!["worker-a".to_string()]);
}

both_backends!(
    a_worker_certificate_cannot_announce_another_workers_name,
    plaintext_client_learns_nothing_from_a_tls_server,
    a_client_trusting_another_ca_refuses_the_server,
    a_renewed_certificate_is_served_without_a_restart,
    mtls_refuses_clients_without_a_certificate_of_its_ca,
);

/// Kills the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary in standalone mode on an OS-chosen port of
/// `host` with `data` as its data directory and `args`; returns the process
/// and the address it serves TLS on.
async fn start_binary(
    host: &str,
    data: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> (Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coffer-control-plane"))
        .args(["--listen", &format!("{host}:0"), "--log-format", "text"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("COFFER_LOG", "info")
        .env_remove("COFFER_DATABASE_URL")
        .env_remove("SQLALCHEMY_DATABASE_URL")
        .env_remove("COFFER_INSECURE_PLAINTEXT")
        .env_remove("COFFER_TLS_CERT")
        .env_remove("COFFER_TLS_KEY")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the control plane");
    let stderr = child.stderr.take().expect("piped stderr");
    let process = Child(child);
    // The address comes from the start-up line (the port was chosen by the
    // OS); the rest of the log is drained so the process never blocks on it.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("serving TLS") {
                let _ = sender.send(line);
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || receiver.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("log reader")
        .expect("the control plane never served TLS");
    // `listen=<host>:<port>` (the text log may carry colour codes).
    let port: String = line
        .split(&format!("{host}:"))
        .nth(1)
        .expect("listen address in the log")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (process, format!("{host}:{port}"))
}

/// Stops the process and waits for it (SIGKILL: a crash is a restart too).
fn stop(process: Child) {
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_and_its_embedded_worker_still_connects() {
    let ca = TestCa::new("coffer test CA");
    let files = TlsFiles::new(&ca.server_certificate());
    let data = tempfile::tempdir().expect("temp dir");
    let args = [
        "--tls-cert".as_ref(),
        files.cert.as_os_str(),
        "--tls-key".as_ref(),
        files.key.as_os_str(),
    ];
    let (process, listen) = start_binary("127.0.0.1", data.path(), &args).await;
    let token = std::fs::read_to_string(data.path().join("admin.token")).expect("admin token");
    let channel = channel(format!("https://{listen}"), Some(client_tls(&ca, None)))
        .await
        .expect("connect over TLS");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = pb::worker_service_client::WorkerServiceClient::new(channel.clone())
            .list_workers(authed(token.trim(), pb::ListWorkersRequest::default()))
            .await
            .expect("list workers over TLS")
            .into_inner()
            .workers;
        if workers
            .iter()
            .any(|w| w.name.starts_with("embedded-") && w.connected)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the embedded worker never connected: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(process);
}

/// A client trusting exactly the PEM CA certificate `ca_pem`.
fn trusting(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost")
}

/// Whether health answers over `channel`.
async fn healthy(channel: Channel) -> bool {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_serves_tls_from_its_own_ca_and_refuses_plaintext() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().expect("temp dir");
    let tls_dir = data.path().join("tls");
    let (process, listen) = start_binary("127.0.0.1", data.path(), &[]).await;

    // A plaintext client gets nothing: the handshake fails before any call.
    if let Ok(plain) = channel(format!("http://{listen}"), None).await {
        assert!(!healthy(plain).await, "health answered in plaintext");
    }
    // A client trusting the generated CA is served, token checks and all.
    let ca = std::fs::read_to_string(tls_dir.join("ca.pem")).expect("ca.pem");
    let trusted = channel(format!("https://{listen}"), Some(trusting(&ca)))
        .await
        .expect("a client trusting ca.pem connects");
    assert!(healthy(trusted.clone()).await);
    let token = std::fs::read_to_string(data.path().join("admin.token")).expect("admin token");
    pb::user_service_client::UserServiceClient::new(trusted)
        .list_users(authed(token.trim(), pb::ListUsersRequest::default()))
        .await
        .expect("an authenticated call over the generated TLS");
    // A client trusting another CA refuses the server.
    let stranger = TestCa::new("someone else's CA");
    if let Ok(channel) = channel(format!("https://{listen}"), Some(trusting(stranger.pem()))).await
    {
        assert!(
            !healthy(channel).await,
            "a server of another CA was trusted"
        );
    }
    for key in ["server.key", "ca.key"] {
        let mode = std::fs::metadata(tls_dir.join(key))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let certificate = std::fs::read_to_string(tls_dir.join("server.pem")).expect("server.pem");
    stop(process);

    // A second start reuses the CA and the certificate.
    let (process, listen) = start_binary("127.0.0.1", data.path(), &[]).await;
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("ca.pem")).expect("ca.pem"),
        ca
    );
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("server.pem")).expect("server.pem"),
        certificate
    );
    let again = channel(format!("https://{listen}"), Some(trusting(&ca)))
        .await
        .expect("the same ca.pem still works");
    assert!(healthy(again).await);
    stop(process);

    // A listen host the certificate does not cover gets a new certificate
    // from the same CA, so clients keep their ca.pem.
    let (process, listen) = start_binary("127.0.0.2", data.path(), &[]).await;
    assert_eq!(
        std::fs::read_to_string(tls_dir.join("ca.pem")).expect("ca.pem"),
        ca
    );
    assert_ne!(
        std::fs::read_to_string(tls_dir.join("server.pem")).expect("server.pem"),
        certificate
    );
    let moved = channel(
        format!("https://{listen}"),
        Some(trusting(&ca).domain_name("127.0.0.2")),
    )
    .await
    .expect("ca.pem trusts the certificate for the new host");
    assert!(healthy(moved).await);
    stop(process);
}

#[test]
fn the_binary_refuses_plaintext_off_loopback_without_the_flag() {
    let data = tempfile::tempdir().expect("temp dir");
    // With PostgreSQL (not standalone, which generates its own TLS); the
    // refusal comes before the database is reached.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coffer-control-plane"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--database-url",
            "postgres://127.0.0.1:1/none",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("COFFER_INSECURE_PLAINTEXT")
        .env_remove("COFFER_TLS_CERT")
        .env_remove("COFFER_TLS_KEY")
        .output()
        .expect("run the control plane");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to serve plaintext"), "{stderr}");
    assert!(stderr.contains("--insecure-plaintext"), "{stderr}");
    // It stopped before touching anything: no catalog, no token file.
    assert_eq!(std::fs::read_dir(data.path()).expect("read dir").count(), 0);
}
