//! `coffer-worker healthcheck`, the probe of containers, against a real
//! worker process: alive while its runtime runs, even with no control plane
//! to talk to (restarting it would not help); not alive once it has stopped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_coffer-worker");

/// A child process killed when the test ends, however it ends.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthcheck(health_file: &Path) -> std::process::Output {
    Command::new(BINARY)
        .arg("healthcheck")
        .env("COFFER_HEALTH_FILE", health_file)
        .output()
        .expect("run the healthcheck")
}

#[test]
fn a_running_worker_is_alive_without_its_control_plane_and_not_after_it_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let health_file = dir.path().join("alive");
    assert!(!healthcheck(&health_file).status.success(), "no worker yet");

    // Port 9 on loopback: nothing listens, the worker keeps reconnecting.
    let mut worker = Worker(
        Command::new(BINARY)
            .args(["--control-plane", "http://127.0.0.1:9", "--name", "probe"])
            .env("COFFER_HEALTH_FILE", &health_file)
            .env_remove("COFFER_WORKER_TOKEN")
            .env_remove("COFFER_WORKER_TOKEN_FILE")
            .stderr(Stdio::null())
            .spawn()
            .expect("start a worker"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the worker never wrote its health file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = healthcheck(&health_file);
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // SIGTERM: the worker drains, stops, and takes its health file with it.
    let signalled = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success());
    let status = worker.0.wait().expect("wait for the worker");
    assert!(status.success(), "clean stop: {status:?}");
    assert!(
        !healthcheck(&health_file).status.success(),
        "stopped worker"
    );
}
