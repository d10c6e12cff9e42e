//! TLS for the API: rustls over the listener, a server certificate that is
//! re-read when its files change (`reload`), optional client certificates
//! verified against a CA (mTLS), and the connections tonic is served over
//! (`incoming`: TLS or, on loopback or by explicit choice, plaintext). In
//! standalone mode the certificate comes from a CA generated into the data
//! directory (`standalone`); a client certificate's names bind the worker
//! name it may announce (`identity`).

mod identity;
mod incoming;
mod reload;
pub mod standalone;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use identity::certificate_names;
pub use incoming::{Connection, ConnectionInfo, Listeners};
pub use reload::ReloadingCertificate;

/// Where the server's TLS material is and how often it is checked for change.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; `None`: no
    /// client certificates are requested.
    pub client_ca: Option<PathBuf>,
    /// How often the certificate and key files are checked for change.
    pub reload_interval: Duration,
}

/// The server side of TLS: an acceptor whose certificate follows its files.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    certificate: Arc<ReloadingCertificate>,
    reload_interval: Duration,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads the certificate, the key and the client CA; any of them missing
    /// or unusable is an error at start-up, never a silent plaintext fallback.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<TlsServer> {
        let provider = crypto_provider();
        let certificate = Arc::new(ReloadingCertificate::load(
            &settings.cert,
            &settings.key,
            provider.clone(),
        )?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &settings.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates(path)? {
                    roots
                        .add(certificate)
                        .with_context(|| format!("client CA {}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("client CA {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
            reload_interval: settings.reload_interval,
        })
    }

    /// The certificate being served, for reloading.
    pub fn certificate(&self) -> &Arc<ReloadingCertificate> {
        &self.certificate
    }

    /// The acceptor, for a listener served outside [`crate::server`].
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    pub(crate) fn reload_interval(&self) -> Duration {
        self.reload_interval
    }
}

/// The one crypto provider of Coffer's TLS: ring, as the S3 client uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file; none at all is an error.
pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// The private key of a PEM file.
pub fn read_private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}
