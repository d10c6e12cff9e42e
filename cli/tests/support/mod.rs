//! A real standalone control plane (SQLite catalog, generated TLS, embedded
//! worker) started from its binary in a temporary directory, and the real
//! `coffer` binary run against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The control plane's binary: `COFFER_TEST_CONTROL_PLANE_BIN` when set
/// (the test command points it at the one the workspace's test build made),
/// else built (or found up to date) by cargo once per test process, since it
/// belongs to another package of the workspace. Building it here selects
/// that package alone, whose features differ from the workspace's, so it
/// rebuilds most dependencies: the variable spares CI that.
fn control_plane_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("COFFER_TEST_CONTROL_PLANE_BIN") {
            return PathBuf::from(path);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        escargot::CargoBuild::new()
            .manifest_path(manifest)
            .package("coffer-control-plane")
            .bin("coffer-control-plane")
            .arg("--locked")
            .run()
            .expect("build coffer-control-plane")
            .path()
            .to_path_buf()
    })
}

/// A standalone control plane in its own directory.
pub struct Standalone {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Standalone {
    /// Starts it and waits until it serves.
    pub fn start() -> Standalone {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(control_plane_binary())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .env_remove("COFFER_ADMIN_TOKEN")
            .env_remove("COFFER_DATABASE_URL")
            .env_remove("SQLALCHEMY_DATABASE_URL")
            .env_remove("COFFER_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the control plane");
        let standalone = Standalone { child, port, dir };
        standalone.wait_until_serving();
        standalone
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let token = self.path("coffer-data/admin.token");
        while Instant::now() < deadline {
            if token.exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("control plane did not start within 120 s");
    }

    /// A path inside the control plane's directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// `coffer ARGS…` with the endpoint, the CA and the admin's token file,
    /// and a config directory of the test's own.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("COFFER_ENDPOINT", format!("localhost:{}", self.port))
            .env("COFFER_CACERT", self.path("coffer-data/tls/ca.pem"))
            .env("COFFER_TOKEN_FILE", self.path("coffer-data/admin.token"))
            .env_remove("COFFER_TOKEN")
            .env_remove("COFFER_CONTEXT");
        command
    }

    /// Runs `coffer ARGS…` and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run coffer")
    }

    /// Runs `coffer ARGS…` with `input` on its standard input (how secret
    /// values are passed) and returns its output, whatever the exit code.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn coffer");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("run coffer")
    }

    /// Runs `coffer ARGS…`, fails the test unless it exits 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "coffer {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// The admin's user id.
    pub fn admin_id(&self) -> String {
        self.ok(&["whoami", "-o", "id"]).trim().to_string()
    }

    /// Grants the admin `root` for backups, restores and repositories, and
    /// creates a filesystem bucket at `root/repo` and a job backing up
    /// `root/source` into it; returns the job's id.
    pub fn job_over(&self, root: &Path, name: &str) -> String {
        let admin = self.admin_id();
        let root_text = root.to_str().expect("UTF-8 temp dir");
        self.ok(&[
            "grants",
            "create",
            "--set",
            &format!("grantee_id={admin}"),
            "--set",
            &format!("root={root_text}"),
            "--set",
            "uses=backup_source",
            "--set",
            "uses=restore_destination",
            "--set",
            "uses=repository",
        ]);
        std::fs::create_dir_all(root.join("repo")).expect("repo dir");
        let bucket = self.ok(&[
            "buckets",
            "create",
            "-o",
            "id",
            "--set",
            &format!("name={name}"),
            "--set",
            &format!("filesystem.path={root_text}/repo"),
        ]);
        let job_file = root.join(format!("{name}.yaml"));
        std::fs::write(
            &job_file,
            format!(
                "name: {name}\nsource_path: {root_text}/source\ntarget:\n  bucket:\n    bucket_id: {}\n    prefix: {name}\n",
                bucket.trim()
            ),
        )
        .expect("job file");
        let job_file = job_file.to_str().expect("UTF-8 temp dir");
        self.ok(&["jobs", "create", "-f", job_file, "-o", "id"])
            .trim()
            .to_string()
    }
}

impl Drop for Standalone {
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

/// Writes `size` bytes that do not compress or deduplicate.
pub fn write_random(path: &Path, size: usize, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        // xorshift64*: cheap, and enough to defeat compression.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(size);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("parent dir");
    }
    std::fs::write(path, bytes).expect("write file");
}
