//! The served certificate, swapped when its files change: a renewed
//! certificate reaches new connections without a restart, and a broken new
//! file keeps the old certificate (with an error in the log).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::{read_certificates, read_private_key};

/// What identifies one version of a file: a replaced file (renamed over,
/// as certificate managers do) has a new inode, an edited one a new mtime.
type FileStamp = (SystemTime, u64, u64);

/// A certificate and key read from files, re-read when they change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The stamps of the files last read, whether they loaded or not, so a
    /// broken file is reported once and not at every poll.
    seen: Mutex<Option<[FileStamp; 2]>>,
}

impl ReloadingCertificate {
    /// Reads the certificate chain and the key; they must belong together.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<ReloadingCertificate> {
        let seen = stamps(cert_path, key_path);
        let key = certified_key(cert_path, key_path, &provider)?;
        Ok(ReloadingCertificate {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(seen),
        })
    }

    /// The certificate chain new connections are served (leaf first).
    pub fn current_chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Re-reads the files if either changed since the last look. Returns
    /// whether a new certificate is now served; a pair that does not load
    /// (half written, key and certificate apart, garbage) leaves the old one.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamps(&self.cert_path, &self.key_path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_none() || *seen == now {
                return false;
            }
            *seen = now;
        }
        match certified_key(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::error!(cert = %self.cert_path.display(), error = format!("{error:#}"), "new TLS certificate or key unusable; still serving the previous one");
                false
            }
        }
    }

    /// Checks the files every `interval` until `cancel` fires. The reads run
    /// on a blocking thread.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let this = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            {
                tracing::error!(%error, "TLS certificate check failed");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = read_certificates(cert_path)?;
    let key = read_private_key(key_path)?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} do not form a usable certificate and key",
            cert_path.display(),
            key_path.display()
        )
    })
}

fn stamps(cert_path: &Path, key_path: &Path) -> Option<[FileStamp; 2]> {
    let stamp = |path: &Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.ino(), metadata.len()))
    };
    Some([stamp(cert_path)?, stamp(key_path)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate served from fresh files in `dir`; returns it and the
    /// certificate file.
    fn served_from(dir: &Path) -> (ReloadingCertificate, PathBuf) {
        let (cert, key) = write_pair(dir, "a");
        let served =
            ReloadingCertificate::load(&cert, &key, crate::tls::crypto_provider()).expect("load");
        (served, cert)
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (served, _) = served_from(dir.path());
        assert!(!served.reload_if_changed());
    }

    #[test]
    fn a_broken_new_file_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (served, cert) = served_from(dir.path());
        let before = served.current_chain();
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
        assert!(!served.reload_if_changed());
        assert_eq!(served.current_chain(), before);
        // A matching pair written afterwards is picked up.
        let (_, _) = write_pair(dir.path(), "b");
        assert!(served.reload_if_changed());
        assert_ne!(served.current_chain(), before);
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let issued =
            rcgen::generate_simple_self_signed(vec![format!("{name}.example")]).expect("generate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        // Renamed into place, as certificate managers do.
        std::fs::write(dir.join("cert.new"), issued.cert.pem()).expect("write");
        std::fs::write(dir.join("key.new"), issued.signing_key.serialize_pem()).expect("write");
        std::fs::rename(dir.join("cert.new"), &cert).expect("rename");
        std::fs::rename(dir.join("key.new"), &key).expect("rename");
        (cert, key)
    }
}
