//! Runs the README's CLI walkthrough verbatim with the real `coffer` binary
//! against the real standalone control plane, as
//! `control-plane/tests/readme_walkthrough.rs` does for the grpcurl one.

#[path = "../../control-plane/tests/support/readme_blocks.rs"]
mod readme_blocks;
use crate::support;

use std::path::Path;
use std::process::Command;

use support::Standalone;

#[test]
fn readme_cli_walkthrough_works_verbatim() {
    let server = Standalone::start();
    let script = readme_blocks::shell_blocks(
        &readme_blocks::readme(env!("CARGO_MANIFEST_DIR")),
        "cli-walkthrough",
    )
    .replace("localhost:50051", &format!("localhost:{}", server.port));
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_coffer"))
        .parent()
        .expect("bin dir");
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        // `-e` without pipefail, as the grpcurl walkthrough runs.
        .args(["-eu", "-c", &script])
        .current_dir(server.dir.path())
        .env("PATH", path)
        .env("XDG_CONFIG_HOME", server.path("config"))
        .env_remove("COFFER_TOKEN")
        .env_remove("COFFER_TOKEN_FILE")
        .env_remove("COFFER_ENDPOINT")
        .env_remove("COFFER_CACERT")
        .env_remove("COFFER_CONTEXT")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "user1",                          // context list
        "daily",                          // jobs list
        "copy-of-readme.txt",             // ls
        "M  docs/readme.txt",             // diff
        "the restored copy is identical", // restore
        "AUTOMATIC",                      // metadata
        "newest",                         // retention plan reasons
        "refused with exit code 3",       // bad input
        "embedded",                       // workers
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("job.source_path"),
        "the field violation is not shown:\n{stderr}"
    );
    assert!(!stdout.contains("FAILED"), "a run failed:\n{stdout}");
}
