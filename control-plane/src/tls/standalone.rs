//! Standalone mode's own certificates, as Proxmox Backup Server and kopia's
//! `--tls-generate-cert` do it: on first start a private CA and a server
//! certificate it signs are written to `<data-dir>/tls/`, so the API is
//! TLS from the first minute and clients trust `ca.pem` instead of
//! accepting anything. Later starts reuse them; a server certificate that
//! expires within [`RENEW_WITHIN_DAYS`] or does not cover the listen host
//! is issued again by the same CA, so clients keep trusting it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::startup::{ensure_private_dir, read_secret_file, write_secret_file};

/// The folder of the data directory holding the generated TLS material.
pub const TLS_DIR: &str = "tls";
/// The CA certificate clients trust (`grpcurl -cacert coffer-data/tls/ca.pem`).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key; it never leaves the data directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The served certificate.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The served certificate's private key.
pub const SERVER_KEY_FILE: &str = "server.key";
/// A server certificate expiring within this many days is issued again.
pub const RENEW_WITHIN_DAYS: i64 = 30;
/// How long an issued server certificate is valid.
const SERVER_VALIDITY_DAYS: i64 = 397;
/// How long the CA is valid.
const CA_VALIDITY_DAYS: i64 = 10 * 365;

/// Where the generated material is.
#[derive(Clone, Debug)]
pub struct GeneratedTls {
    /// The CA certificate for clients.
    pub ca_cert: PathBuf,
    /// The server certificate (chain: the leaf only; clients hold the CA).
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

/// Makes sure `<data_dir>/tls/` holds a CA and a current server certificate
/// for `listen` (and `localhost`, `127.0.0.1`, `::1`), generating what is
/// missing, expiring or not covering the listen host. Every file is 0600
/// and written without following a symlink, like the token files.
pub fn ensure(data_dir: &Path, listen: IpAddr) -> anyhow::Result<GeneratedTls> {
    let dir = data_dir.join(TLS_DIR);
    ensure_private_dir(&dir)?;
    let files = GeneratedTls {
        ca_cert: dir.join(CA_CERT_FILE),
        cert: dir.join(SERVER_CERT_FILE),
        key: dir.join(SERVER_KEY_FILE),
    };
    let ca_key_path = dir.join(CA_KEY_FILE);
    let (issuer, new_ca) = match (
        read_secret_file(&files.ca_cert)?,
        read_secret_file(&ca_key_path)?,
    ) {
        (Some(cert), Some(key)) => {
            let key = KeyPair::from_pem(&key)
                .with_context(|| format!("the CA key {}", ca_key_path.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert, key)
                .with_context(|| format!("the CA certificate {}", files.ca_cert.display()))?;
            (issuer, false)
        }
        _ => {
            let (cert_pem, key) = new_ca()?;
            write_secret_file(&ca_key_path, key.serialize_pem().trim_end())?;
            write_secret_file(&files.ca_cert, cert_pem.trim_end())?;
            tracing::info!(ca = %files.ca_cert.display(), "generated a private CA for TLS; clients trust this file");
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("the new CA")?;
            (issuer, true)
        }
    };
    let names = server_names(listen);
    let current = read_secret_file(&files.cert)?;
    let reason = match (&current, read_secret_file(&files.key)?) {
        _ if new_ca => Some("the CA is new".to_owned()),
        (Some(pem), Some(_)) => renewal_reason(pem, &names),
        _ => Some("there is none yet".to_owned()),
    };
    let Some(reason) = reason else {
        return Ok(files);
    };
    let (cert_pem, key) = issue_server_certificate(&issuer, &names, SERVER_VALIDITY_DAYS)?;
    write_secret_file(&files.key, key.serialize_pem().trim_end())?;
    write_secret_file(&files.cert, cert_pem.trim_end())?;
    tracing::info!(cert = %files.cert.display(), %reason, names = ?names, "issued the server certificate from the standalone CA");
    Ok(files)
}

/// The names the server certificate must cover, as they are written in
/// it: DNS names and IP addresses.
fn server_names(listen: IpAddr) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
    let own = if listen.is_unspecified() {
        // Listening everywhere: the host's own name is how others reach it.
        host_name()
    } else {
        Some(listen.to_string())
    };
    if let Some(own) = own.filter(|name| !names.contains(name)) {
        names.push(own);
    }
    names
}

/// The kernel's host name, if it has a usable one.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    let usable = !name.is_empty()
        && name != "localhost"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    usable.then(|| name.to_owned())
}

