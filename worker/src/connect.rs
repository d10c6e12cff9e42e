//! How a worker reaches its control plane: `https://` with the server
//! verified against the system roots plus an optional CA file, and an
//! optional client certificate (mTLS); `http://` only to a loopback address
//! unless the operator explicitly accepts sending the token in clear.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The worker's transport-security settings.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM CA certificates trusted for the control plane besides the system roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for a control plane that asks for one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Allow `http://` to a non-loopback address (the token travels in clear).
    pub insecure_plaintext: bool,
}

/// The endpoint for `url`, refusing any set-up in which the worker token
/// would cross the network unencrypted without the operator's say-so.
pub fn endpoint(url: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("control-plane URL {url:?} is not a valid URI"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10));
    let uri = endpoint.uri().clone();
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") => endpoint
            .tls_config(client_tls_config(tls)?)
            .context("TLS configuration"),
        Some("http") => {
            if tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some() {
                anyhow::bail!(
                    "TLS files are configured but the control-plane URL {url} is http://; use https://"
                );
            }
            if !is_loopback(host) && !tls.insecure_plaintext {
                anyhow::bail!(
                    "refusing to send the worker token in plaintext to {host}: use https:// \
                     (with --tls-ca if the server's CA is private) or pass --insecure-plaintext"
                );
            }
            Ok(endpoint)
        }
        _ => anyhow::bail!("control-plane URL {url} must start with https:// or http://"),
    }
}

fn client_tls_config(tls: &ClientTls) -> anyhow::Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(path) = &tls.ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?;
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert = std::fs::read(cert).with_context(|| {
                format!("cannot read the client certificate {}", cert.display())
            })?;
            let key = std::fs::read(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    }
    Ok(config)
}

/// Whether `host` (as a URI spells it) names this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_or_an_explicit_flag() {
        let plain = ClientTls::default();
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(endpoint(url, &plain).is_ok(), "{url}");
        }
        let error = endpoint("http://10.0.0.5:50051", &plain).expect_err("refused");
        assert!(error.to_string().contains("plaintext"), "{error}");
        let insecure = ClientTls {
            insecure_plaintext: true,
            ..ClientTls::default()
        };
        assert!(endpoint("http://10.0.0.5:50051", &insecure).is_ok());
        assert!(endpoint("ftp://10.0.0.5", &insecure).is_err());
    }

    #[test]
    fn tls_files_with_an_http_url_are_refused() {
        let tls = ClientTls {
            ca: Some("ca.pem".into()),
            ..ClientTls::default()
        };
        assert!(endpoint("http://127.0.0.1:50051", &tls).is_err());
    }
}
