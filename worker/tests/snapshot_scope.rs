//! A snapshot lists only its own repository's files: two ad-hoc backups of
//! one owner into two filesystem repositories (no job, no bucket) do not
//! show each other's files, on both catalog backends.

use crate::support;

#[allow(dead_code)] // only the backup spec is used
use crate::support::grants as grants_support;

use coffer_control_plane::testing::{Backend, TestServer};
use grants_support::backup;
use support::{run_to_success, snapshot_files, write, WorkerProcess};

async fn ad_hoc_snapshots_list_only_their_repository(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "scope");
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("a/only-in-a.txt"), b"a\n");
    write(&dir.path().join("b/only-in-b.txt"), b"b\n");
    let first = run_to_success(
        &server,
        backup(&dir.path().join("a"), &dir.path().join("repo-a")),
    )
    .await;
    let second = run_to_success(
        &server,
        backup(&dir.path().join("b"), &dir.path().join("repo-b")),
    )
    .await;

    let paths = |files: Vec<coffer_proto::v1::SnapshotFile>| -> Vec<String> {
        files.into_iter().map(|file| file.path).collect()
    };
    let in_first = paths(snapshot_files(&server, &first.id).await);
    let in_second = paths(snapshot_files(&server, &second.id).await);
    assert!(
        in_first.contains(&"only-in-a.txt".to_string()),
        "{in_first:?}"
    );
    assert!(
        !in_first.contains(&"only-in-b.txt".to_string()),
        "{in_first:?}"
    );
    assert!(
        in_second.contains(&"only-in-b.txt".to_string()),
        "{in_second:?}"
    );
    assert!(
        !in_second.contains(&"only-in-a.txt".to_string()),
        "{in_second:?}"
    );
}

both_backends!(ad_hoc_snapshots_list_only_their_repository);