/// Why the certificate in `pem` must be issued again, `None` if it is fine.
fn renewal_reason(pem: &str, names: &[String]) -> Option<String> {
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Some("it is not PEM".to_owned());
    };
    let Ok((_, certificate)) = X509Certificate::from_der(&block.contents) else {
        return Some("it is not a certificate".to_owned());
    };
    let renew_at = Utc::now().timestamp() + RENEW_WITHIN_DAYS * 86_400;
    if certificate.validity().not_after.timestamp() <= renew_at {
        return Some(format!("it expires within {RENEW_WITHIN_DAYS} days"));
    }
    let covered = covered_names(&certificate);
    let missing: Vec<String> = names
        .iter()
        .filter(|name| !covered.contains(*name))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Some(format!("it does not cover {}", missing.join(", ")));
    }
    None
}

/// The DNS names and IP addresses a certificate covers, as text.
fn covered_names(certificate: &X509Certificate<'_>) -> BTreeSet<String> {
    let Ok(Some(alternative)) = certificate.subject_alternative_name() else {
        return BTreeSet::new();
    };
    alternative
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// A new self-signed CA: its certificate (PEM) and key.
fn new_ca() -> anyhow::Result<(String, KeyPair)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Coffer standalone CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY_DAYS);
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    Ok((cert.pem(), key))
}

/// A server certificate for `names`, valid for `validity_days`, issued by
/// `issuer`: its PEM and key.
fn issue_server_certificate(
    issuer: &Issuer<'_, KeyPair>,
    names: &[String],
    validity_days: i64,
) -> anyhow::Result<(String, KeyPair)> {
    let mut params =
        CertificateParams::new(names.to_vec()).context("the server certificate's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Coffer control plane");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity_days);
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, issuer)
        .context("signing the server certificate")?;
    Ok((cert.pem(), key))
}

/// Valid from yesterday (clocks differ) for `days` days, at day granularity.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let day = |offset: i64| {
        let date = (Utc::now() + chrono::Duration::days(offset)).date_naive();
        let month = u8::try_from(date.month()).expect("a month fits in u8");
        let mday = u8::try_from(date.day()).expect("a day of month fits in u8");
        rcgen::date_time_ymd(date.year(), month, mday)
    };
    params.not_before = day(-1);
    params.not_after = day(days);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("read")
    }

    #[test]
    fn a_second_start_reuses_the_ca_and_the_certificate() {
        let data = tempfile::tempdir().expect("temp dir");
        let first = ensure(data.path(), LOOPBACK).expect("generate");
        let (ca, cert) = (read(&first.ca_cert), read(&first.cert));
        let second = ensure(data.path(), LOOPBACK).expect("reuse");
        assert_eq!(read(&second.ca_cert), ca);
        assert_eq!(read(&second.cert), cert);
        for file in [CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE] {
            let path = data.path().join(TLS_DIR).join(file);
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
    }

    #[test]
    fn a_new_listen_host_or_a_near_expiry_gets_a_new_certificate_from_the_same_ca() {
        let data = tempfile::tempdir().expect("temp dir");
        let files = ensure(data.path(), LOOPBACK).expect("generate");
        let (ca, cert) = (read(&files.ca_cert), read(&files.cert));
        let elsewhere: IpAddr = "192.0.2.7".parse().expect("ip");
        assert!(renewal_reason(&cert, &server_names(elsewhere)).is_some());
        ensure(data.path(), elsewhere).expect("reissue");
        assert_eq!(read(&files.ca_cert), ca, "the CA stays");
        let reissued = read(&files.cert);
        assert_ne!(reissued, cert);
        assert_eq!(renewal_reason(&reissued, &server_names(elsewhere)), None);

        // A certificate expiring within the renewal window is replaced.
        let key =
            KeyPair::from_pem(&read(&data.path().join(TLS_DIR).join(CA_KEY_FILE))).expect("CA key");
        let issuer = Issuer::from_ca_cert_pem(&ca, key).expect("issuer");
        let names = server_names(LOOPBACK);
        let (expiring, key) =
            issue_server_certificate(&issuer, &names, RENEW_WITHIN_DAYS - 1).expect("issue");
        assert!(renewal_reason(&expiring, &names).is_some());
        write_secret_file(&files.key, key.serialize_pem().trim_end()).expect("write key");
        write_secret_file(&files.cert, expiring.trim_end()).expect("write cert");
        ensure(data.path(), LOOPBACK).expect("renew");
        assert_ne!(read(&files.cert), expiring.trim_end());
        assert_eq!(read(&files.ca_cert), ca);
    }

    #[test]
    fn a_planted_symlink_is_not_written_through() {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = data.path().join(TLS_DIR);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let victim = data.path().join("victim");
        std::fs::write(&victim, "keep\n").expect("write");
        std::os::unix::fs::symlink(&victim, dir.join(SERVER_KEY_FILE)).expect("symlink");
        assert!(ensure(data.path(), LOOPBACK).is_err());
        assert_eq!(read(&victim), "keep\n");
    }
}
