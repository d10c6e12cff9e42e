//! Test support for the managed-credentials attacks: tenants' secrets and
//! buckets made through the API, and an "S3 server" the test controls that
//! records every byte a worker sends it.

use std::sync::{Arc, Mutex};

use coffer_control_plane::testing::Api;
use coffer_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Creates a secret of the caller of `api` with `values`; returns its id.
pub async fn create_secret(api: &Api, name: &str, values: &pb::S3CredentialValues) -> String {
    let request = pb::CreateSecretRequest {
        secret: Some(pb::Secret {
            name: name.into(),
            ..Default::default()
        }),
        s3: Some(values.clone()),
        ..Default::default()
    };
    let created = api.secrets.clone().create_secret(request).await;
    let secret = created.expect("create secret").into_inner().secret;
    secret.expect("secret in response").id
}

/// Registers S3 bucket `bucket` at `endpoint` (prefix `repo`) as the caller
/// of `api`, with the caller's secret `secret_id`; returns its id.
pub async fn create_tenant_bucket(
    api: &Api,
    endpoint: &str,
    region: &str,
    bucket: &str,
    secret_id: &str,
) -> String {
    let request = pb::Bucket {
        name: bucket.into(),
        prefix: "repo".into(),
        location: Some(pb::bucket::Location::S3(pb::S3Location {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: region.into(),
            force_path_style: true,
            secret_id: secret_id.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    api.create_bucket(request).await.expect("tenant bucket").id
}

/// The host of an `http://host:port` endpoint.
pub fn endpoint_host(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .to_string()
}

/// A plain TCP listener on 127.0.0.1 that records what every connection
/// sends and answers each with `403 Forbidden`.
pub struct RecordingListener {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    received: Arc<Mutex<Vec<u8>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl RecordingListener {
    pub async fn start() -> RecordingListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let accepting = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut request = Vec::new();
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    sink.lock().expect("recording").extend_from_slice(&request);
                    let answer =
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RecordingListener {
            endpoint,
            received,
            accepting,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("recording").clone()
    }
}

impl Drop for RecordingListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}
