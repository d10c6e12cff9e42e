//! The web console end to end: real headless Chromium (Debian's `chromium`,
//! driven by `playwright-core` from `console/tests/browser.mjs`) against the
//! real standalone control plane, as users start it: its generated TLS (the
//! browser trusts the server's key by its SPKI hash), SQLite catalog and
//! embedded worker, with real backups on disk. Screenshots of the main pages
//! go to `target/console-screenshots/`.
//!
//! Needs Node 20+, Chromium and `console/node_modules` (`scripts/test.sh`
//! installs all three); without them the test fails saying how to install
//! them, never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use coffer_control_plane::testing::{is_final, Api};
use coffer_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const RUN_LIMIT: Duration = Duration::from_secs(120);

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An executable on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Chromium (`CHROMIUM` overrides), Node and the console's packages, or a
/// failure that says how to get them.
fn browser_tools() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .or_else(|| on_path("chromium-browser"))
        .unwrap_or_else(|| {
            panic!(
                "the console test needs Chromium: `apt-get install chromium` (scripts/test.sh \
                 does), or set CHROMIUM to its executable"
            )
        });
    assert!(
        on_path("node").is_some(),
        "the console test needs Node 20+: `apt-get install nodejs npm` (scripts/test.sh checks it)"
    );
    assert!(
        repository_root()
            .join("console/node_modules/playwright-core")
            .is_dir(),
        "the console test needs console/node_modules: run scripts/build-console.sh (npm ci)"
    );
    chromium
}

