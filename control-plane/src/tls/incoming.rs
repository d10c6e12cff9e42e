//! The connections the API is served over. Each listener is TLS or
//! plaintext; TLS handshakes run in their own tasks (with a deadline), so a
//! slow or hostile client never holds up anyone else's accept, and a failed
//! handshake (a plaintext client on the TLS port, an unknown client
//! certificate) ends that connection only.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{ReloadingCertificate, TlsServer};

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection.
#[derive(Debug)]
pub enum Connection {
    /// Plaintext (loopback, or `--insecure-plaintext`).
    Plain(TcpStream),
    /// TLS, the handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a handler can learn about its connection, from the request's
/// extensions: `request.extensions().get::<ConnectionInfo>()`.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate chain verified in the handshake (mTLS), leaf first.
    pub client_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match self {
            Connection::Plain(stream) => ConnectionInfo {
                remote_addr: stream.peer_addr().ok(),
                tls: false,
                client_certificates: None,
            },
            Connection::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ConnectionInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    tls: true,
                    client_certificates: session
                        .peer_certificates()
                        .map(|chain| Arc::new(chain.to_vec())),
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The listeners one server accepts on.
#[derive(Default)]
pub struct Listeners {
    entries: Vec<(TcpListener, Option<TlsAcceptor>)>,
    certificates: Vec<(Arc<ReloadingCertificate>, Duration)>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<_> = self
            .entries
            .iter()
            .map(|(listener, tls)| (listener.local_addr().ok(), tls.is_some()))
            .collect();
        f.debug_struct("Listeners")
            .field("addresses_and_tls", &addresses)
            .finish_non_exhaustive()
    }
}

impl Listeners {
    /// One plaintext listener.
    pub fn plaintext(listener: TcpListener) -> Listeners {
        Listeners::default().with_plaintext(listener)
    }

    /// One TLS listener.
    pub fn tls(listener: TcpListener, tls: &TlsServer) -> Listeners {
        Listeners::default().with_tls(listener, tls)
    }

    /// These listeners and a plaintext one (the embedded worker's loopback
    /// port beside a TLS port).
    pub fn with_plaintext(mut self, listener: TcpListener) -> Listeners {
        self.entries.push((listener, None));
        self
    }

    /// These listeners and a TLS one.
    pub fn with_tls(mut self, listener: TcpListener, tls: &TlsServer) -> Listeners {
        self.entries.push((listener, Some(tls.acceptor())));
        self.certificates
            .push((tls.certificate().clone(), tls.reload_interval()));
        self
    }

    /// Starts accepting (and watching the certificate files) until `stop`
    /// fires or the stream is dropped.
    pub(crate) fn accept(self, stop: &CancellationToken) -> ReceiverStream<io::Result<Connection>> {
        let (sender, receiver) = mpsc::channel(64);
        for (certificate, interval) in self.certificates {
            tokio::spawn(certificate.watch(interval, stop.clone()));
        }
        for (listener, tls) in self.entries {
            tokio::spawn(accept_loop(listener, tls, sender.clone(), stop.clone()));
        }
        ReceiverStream::new(receiver)
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    sender: mpsc::Sender<io::Result<Connection>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = tls.clone() else {
            if sender.send(Ok(Connection::Plain(stream))).await.is_err() {
                return;
            }
            continue;
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = sender.send(Ok(Connection::Tls(Box::new(stream)))).await;
                }
                Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
