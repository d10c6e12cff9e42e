//! A client in another language runs the seeds' sequence: the Python client
//! in `clients/python/` (stubs generated from `proto/` with grpcio-tools,
//! BadRequest decoded with grpcio-status and googleapis-common-protos)
//! against a real control plane over TLS, with a real worker process doing
//! the backup and the restore.
//!
//! The interpreter comes from `scripts/python-client.sh`, which keeps the
//! pinned packages in a cached virtual environment (created on first use).

use crate::support;

use std::path::Path;

use coffer_control_plane::testing::Backend;
use support::tls::TlsSetup;
use support::{noise, write};

fn python_interpreter(root: &Path) -> String {
    let output = std::process::Command::new(root.join("scripts/python-client.sh"))
        .output()
        .expect("run scripts/python-client.sh");
    assert!(
        output.status.success(),
        "scripts/python-client.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_the_seeds_sequence_over_tls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = python_interpreter(&root);
    let tls = TlsSetup::start(Backend::Postgres, false).await;
    let _worker = tls.spawn_worker("python-seeds");
    let demo = tempfile::tempdir().expect("demo dir");
    let source = demo.path().join("source");
    write(&source.join("docs/readme.txt"), b"hello coffer\n");
    write(&source.join("docs/copy-of-readme.txt"), b"hello coffer\n");
    write(&source.join("random.bin"), &noise(1 << 20, 11));

    let port = tls.server.addr.port();
    let output = tokio::process::Command::new(&python)
        .arg(root.join("clients/python/seeds.py"))
        .arg(root.join("proto"))
        .arg(format!("localhost:{port}"))
        .arg(&tls.ca_file)
        .arg(&tls.server.admin_token)
        .arg(demo.path())
        .output()
        .await
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "the Python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the client prints JSON");

    assert_eq!(seen["me"], "python-user");
    assert_eq!(seen["state"], "RUN_STATE_SUCCEEDED", "{seen}");
    assert_eq!(seen["error"], "");
    let watched = seen["watched"].as_array().expect("states watched");
    assert_eq!(
        watched.last().and_then(|s| s.as_str()),
        Some("RUN_STATE_SUCCEEDED")
    );
    assert!(seen["files_done"].as_i64().unwrap_or(0) >= 3, "{seen}");
    assert!(!seen["metadata_sizes"]
        .as_array()
        .expect("metadata")
        .is_empty());
    let latest = seen["latest"].as_array().expect("latest versions");
    for file in ["docs/copy-of-readme.txt", "docs/readme.txt", "random.bin"] {
        assert!(latest.iter().any(|p| p == file), "{file} missing: {seen}");
    }
    assert_eq!(
        seen["duplicates"],
        serde_json::json!([["docs/copy-of-readme.txt", "docs/readme.txt"]])
    );
    assert_eq!(seen["tagged_runs"], serde_json::json!([true]));
    assert_eq!(seen["plan"], serde_json::json!([[true, true]]));
    assert_eq!(seen["restore_state"], "RUN_STATE_SUCCEEDED");
    assert_eq!(seen["bad_code"], "INVALID_ARGUMENT");
    let violations = seen["violations"].as_array().expect("violations");
    assert!(violations.iter().any(|v| v == "job.source_path"), "{seen}");

    for file in ["docs/readme.txt", "docs/copy-of-readme.txt", "random.bin"] {
        let restored = std::fs::read(demo.path().join("restored").join(file)).expect("restored");
        let original = std::fs::read(source.join(file)).expect("source");
        assert!(restored == original, "{file} was not restored as it was");
    }
}
