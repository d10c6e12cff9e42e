//! Bandwidth limits end to end: a real `coffer-worker` process with limits
//! of its own runs a backup whose job options limit its uploads and a
//! restore that limits its downloads. The progress the control plane
//! records names the tightest limit in force and the time spent waiting
//! for it; the data arrives intact. How close a limit holds its rate is
//! measured by `scripts/bench-limit.sh`, not here.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::{assert_succeeded, noise, run_to_success, write, WorkerProcess};

const MIB: i64 = 1 << 20;

fn throttled(progress: &pb::RunProgress) -> Duration {
    let waited = progress
        .throttled
        .expect("progress says how long it waited");
    Duration::new(
        u64::try_from(waited.seconds).expect("non-negative"),
        u32::try_from(waited.nanos).expect("non-negative"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_restore_limits_pace_transfers_and_show_in_progress() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = tempfile::tempdir().expect("source dir");
    let repository = tempfile::tempdir().expect("repository dir");
    let restored = tempfile::tempdir().expect("restore dir");
    // Incompressible, so the packs hold all of it: 3 MiB to upload.
    let content = noise(3 << 20, 41);
    write(&source.path().join("data.bin"), &content);
    // The worker's own limits are looser than the runs': the tighter wins.
    let _worker = WorkerProcess::spawn_with(
        &server,
        "limited",
        2,
        &[
            ("COFFER_WORKER_UPLOAD_LIMIT", "64MiB"),
            ("COFFER_WORKER_DOWNLOAD_LIMIT", "00:00,32MiB 12:00,48MiB"),
        ],
        None,
    );

    let backup = run_to_success(
        &server,
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: source.path().display().to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(
                    repository.path().display().to_string(),
                )),
            }),
            options: Some(pb::JobOptions {
                upload_limit_bytes_per_second: MIB,
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let progress = backup.progress.clone().expect("final progress");
    assert_eq!(progress.upload_limit_bytes_per_second, MIB, "{progress:?}");
    let worker_download = progress.download_limit_bytes_per_second;
    assert!(
        worker_download == 32 * MIB || worker_download == 48 * MIB,
        "the worker's timetable limits a backup's downloads: {progress:?}"
    );
    // A bucket holds one second at the rate: 3 MiB at 1 MiB/s cannot be
    // sent without waiting about two seconds for it to refill.
    assert!(
        throttled(&progress) >= Duration::from_millis(1500),
        "{progress:?}"
    );

    let restore = run_to_success(
        &server,
        pb::create_run_request::Spec::Restore(pb::RestoreSpec {
            snapshot_run_id: backup.id.clone(),
            destination_path: restored.path().display().to_string(),
            download_limit_bytes_per_second: MIB,
            ..Default::default()
        }),
    )
    .await;
    assert_succeeded(&restore);
    let progress = restore.progress.clone().expect("final progress");
    assert_eq!(
        progress.download_limit_bytes_per_second, MIB,
        "{progress:?}"
    );
    assert_eq!(
        progress.upload_limit_bytes_per_second,
        64 * MIB,
        "{progress:?}"
    );
    assert!(
        throttled(&progress) >= Duration::from_millis(1500),
        "{progress:?}"
    );
    let back = std::fs::read(restored.path().join("data.bin")).expect("restored file");
    assert!(
        back == content,
        "the restored bytes differ from the source's"
    );
}

#[test]
fn a_worker_refuses_to_start_with_a_malformed_limit() {
    for (variable, flag, value, says) in [
        (
            "COFFER_WORKER_UPLOAD_LIMIT",
            "--upload-limit",
            "fast",
            "not a rate",
        ),
        (
            "COFFER_WORKER_DOWNLOAD_LIMIT",
            "--download-limit",
            "08:00,1MiB 8:00,2MiB",
            "two entries",
        ),
        (
            "COFFER_WORKER_UPLOAD_LIMIT",
            "--upload-limit",
            "100",
            "between 1024",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_coffer-worker"))
            .args(["--control-plane", "http://127.0.0.1:9"])
            .env(variable, value)
            .env("COFFER_WORKER_TOKEN", "unused")
            .stdin(Stdio::null())
            .output()
            .expect("run coffer-worker");
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(says) && stderr.contains(flag),
            "{variable}={value}: {stderr}"
        );
    }
}
