//! Control-plane replicas that start together on one empty PostgreSQL
//! catalog all come up: migrations, the admin account, the bootstrap tokens
//! and the generated per-worker tokens are each created once, whoever wins.
//! Real processes of the binary, a real PostgreSQL, real sockets.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use coffer_control_plane::catalog::Catalog;
use coffer_control_plane::testing::{empty_database, Backend};

const BINARY: &str = env!("CARGO_BIN_EXE_coffer-control-plane");
const REPLICAS: usize = 3;

/// A child process killed when the test ends, however it ends.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one replica on an OS-chosen port; the receiver yields its
/// address once it serves, or nothing if it exits first.
fn start_replica(
    url: &str,
    admin_token: &str,
    worker_tokens: &Path,
    data: &Path,
) -> (Replica, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data)
        .env("COFFER_DATABASE_URL", url)
        .env("COFFER_ADMIN_TOKEN", admin_token)
        .env("COFFER_WORKER_TOKENS_DIR", worker_tokens)
        .env("COFFER_WORKER_TOKENS", "worker-1,worker-2")
        .env("COFFER_LOG", "info")
        .env_remove("SQLALCHEMY_DATABASE_URL")
        .env_remove("COFFER_WORKER_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a control plane");
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(listen) = serving_address(&line) {
                let _ = sender.send(listen);
            } else if line.contains("\"ERROR\"") || line.starts_with("Error") {
                eprintln!("replica: {line}");
            }
        }
    });
    (Replica(child), receiver)
}

/// The `listen` field of the "serving" line of the JSON log.
fn serving_address(line: &str) -> Option<String> {
    if !line.contains("coffer control plane serving") {
        return None;
    }
    let rest = line.split("\"listen\":\"").nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_an_empty_catalog_all_serve_with_one_admin() {
    let database = empty_database(Backend::Postgres).await;
    let shared = tempfile::tempdir().expect("temp dir");
    let worker_tokens = shared.path().join("worker-tokens");
    let admin_token = "coffer_bootstrap_3f9c2a7be1d04c58a6e2b9f07d13c4e8";

    let started: Vec<_> = (0..REPLICAS)
        .map(|i| {
            let data = shared.path().join(format!("data-{i}"));
            start_replica(database.url(), admin_token, &worker_tokens, &data)
        })
        .collect();

    let mut replicas = Vec::new();
    for (i, (replica, serving)) in started.into_iter().enumerate() {
        let listen =
            tokio::task::spawn_blocking(move || serving.recv_timeout(Duration::from_secs(120)))
                .await
                .expect("log reader")
                .unwrap_or_else(|_| {
                    panic!("replica {i} never served (it crashed during bootstrap?)")
                });
        replicas.push((replica, listen));
    }

    for (replica, listen) in &mut replicas {
        assert!(
            replica.0.try_wait().expect("poll").is_none(),
            "a replica exited"
        );
        // The binary's own probe says each one is ready (catalog reachable).
        let probe = Command::new(BINARY)
            .args(["--listen", listen.as_str(), "healthcheck"])
            .output()
            .expect("run the healthcheck");
        assert!(
            probe.status.success(),
            "{listen}: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }

    let catalog = Catalog::connect(database.url())
        .await
        .expect("connect the catalog");
    assert_eq!(catalog.count_admins().await.expect("count admins"), 1);
    let admin_hash = coffer_control_plane::auth::hash_secret(admin_token);
    assert!(catalog.api_token_exists(&admin_hash).await.expect("lookup"));

    // One token file per worker, private, registered, the same for every replica.
    for name in ["worker-1", "worker-2"] {
        let path = worker_tokens.join(format!("{name}.token"));
        let mode = std::fs::metadata(&path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.token");
        let secret = std::fs::read_to_string(&path).expect("read token");
        let hash = coffer_control_plane::auth::hash_secret(secret.trim());
        assert!(
            catalog.api_token_exists(&hash).await.expect("lookup"),
            "{name}'s token is registered"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&worker_tokens)
        .expect("list tokens")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".token"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "nothing but token files: {leftovers:?}"
    );
    catalog.close().await;
}
