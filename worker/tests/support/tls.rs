//! Workers against a TLS control plane: a test PKI written to files, a
//! spawn helper passing them as the operator would, and an impostor TLS
//! listener that records what reaches it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_control_plane::testing::tls::{client_tls, Issued, TestCa, TlsFiles};
use coffer_control_plane::testing::{Backend, ServerTls, TestServer};
use coffer_control_plane::tls::TlsServer;
use tokio::io::AsyncReadExt;

use super::WorkerProcess;

/// A TLS (optionally mTLS) control plane and the files its workers use.
pub struct TlsSetup {
    /// The control plane.
    pub server: TestServer,
    /// The server's CA, PEM file.
    pub ca_file: PathBuf,
    /// A client certificate and key for workers, when mTLS is on.
    pub client: Option<(PathBuf, PathBuf)>,
    _files: TlsFiles,
}

impl TlsSetup {
    /// Starts a control plane serving TLS, requiring client certificates
    /// when `mtls`.
    pub async fn start(backend: Backend, mtls: bool) -> TlsSetup {
        let ca = TestCa::new("coffer test CA");
        let certificate = ca.server_certificate();
        Self::start_with(backend, mtls, ca, &certificate).await
    }

    /// Starts a control plane serving TLS with a certificate for `names`
    /// only (no client certificates).
    pub async fn start_named(backend: Backend, names: &[&str]) -> TlsSetup {
        let ca = TestCa::new("coffer test CA");
        let certificate = ca.server_certificate_for(names);
        Self::start_with(backend, false, ca, &certificate).await
    }

    async fn start_with(
        backend: Backend,
        mtls: bool,
        ca: TestCa,
        certificate: &Issued,
    ) -> TlsSetup {
        let files = TlsFiles::new(certificate);
        let ca_file = files.write("ca.pem", ca.pem());
        let workers = mtls.then(|| TestCa::new("coffer worker CA"));
        let client_ca = workers
            .as_ref()
            .map(|workers| files.write("client-ca.pem", workers.pem()));
        let harness = workers
            .as_ref()
            .map(|workers| workers.client_certificate("harness"));
        let client = workers.as_ref().map(|workers| {
            let issued = workers.client_certificate("tls-worker");
            (
                files.write("worker.pem", &issued.cert_pem),
                files.write("worker.key", &issued.key_pem),
            )
        });
        let tls = ServerTls {
            server: TlsServer::new(&files.settings(client_ca.as_deref())).expect("TLS server"),
            client: client_tls(&ca, harness.as_ref()),
        };
        TlsSetup {
            server: TestServer::start_with_tls(backend, tls).await,
            ca_file,
            client,
            _files: files,
        }
    }

    /// Spawns a worker trusting the server's CA (and presenting the client
    /// certificate under mTLS).
    pub fn spawn_worker(&self, name: &str) -> WorkerProcess {
        let mut args = vec!["--tls-ca".to_string(), path(&self.ca_file)];
        if let Some((cert, key)) = &self.client {
            args.extend([
                "--tls-cert".into(),
                path(cert),
                "--tls-key".into(),
                path(key),
            ]);
        }
        WorkerProcess::spawn_at(
            &self.server.url(),
            &self.server.worker_token,
            name,
            &args,
            &[],
            None,
        )
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// A TLS listener with a certificate of its own CA, posing as a control
/// plane: it counts handshakes and keeps every byte a client sends once a
/// handshake succeeds.
pub struct Impostor {
    /// Its URL.
    pub url: String,
    /// Its CA, PEM file (a worker trusting it would talk to it).
    pub ca_file: PathBuf,
    attempts: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    _files: TlsFiles,
}

impl Impostor {
    /// Starts listening on 127.0.0.1.
    pub async fn start() -> Impostor {
        let ca = TestCa::new("impostor CA");
        let files = TlsFiles::new(&ca.server_certificate());
        let ca_file = files.write("impostor-ca.pem", ca.pem());
        let tls = TlsServer::new(&files.settings(None)).expect("impostor TLS");
        let acceptor = tls.acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let attempts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count, keep) = (attempts.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, keep) = (acceptor.clone(), keep.clone());
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buffer = vec![0u8; 4096];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await
                    {
                        if n == 0 {
                            break;
                        }
                        keep.lock().expect("lock").extend_from_slice(&buffer[..n]);
                    }
                });
            }
        });
        Impostor {
            url,
            ca_file,
            attempts,
            received,
            _files: files,
        }
    }

    /// TCP connections made to it.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Bytes received over TLS.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("lock").clone()
    }
}
