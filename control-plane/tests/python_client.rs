//! A client in another language: Python stubs generated from `proto/`, loaded
//! beside the standard `googleapis-common-protos` package, against a real
//! control plane. A copy of `google/rpc/error_details.proto` in `proto/` made
//! such a client fail at import ("duplicate file name"); this keeps it working.
//!
//! Needs `python3` with `grpcio`, `grpcio-tools` and `googleapis-common-protos`
//! (`scripts/test.sh` installs them); without them the test fails loudly.

use crate::support;

use std::path::Path;

use coffer_proto::v1 as pb;
use support::{violated_fields, Backend, TestServer};

async fn python_client_decodes_the_bad_request_details(backend: Backend) {
    let server = TestServer::start(backend).await;
    let rust_answer = server
        .admin()
        .buckets
        .create_bucket(pb::CreateBucketRequest {
            bucket: Some(pb::Bucket::default()),
        })
        .await
        .expect_err("an empty bucket is invalid");
    let mut expected = violated_fields(&rust_answer);
    assert!(!expected.is_empty(), "{rust_answer:?}");

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("python3")
        .arg(manifest.join("tests/python/bad_request_client.py"))
        .arg(manifest.join("../proto"))
        .arg(server.addr.to_string())
        .arg(&server.admin_token)
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut decoded: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    expected.sort();
    decoded.sort();
    assert_eq!(decoded, expected, "Python decoded other violations");
}

both_backends!(python_client_decodes_the_bad_request_details);