/// The standalone control plane, started in a fresh directory.
struct Standalone {
    /// Killed when the test ends (`kill_on_drop`).
    _process: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Standalone {
    async fn start() -> Standalone {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer-control-plane"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .env_remove("COFFER_ADMIN_TOKEN")
            .env_remove("COFFER_DATABASE_URL")
            .env_remove("SQLALCHEMY_DATABASE_URL")
            .env_remove("COFFER_DATA_DIR")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the control plane");
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = dir.path().join("coffer-data/admin.token");
        while !(token.exists()
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "control plane did not start within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Standalone {
            _process: child,
            port,
            dir,
        }
    }

    fn data(&self, name: &str) -> PathBuf {
        self.dir.path().join("coffer-data").join(name)
    }

    /// The API as the holder of `token`, over TLS trusting the generated CA.
    async fn api(&self, token: &str) -> Api {
        let ca = std::fs::read(self.data("tls/ca.pem")).expect("CA certificate");
        let channel = Channel::from_shared(format!("https://localhost:{}", self.port))
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("TLS settings")
            .connect()
            .await
            .expect("connect over TLS");
        Api::new(channel, token.trim())
    }

    /// Base64 SHA-256 of the server certificate's public key, the form
    /// Chromium's `--ignore-certificate-errors-spki-list` takes.
    fn server_spki_hash(&self) -> String {
        let pem = std::fs::read(self.data("tls/server.pem")).expect("server certificate");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        let certificate = pem.parse_x509().expect("X.509");
        let spki = certificate.tbs_certificate.subject_pki.raw;
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// Every file beneath `dir`, recursively.
fn files_beneath(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                files_beneath(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

fn rows(report: &serde_json::Value, key: &str) -> Vec<Vec<String>> {
    serde_json::from_value(report[key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn console_logs_in_backs_up_browses_diffs_and_restores_in_chromium() {
    let chromium = browser_tools();
    let server = Standalone::start().await;
    let admin_token = std::fs::read_to_string(server.data("admin.token")).expect("admin token");
    let admin = server.api(&admin_token).await;
    let (_, alice_token) = admin.create_user_with_token("alice").await;
    let (_, bob_token) = admin.create_user_with_token("bob").await;
    let alice = server.api(&alice_token).await;

    let work = tempfile::tempdir().expect("work dir");
    let source = work.path().join("source");
    let deep: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&source.join("docs/readme.txt"), b"hello coffer\n");
    write(&source.join("docs/sub/deep.txt"), &deep);
    write(&source.join("old.txt"), b"going away\n");
    write(&source.join("script.sh"), b"#!/bin/sh\necho hi\n");
    let job = alice
        .create_job(pb::Job {
            name: "home".into(),
            source_path: source.display().to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(
                    work.path().join("repository").display().to_string(),
                )),
            }),
            ..Default::default()
        })
        .await
        .expect("create job");
    let first = alice.start_backup(&job.id).await;
    let first = alice.wait_for_run(&first.id, RUN_LIMIT, is_final).await;
    assert_eq!(first.state(), pb::RunState::Succeeded, "{first:?}");

    // What the second snapshot, taken from the page, will differ by.
    write(&source.join("docs/readme.txt"), b"hello again, coffer\n");
    write(&source.join("docs/sub/new.txt"), b"new\n");
    std::fs::remove_file(source.join("old.txt")).expect("remove");
    std::fs::set_permissions(
        source.join("script.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");

    let restore_dir = work.path().join("restored");
    let screenshots = repository_root().join("target/console-screenshots");
    let output = tokio::process::Command::new("node")
        .arg(repository_root().join("console/tests/browser.mjs"))
        .current_dir(repository_root().join("console"))
        .env("COFFER_URL", format!("https://127.0.0.1:{}", server.port))
        .env("COFFER_TOKEN", alice_token.trim())
        .env("COFFER_OTHER_TOKEN", bob_token.trim())
        .env("COFFER_JOB_ID", &job.id)
        .env("COFFER_JOB_NAME", &job.name)
        .env("COFFER_RESTORE_DIR", restore_dir.display().to_string())
        .env("COFFER_SPKI", server.server_spki_hash())
        .env("COFFER_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the script's report");

    // Every main page was tabbed through, each control reached and named.
    assert_eq!(
        report["pagesChecked"],
        serde_json::json!(["login", "overview", "job", "diff", "snapshot"])
    );
    // The backup started from the page, watched live to its end.
    assert_eq!(report["backupState"], "succeeded", "{report}");
    let backup_id = report["backupRunId"].as_str().expect("backup run id");
    let backup = alice.get_run(backup_id).await.expect("the page's backup");
    assert_eq!(
        (backup.state(), backup.job_id.as_str()),
        (pb::RunState::Succeeded, job.id.as_str())
    );
    // Five charts with a bar per run; a retention decision per snapshot.
    assert_eq!(report["charts"], 5, "{report}");
    assert_eq!(report["chartBars"], 10, "{report}");
    assert_eq!(report["retentionRows"], 2, "{report}");
    // The diff shows exactly what changed on disk.
    let mut diff = rows(&report, "diff");
    diff.sort();
    let expected: Vec<Vec<String>> = [
        ["content changed", "docs/readme.txt"],
        ["added", "docs/sub/new.txt"],
        ["removed", "old.txt"],
        ["metadata changed", "script.sh"],
    ]
    .iter()
    .map(|row| row.iter().map(|s| s.to_string()).collect())
    .collect();
    for row in &expected {
        assert!(
            diff.contains(row),
            "{row:?} missing from the diff page: {diff:?}"
        );
    }
    // Two levels deep, and the file's history.
    let listing: Vec<String> =
        serde_json::from_value(report["deepListing"].clone()).expect("listing");
    assert_eq!(listing, ["deep.txt", "new.txt"]);
    assert_eq!(report["deepVersions"], 1, "{report}");
    // The file downloaded from the page is the file backed up.
    assert_eq!(report["downloadName"], "deep.txt", "{report}");
    let deep_hex: String = deep.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        report["downloadedHex"],
        deep_hex.as_str(),
        "the downloaded bytes differ"
    );
    // The restore run succeeded and the bytes on disk match.
    assert_eq!(report["restoreState"], "succeeded", "{report}");
    let restore_id = report["restoreRunId"].as_str().expect("restore run id");
    let restore = alice.get_run(restore_id).await.expect("the page's restore");
    let Some(pb::run::Spec::Restore(spec)) = restore.spec else {
        panic!("not a restore: {restore:?}");
    };
    assert_eq!(spec.paths, ["docs/sub/deep.txt"]);
    let restored = files_beneath(&restore_dir);
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert!(restored[0].ends_with("docs/sub/deep.txt"), "{restored:?}");
    assert_eq!(std::fs::read(&restored[0]).expect("restored file"), deep);
    // A token made on the admin page was shown once; the API reference
    // documents the diff; the page logged no errors.
    assert_eq!(report["tokenShown"], true);
    assert_eq!(report["apiDocumentsDiff"], true);
    assert_eq!(report["consoleErrors"], serde_json::json!([]));
    // Bob sees none of Alice's jobs, and hers is not found for him.
    assert_eq!(report["otherUserSeesJob"], false);
    let refusal = report["otherUserJobError"].as_str().unwrap_or_default();
    assert!(refusal.contains("NotFound"), "{refusal}");
    for page in [
        "login",
        "overview",
        "job",
        "diff",
        "snapshot",
        "admin",
        "api-reference",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
}
