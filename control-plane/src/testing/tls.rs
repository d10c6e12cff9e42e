//! Test PKI: certificate authorities and the certificates they issue,
//! generated per test with rcgen, written to files the way an operator's
//! would be, and the client TLS set-up that trusts them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::tls::TlsSettings;

/// A certificate authority of a test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The certificate's DER, to compare with what a server presents.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server_certificate(&self) -> Issued {
        self.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate naming `names` only (no address unless listed).
    pub fn server_certificate_for(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|name| (*name).to_string()).collect();
        self.sign(&names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate naming `name` (its CN and a DNS name).
    pub fn client_certificate(&self, name: &str) -> Issued {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut names = vec![name.to_string()];
        if usage == ExtendedKeyUsagePurpose::ServerAuth {
            names.push("127.0.0.1".to_string());
        }
        self.sign(&names, usage)
    }

    /// A leaf for `names` (the first is also its CN).
    fn sign(&self, names: &[String], usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::new(names.to_vec()).expect("leaf params");
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// A server's certificate files in a directory of their own.
pub struct TlsFiles {
    dir: tempfile::TempDir,
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes `issued` as the server's certificate and key.
    pub fn new(issued: &Issued) -> TlsFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            dir,
        };
        files.replace(issued);
        files
    }

    /// Replaces the files as a certificate manager does: written beside,
    /// then renamed over the old ones.
    pub fn replace(&self, issued: &Issued) {
        for (path, text) in [(&self.cert, &issued.cert_pem), (&self.key, &issued.key_pem)] {
            let staging = path.with_extension("new");
            std::fs::write(&staging, text).expect("write certificate file");
            std::fs::rename(&staging, path).expect("rename certificate file");
        }
    }

    /// Writes `text` to a file in this directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Server settings over these files, checked every 100 ms, asking for
    /// client certificates of `client_ca` when given.
    pub fn settings(&self, client_ca: Option<&Path>) -> TlsSettings {
        TlsSettings {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: client_ca.map(Path::to_path_buf),
            reload_interval: Duration::from_millis(100),
        }
    }
}

/// A client that trusts `ca` only (no system roots), presenting `identity`
/// when given.
pub fn client_tls(ca: &TestCa, identity: Option<&Issued>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    match identity {
        Some(issued) => config.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem)),
        None => config,
    }
}
