//! How a worker reaches its control plane: `https://` with the server
//! verified against the system roots plus an optional CA file, and an
//! optional client certificate (mTLS); `http://` only to a loopback address
//! unless the operator explicitly accepts sending the token in clear.
//!
//! The control plane may be several replicas: the worker is given several
//! URLs (comma-separated), or one whose host name resolves to several
//! addresses (a headless Kubernetes Service), or both. [`ControlPlanes`]
//! lists every address to dial, each verified under the name the operator
//! wrote (or `--tls-server-name`), never under the address it resolved to.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

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
    /// The name the control plane's certificate must carry, instead of the
    /// host of the URL being dialled (e.g. replicas reached by address).
    pub server_name: Option<String>,
}

/// One address of the control plane to dial.
#[derive(Clone, Debug)]
pub struct Address {
    /// The endpoint, with TLS verifying the configured name.
    pub endpoint: Endpoint,
    /// The URL as configured, with the resolved address: for logs.
    pub label: String,
}

/// Every control-plane URL a worker was given.
#[derive(Clone, Debug)]
pub struct ControlPlanes {
    urls: Vec<Uri>,
    tls: ClientTls,
}

impl ControlPlanes {
    /// Parses `urls` (comma-separated), refusing any that [`endpoint`] refuses.
    pub fn parse(urls: &str, tls: &ClientTls) -> anyhow::Result<Self> {
        let mut parsed = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
            let endpoint = endpoint(url, tls)?;
            parsed.push(endpoint.uri().clone());
        }
        if parsed.is_empty() {
            anyhow::bail!("no control-plane URL given");
        }
        Ok(ControlPlanes {
            urls: parsed,
            tls: tls.clone(),
        })
    }

    /// Every address to dial now, starting at a random one so that a fleet
    /// of workers spreads over the replicas: each URL whose host is a name
    /// is resolved again (replicas come and go), one address per result.
    /// A name that does not resolve is kept as it is; dialling it reports why.
    pub async fn resolve(&self) -> Vec<Address> {
        let mut addresses = Vec::new();
        for uri in &self.urls {
            addresses.extend(self.resolve_one(uri).await);
        }
        if !addresses.is_empty() {
            let start = rand::thread_rng().gen_range(0..addresses.len());
            addresses.rotate_left(start);
        }
        addresses
    }

    async fn resolve_one(&self, uri: &Uri) -> Vec<Address> {
        let host = uri.host().unwrap_or_default();
        let as_written = || match self.address(uri, None) {
            Ok(address) => vec![address],
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), url = %uri, "control-plane URL unusable");
                Vec::new()
            }
        };
        if bare_host(host).parse::<IpAddr>().is_ok() {
            return as_written();
        }
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let resolved = match tokio::net::lookup_host((host, port)).await {
            Ok(resolved) => resolved.collect::<Vec<SocketAddr>>(),
            Err(error) => {
                tracing::warn!(%error, %host, "cannot resolve the control plane's name");
                return as_written();
            }
        };
        let mut addresses = Vec::new();
        for socket in resolved {
            match self.address(uri, Some(socket)) {
                Ok(address) => addresses.push(address),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), url = %uri, "control-plane address unusable");
                }
            }
        }
        if addresses.is_empty() {
            return as_written();
        }
        addresses
    }

    /// The endpoint of `uri`, dialling `socket` when given. TLS verifies the
    /// URL's host name (or the configured server name) whatever is dialled,
    /// and requests carry the URL's authority.
    fn address(&self, uri: &Uri, socket: Option<SocketAddr>) -> anyhow::Result<Address> {
        let host = uri.host().unwrap_or_default();
        let server_name = self
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| bare_host(host).to_string());
        let (dial, label) = match socket {
            Some(socket) => {
                let scheme = uri.scheme_str().unwrap_or("https");
                (format!("{scheme}://{socket}"), format!("{uri} ({socket})"))
            }
            None => (uri.to_string(), uri.to_string()),
        };
        let mut endpoint = base_endpoint(&dial)?;
        if uri.scheme_str() == Some("https") {
            endpoint = endpoint
                .tls_config(client_tls_config(&self.tls)?.domain_name(server_name))
                .context("TLS configuration")?;
        }
        if socket.is_some() {
            endpoint = endpoint.origin(uri.clone());
        }
        Ok(Address { endpoint, label })
    }
}

/// A host as a URI spells it, without the brackets of an IPv6 literal.
fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

fn base_endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("control-plane URL {url:?} is not a valid URI"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// The endpoint for `url`, refusing any set-up in which the worker token
/// would cross the network unencrypted without the operator's say-so.
pub fn endpoint(url: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    let endpoint = base_endpoint(url)?;
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
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// Whether `host` (as a URI spells it) names this machine.
fn is_loopback(host: &str) -> bool {
    let bare = bare_host(host);
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

    #[tokio::test]
    async fn every_url_and_every_address_of_a_name_is_dialled() {
        let planes = ControlPlanes::parse(
            "http://127.0.0.1:7001, http://localhost:7002",
            &ClientTls::default(),
        )
        .expect("parse");
        let addresses = planes.resolve().await;
        let dialled: Vec<String> = addresses
            .iter()
            .map(|address| address.endpoint.uri().to_string())
            .collect();
        assert!(
            dialled
                .iter()
                .any(|uri| uri.starts_with("http://127.0.0.1:7001")),
            "{dialled:?}"
        );
        // `localhost` is dialled at its resolved address, under its own name.
        let by_name: Vec<&Address> = addresses
            .iter()
            .filter(|address| address.label.starts_with("http://localhost:7002"))
            .collect();
        assert!(!by_name.is_empty(), "{addresses:?}");
        for address in by_name {
            let host = address
                .endpoint
                .uri()
                .host()
                .unwrap_or_default()
                .to_string();
            assert!(bare_host(&host).parse::<IpAddr>().is_ok(), "{host}");
        }
    }

    #[test]
    fn every_url_must_be_usable_and_one_is_needed() {
        let plain = ClientTls::default();
        assert!(ControlPlanes::parse("http://127.0.0.1:1,ftp://127.0.0.1:2", &plain).is_err());
        assert!(ControlPlanes::parse("http://127.0.0.1:1,http://10.0.0.5:2", &plain).is_err());
        assert!(ControlPlanes::parse(" , ", &plain).is_err());
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
