//! Posting a notice to a webhook: a JSON body signed with HMAC-SHA256.
//!
//! `Coffer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` signs
//! `<t>.<body>` with the channel's signing secret (its UTF-8 bytes as the
//! key). A receiver recomputes it, compares in constant time, and refuses
//! a `t` more than five minutes from its clock (a replay); see
//! [`verify_signature`] and the README.
//!
//! The connection goes to the address [`AddressPolicy::resolve`] checked
//! (TLS still verifies the URL's host name), redirects are not followed,
//! the whole exchange has a deadline and the answer is read to at most
//! [`MAX_RESPONSE_BYTES`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::address::AddressPolicy;
use super::AttemptError;
use crate::model::notification::{ChannelSecrets, Event, WebhookTarget};

/// Longest wait for the connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the whole exchange after connecting.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of an answer read (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How far a receiver should let `t` be from its own clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// The `Coffer-Signature` value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `header` (a `Coffer-Signature` value) signs `body` with `secret`
/// at a time within [`SIGNATURE_TOLERANCE`] of `now`: what a receiver
/// checks. The comparison takes constant time.
pub fn verify_signature(secret: &str, header: &str, body: &[u8], now: DateTime<Utc>) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let tolerance = i64::try_from(SIGNATURE_TOLERANCE.as_secs()).unwrap_or(300);
    if (now.timestamp() - timestamp).abs() > tolerance {
        return false;
    }
    let expected = mac(secret, timestamp, body);
    signatures
        .iter()
        .filter_map(|given| decode_hex(given))
        .any(|given| constant_time_eq(&expected, &given))
}

/// Whether `a` equals `b`, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One notice to post.
pub struct Notice<'a> {
    /// The delivery's id (`Coffer-Delivery`).
    pub delivery_id: Uuid,
    /// What it is about (`Coffer-Event`).
    pub event: Event,
    /// The JSON body.
    pub body: &'a str,
    /// When it is sent (the signature's `t`).
    pub now: DateTime<Utc>,
}

/// Posts `notice` to `target`; returns the HTTP status of a 2xx answer.
pub async fn post(
    target: &WebhookTarget,
    secrets: &ChannelSecrets,
    policy: &AddressPolicy,
    notice: &Notice<'_>,
) -> Result<u16, AttemptError> {
    let url = url::Url::parse(&target.url)
        .map_err(|_| AttemptError::permanent("the channel's URL no longer parses"))?;
    let host = url
        .host_str()
        .ok_or_else(|| AttemptError::permanent("the channel's URL has no host"))?
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| AttemptError::permanent("the channel's URL has no port"))?;
    let address = policy.resolve(&host, port).await.map_err(|reason| {
        if reason.starts_with("cannot resolve") {
            AttemptError::transient(reason)
        } else {
            AttemptError::permanent(format!("refused: {reason}"))
        }
    })?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| AttemptError::transient(format!("connecting to {address} timed out")))?
        .map_err(|e| AttemptError::transient(format!("cannot connect to {address}: {e}")))?;
    let request = build_request(&url, &host, secrets, notice)?;
    let talk = async {
        if url.scheme() == "https" {
            let tls = connect_tls(&host, tcp).await?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, talk)
        .await
        .map_err(|_| AttemptError::transient("the receiver did not answer in time"))?
}

fn build_request(
    url: &url::Url,
    host: &str,
    secrets: &ChannelSecrets,
    notice: &Notice<'_>,
) -> Result<http::Request<Full<Bytes>>, AttemptError> {
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let body = Bytes::copy_from_slice(notice.body.as_bytes());
    let signed = signature(&secrets.signing_secret, notice.now.timestamp(), &body);
    let mut builder = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "coffer-notifier/1")
        .header("coffer-event", notice.event.as_str())
        .header("coffer-delivery", notice.delivery_id.to_string())
        .header("coffer-signature", signed);
    for (name, value) in &secrets.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(body))
        .map_err(|_| AttemptError::permanent("the channel's headers no longer make a request"))
}

async fn exchange<S>(stream: S, request: http::Request<Full<Bytes>>) -> Result<u16, AttemptError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AttemptError::transient(format!("HTTP handshake failed: {e}")))?;
    let driving = tokio::spawn(async move {
        // Its end is the connection's; errors surface through the request.
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| AttemptError::transient(format!("sending failed: {e}")))?;
        let status = response.status();
        // Read (a bounded amount) so the receiver is not cut off mid-answer;
        // the content itself is not needed.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await;
        let code = status.as_u16();
        if status.is_success() {
            Ok(code)
        } else if status.is_redirection() {
            Err(AttemptError::http(
                code,
                "the receiver redirected; redirects are not followed",
            ))
        } else {
            Err(AttemptError::http(
                code,
                format!("the receiver answered HTTP {code}"),
            ))
        }
    }
    .await;
    driving.abort();
    result
}

async fn connect_tls(
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, AttemptError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| AttemptError::permanent(format!("{host} is not a TLS server name")))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| AttemptError::transient("the TLS handshake timed out"))?
        .map_err(|e| AttemptError::transient(format!("TLS handshake failed: {e}")))
}

/// The TLS client configuration: the system's trusted roots, built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "a system certificate could not be loaded");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no trusted root certificates: https webhooks will fail");
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let now = Utc::now();
        let header = signature("whsec_test", now.timestamp(), b"{\"a\":1}");
        assert!(verify_signature("whsec_test", &header, b"{\"a\":1}", now));
        assert!(!verify_signature("whsec_test", &header, b"{\"a\":2}", now));
        assert!(!verify_signature("whsec_other", &header, b"{\"a\":1}", now));
        let later = now + chrono::Duration::seconds(301);
        assert!(
            !verify_signature("whsec_test", &header, b"{\"a\":1}", later),
            "a replay"
        );
        assert!(!verify_signature("whsec_test", "t=1,v1=zz", b"", now));
    }
}
