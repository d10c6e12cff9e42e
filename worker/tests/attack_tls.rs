//! Workers and TLS: real `coffer-worker` processes back up and restore
//! through a TLS and an mTLS control plane, refuse an impostor control plane
//! (its certificate chains to another CA) without sending it anything, and
//! refuse plaintext to a non-loopback address.

use crate::support;

use std::time::Duration;

use coffer_control_plane::testing::Backend;
use coffer_proto::v1 as pb;
use support::tls::{Impostor, TlsSetup};
use support::{
    assert_restorable, assert_succeeded, create_run, noise, wait_until_final, write, WorkerProcess,
};

async fn backs_up_and_restores_through(setup: &TlsSetup) {
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    write(&source.path().join("docs/readme.txt"), b"over TLS\n");
    write(&source.path().join("data/blob.bin"), &noise(1 << 20, 3));
    let run_id = create_run(
        &setup.server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    let _worker = setup.spawn_worker("tls-worker");
    let run = wait_until_final(&setup.server, &run_id, Duration::from_secs(120)).await;
    assert_succeeded(&run);
    assert_eq!(
        assert_restorable(&setup.server, &run_id, source.path()).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_backs_up_and_restores_through_a_tls_control_plane() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        backs_up_and_restores_through(&TlsSetup::start(backend, false).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_backs_up_and_restores_through_an_mtls_control_plane() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        backs_up_and_restores_through(&TlsSetup::start(backend, true).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_an_impostor_and_sends_it_nothing() {
    let real = TlsSetup::start(Backend::Sqlite, false).await;
    let impostor = Impostor::start().await;
    let log_dir = tempfile::tempdir().expect("log dir");
    let log = log_dir.path().join("worker.log");
    // The worker trusts the real control plane's CA, and is pointed at the
    // impostor (a hijacked DNS name, say).
    let trust_real = vec!["--tls-ca".to_string(), real.ca_file.display().to_string()];
    let worker = WorkerProcess::spawn_at(
        &impostor.url,
        &real.server.worker_token,
        "fooled",
        &trust_real,
        &[],
        Some(&log),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while impostor.attempts() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never tried to connect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(worker);
    assert!(
        impostor.received().is_empty(),
        "the impostor received {} bytes over TLS",
        impostor.received().len()
    );
    let text = std::fs::read_to_string(&log).expect("worker log");
    assert!(
        !text.contains(&real.server.worker_token),
        "the token reached the log"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {text}"
    );

    // Control: a worker that trusts the impostor's CA does talk to it, so
    // the silence above is the refusal and not a deaf listener.
    let trust_impostor = vec![
        "--tls-ca".to_string(),
        impostor.ca_file.display().to_string(),
    ];
    let _fooled = WorkerProcess::spawn_at(
        &impostor.url,
        &real.server.worker_token,
        "trusting",
        &trust_impostor,
        &[],
        None,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !impostor.received().starts_with(b"PRI * HTTP/2.0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the control worker sent nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_worker_refuses_plaintext_to_a_remote_control_plane() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coffer-worker"))
        // TEST-NET-1: never routed, and never dialled.
        .args([
            "--control-plane",
            "http://192.0.2.1:50051",
            "--name",
            "remote",
        ])
        .env(
            "COFFER_WORKER_TOKEN",
            "coffer_not_a_real_token_but_long_enough",
        )
        .env_remove("COFFER_INSECURE_PLAINTEXT")
        .output()
        .expect("run the worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to send the worker token in plaintext"),
        "{stderr}"
    );
    assert!(!stderr.contains("coffer_not_a_real_token"), "{stderr}");
}

/// A backup through `url`, with `extra` worker arguments, succeeds.
async fn backs_up_through(setup: &TlsSetup, url: &str, name: &str, extra: &[&str]) {
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    write(&source.path().join("named.txt"), b"verified by name\n");
    let run_id = create_run(
        &setup.server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    let mut args = vec!["--tls-ca".to_string(), setup.ca_file.display().to_string()];
    args.extend(extra.iter().map(|arg| (*arg).to_string()));
    let token = setup.server.worker_token_for(name).await;
    let _worker = WorkerProcess::spawn_at(url, &token, name, &args, &[], None);
    let run = wait_until_final(&setup.server, &run_id, Duration::from_secs(120)).await;
    assert_succeeded(&run);
}

/// Replicas reached through a name with several addresses, or by address:
/// the certificate is verified for the name the operator gave (the URL's
/// host, or `--tls-server-name`), never for the address dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_verifies_every_address_under_the_name_it_was_given() {
    // A certificate for `localhost` only: no IP address in it.
    let setup = TlsSetup::start_named(Backend::Sqlite, &["localhost"]).await;
    let port = setup.server.addr.port();

    // The name resolves to 127.0.0.1, which is dialled and verified as `localhost`.
    backs_up_through(&setup, &format!("https://localhost:{port}"), "by-name", &[]).await;

    // Dialled by address, the certificate does not name it: refused.
    let log_dir = tempfile::tempdir().expect("log dir");
    let log = log_dir.path().join("worker.log");
    let trust = vec!["--tls-ca".to_string(), setup.ca_file.display().to_string()];
    let token = setup.server.worker_token_for("by-address").await;
    let by_address = format!("https://127.0.0.1:{port}");
    let refused =
        WorkerProcess::spawn_at(&by_address, &token, "by-address", &trust, &[], Some(&log));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("NotValidForName") || text.contains("not valid for name") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not refuse a certificate without its address: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(refused);

    // The same address with the certificate's name given explicitly.
    backs_up_through(
        &setup,
        &by_address,
        "by-address-named",
        &["--tls-server-name", "localhost"],
    )
    .await;
}
