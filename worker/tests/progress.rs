//! Progress within files: a real control plane and a real `coffer-worker`
//! process back up and restore one large file while `WatchRun` is followed,
//! and the byte counts it streams move while that one file is in flight.

use crate::support;

use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::{assert_succeeded, create_run, noise, start_run, write, WorkerProcess};

/// Large enough that reading, chunking and storing it takes several of the
/// worker's one-second progress reports.
const LARGE_FILE: usize = 384 << 20;

/// Every run `WatchRun` sends about `id` until the run is final.
async fn watched_until_final(server: &TestServer, id: &str) -> Vec<pb::Run> {
    let request = pb::WatchRunRequest { id: id.to_string() };
    let mut stream = server
        .admin()
        .runs
        .watch_run(request)
        .await
        .expect("watch run")
        .into_inner();
    let mut updates = Vec::new();
    let watching = async {
        while let Some(update) = stream.message().await.expect("watch stream") {
            let run = update.run.expect("run in update");
            let state = run.state;
            updates.push(run);
            if state >= pb::RunState::Succeeded as i32 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), watching)
        .await
        .expect("the run ended within 5 minutes");
    updates
}

/// The progress of the updates sent while the run was running with its one
/// file not finished yet.
fn within_the_file(updates: &[pb::Run]) -> Vec<pb::RunProgress> {
    updates
        .iter()
        .filter(|run| run.state == pb::RunState::Running as i32)
        .filter_map(|run| run.progress.clone())
        .filter(|p| p.bytes_done > 0 && p.bytes_done < LARGE_FILE as i64)
        .collect()
}

fn assert_increasing(label: &str, values: &[i64]) {
    assert!(
        values.windows(2).all(|pair| pair[0] <= pair[1]),
        "{label} went backwards: {values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_file_shows_bytes_moving_before_it_is_done() {
    let server = TestServer::start(Backend::Postgres).await;
    let source = tempfile::tempdir().expect("source dir");
    let target = tempfile::tempdir().expect("target dir");
    write(&source.path().join("disk.img"), &noise(LARGE_FILE, 15));
    // Reports every 100 ms, so that even a fast machine shows several
    // figures while the one file is read.
    let _worker = WorkerProcess::spawn_with(
        &server,
        "progress",
        2,
        &[("COFFER_PROGRESS_INTERVAL_MS", "100")],
        None,
    );

    let run_id = create_run(
        &server,
        source.path(),
        pb::target::Destination::FilesystemPath(target.path().display().to_string()),
    )
    .await;
    let updates = watched_until_final(&server, &run_id).await;
    let last = updates.last().expect("at least the final update");
    assert_succeeded(last);

    let final_progress = last.progress.clone().expect("final progress");
    let inside = within_the_file(&updates);
    let done: Vec<i64> = inside.iter().map(|p| p.bytes_done).collect();
    let mut distinct = done.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "fewer than two byte counts while the one file was read: {done:?}"
    );
    assert_increasing("bytes_done", &done);
    assert_increasing(
        "bytes_read",
        &inside.iter().map(|p| p.bytes_read).collect::<Vec<_>>(),
    );
    for progress in &inside {
        assert!(
            progress.files_done < final_progress.files_done,
            "the one file is still in flight: {progress:?}"
        );
        assert_eq!(progress.phase, pb::RunPhase::Transferring as i32);
        assert!(progress.bytes_read >= progress.bytes_done);
    }
    // Uploads follow the reading, pack by pack, instead of jumping ahead of
    // bytes done or appearing only at the end.
    assert!(
        inside
            .iter()
            .any(|p| p.bytes_uploaded > 0 && p.bytes_uploaded <= p.bytes_done),
        "no upload counted while the file was read: {inside:?}"
    );

    assert_eq!(final_progress.bytes_done, LARGE_FILE as i64);
    assert_eq!(final_progress.bytes_read, LARGE_FILE as i64);
    assert_eq!(final_progress.bytes_seen, LARGE_FILE as i64);
    assert!(final_progress.totals_known);
    assert_eq!(final_progress.bytes_deduplicated, 0, "noise has no repeats");
    assert!(final_progress.bytes_uploaded >= LARGE_FILE as i64);

    // A restore of the same file moves range by range too.
    let destination = tempfile::tempdir().expect("restore dir");
    let restore_id = start_run(
        &server,
        pb::create_run_request::Spec::Restore(pb::RestoreSpec {
            snapshot_run_id: run_id.clone(),
            destination_path: destination.path().display().to_string(),
            ..Default::default()
        }),
    )
    .await;
    let updates = watched_until_final(&server, &restore_id).await;
    let last = updates.last().expect("final restore update");
    assert_succeeded(last);
    let restored = last.progress.clone().expect("final restore progress");
    assert_eq!(restored.bytes_done, LARGE_FILE as i64);
    let inside = within_the_file(&updates);
    assert!(
        !inside.is_empty(),
        "the restore reported nothing before the one file was written: {updates:?}"
    );
    assert_increasing(
        "restore bytes_done",
        &inside.iter().map(|p| p.bytes_done).collect::<Vec<_>>(),
    );
    for progress in &inside {
        assert!(progress.files_done < restored.files_done, "{progress:?}");
        assert!(
            progress.bytes_read > 0,
            "downloads are counted: {progress:?}"
        );
    }
}
