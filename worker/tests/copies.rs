//! Copies (3-2-1) through the public API with real worker processes: a
//! snapshot copied from a filesystem repository into a Garage bucket is
//! listed as a copy and restores byte-identical from it after the
//! original's storage is deleted (both catalog backends); a copy whose
//! worker is killed midway is finished by another attempt that sends none
//! of what the first one committed.

use crate::support;

use std::path::Path;
use std::time::Duration;

use coffer_control_plane::catalog::leases::LeaseSettings;
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_format::ChunkId;
use coffer_proto::v1 as pb;
use pb::create_run_request::Spec;
use tokio_util::sync::CancellationToken;

use support::worker_api::{Repository, Store};
use support::{
    assert_succeeded, bucket_target, garage_bucket, noise, repository_access, run_to_success,
    start_run, wait_until_final, write, WorkerProcess,
};

fn filesystem(path: &Path) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(
            path.display().to_string(),
        )),
    }
}

/// The `repo` prefix of bucket `bucket_id`, where the test's store looks.
fn backup(source: &Path, target: pb::Target) -> Spec {
    Spec::Backup(pb::BackupSpec {
        source_path: source.display().to_string(),
        target: Some(target),
        ..Default::default()
    })
}

fn copy(snapshot_run_id: &str, target: pb::Target) -> Spec {
    Spec::Copy(pb::CopySpec {
        snapshot_run_id: snapshot_run_id.into(),
        target: Some(target),
    })
}

/// A restore of the whole snapshot into `destination`, read from `read_from`
/// (the original when `None`); waits until it is final.
async fn restore_from(
    server: &TestServer,
    snapshot_run_id: &str,
    destination: &Path,
    read_from: Option<pb::Target>,
) -> pb::Run {
    let spec = Spec::Restore(pb::RestoreSpec {
        snapshot_run_id: snapshot_run_id.into(),
        destination_path: destination.display().to_string(),
        read_from,
        ..Default::default()
    });
    let id = start_run(server, spec).await;
    wait_until_final(server, &id, Duration::from_secs(300)).await
}

async fn copies_of(server: &TestServer, snapshot_run_id: &str) -> Vec<pb::SnapshotCopy> {
    let mut copies = server.admin().copies;
    copies
        .list_snapshot_copies(pb::ListSnapshotCopiesRequest {
            snapshot_run_id: snapshot_run_id.into(),
        })
        .await
        .expect("list copies")
        .into_inner()
        .copies
}

fn assert_same_file(original: &Path, restored: &Path) {
    let original_bytes = std::fs::read(original).expect("read the original");
    let restored_bytes = std::fs::read(restored)
        .unwrap_or_else(|e| panic!("{} was not restored: {e}", restored.display()));
    assert!(
        original_bytes == restored_bytes,
        "{} differs from its original",
        restored.display()
    );
}

async fn a_copy_restores_byte_identical_after_the_original_is_deleted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let _worker = WorkerProcess::spawn(&server, "copier");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    let files = [
        "notes.txt",
        "big.bin",
        "same-as-big.bin",
        "empty",
        "sub/deep.bin",
    ];
    write(
        &source.join(files[0]),
        b"three copies, two media, one offsite\n",
    );
    let big = noise(5 << 20, 17);
    write(&source.join(files[1]), &big);
    write(&source.join(files[2]), &big);
    write(&source.join(files[3]), b"");
    write(&source.join(files[4]), &noise(300_000, 18));
    let original = dir.path().join("original");
    let snapshot = run_to_success(&server, backup(&source, filesystem(&original))).await;

    let (bucket_id, _store) = garage_bucket(&server).await;
    let copy_run = run_to_success(
        &server,
        copy(&snapshot.id, bucket_target(&bucket_id, "repo")),
    )
    .await;
    assert_eq!(copy_run.kind, pb::RunKind::Copy as i32);

    let copies = copies_of(&server, &snapshot.id).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].copy_run_id, copy_run.id);
    assert_eq!(copies[0].target, Some(bucket_target(&bucket_id, "repo")));

    std::fs::remove_dir_all(&original).expect("delete the original repository");
    let lost = restore_from(&server, &snapshot.id, &dir.path().join("lost"), None).await;
    assert_eq!(
        lost.state,
        pb::RunState::Failed as i32,
        "the original is gone: {}",
        lost.error
    );
    let restored = dir.path().join("restored");
    let from_copy = restore_from(
        &server,
        &snapshot.id,
        &restored,
        Some(bucket_target(&bucket_id, "repo")),
    )
    .await;
    assert_succeeded(&from_copy);
    for file in files {
        assert_same_file(&source.join(file), &restored.join(file));
    }
}

both_backends!(a_copy_restores_byte_identical_after_the_original_is_deleted);

fn fast_leases() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(3),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        attempt_deadline: Duration::from_secs(600),
    }
}

/// How many indexed packs hold each chunk of the repository in `store`.
async fn indexed_chunks(
    server: &TestServer,
    bucket_id: &str,
    store: &std::sync::Arc<Store>,
) -> std::collections::HashMap<ChunkId, usize> {
    let access = repository_access(server, &format!("bucket:{bucket_id}/repo")).await;
    let cancel = CancellationToken::new();
    let repository = Repository::open(std::sync::Arc::clone(store), &access, &cancel)
        .await
        .expect("open the copy's repository");
    let mut counts = std::collections::HashMap::new();
    for stored in repository
        .read_index_files(&cancel)
        .await
        .expect("read index files")
    {
        for pack in stored.file.packs {
            for entry in pack.entries {
                *counts.entry(entry.chunk_id).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Waits until the first index file appears in `store`: one pack of the
/// copy is uploaded and indexed.
async fn wait_for_index(store: &Store) {
    let cancel = CancellationToken::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while store
        .list("index/", &cancel)
        .await
        .expect("list")
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pack was indexed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_interrupted_and_resumed_sends_nothing_twice() {
    let server = TestServer::start_with_leases(Backend::Postgres, fast_leases()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    // Incompressible, several packs' worth, so that the copy is still
    // sending when its worker is killed.
    for index in 0..4 {
        write(
            &source.join(format!("big-{index}.bin")),
            &noise(20 << 20, 40 + index),
        );
    }
    let backups = WorkerProcess::spawn(&server, "backups");
    let snapshot = run_to_success(
        &server,
        backup(&source, filesystem(&dir.path().join("orig"))),
    )
    .await;
    drop(backups);

    let (bucket_id, store) = garage_bucket(&server).await;
    let copy_id = start_run(
        &server,
        copy(&snapshot.id, bucket_target(&bucket_id, "repo")),
    )
    .await;
    let mut first = WorkerProcess::spawn_with(&server, "first", 1, &[], None);
    wait_for_index(&store).await;
    first.kill_hard();
    let committed = indexed_chunks(&server, &bucket_id, &store).await;
    assert!(!committed.is_empty());

    let _second = WorkerProcess::spawn(&server, "second");
    let finished = wait_until_final(&server, &copy_id, Duration::from_secs(300)).await;
    assert_succeeded(&finished);
    assert!(finished.attempt >= 2, "the copy was not interrupted");

    let after = indexed_chunks(&server, &bucket_id, &store).await;
    for (chunk, packs) in &after {
        assert_eq!(*packs, 1, "chunk {chunk} was stored in {packs} packs");
    }
    for chunk in committed.keys() {
        assert!(after.contains_key(chunk), "chunk {chunk} was lost");
    }
    let total = support::pack_bytes(&store).await;
    let resent = finished.progress.expect("progress").bytes_uploaded;
    assert!(
        u64::try_from(resent).expect("non-negative") < total,
        "the second attempt uploaded {resent} bytes of {total}: it sent everything again"
    );

    let restored = dir.path().join("restored");
    std::fs::remove_dir_all(dir.path().join("orig")).expect("delete the original");
    assert_succeeded(
        &restore_from(
            &server,
            &snapshot.id,
            &restored,
            Some(bucket_target(&bucket_id, "repo")),
        )
        .await,
    );
    for index in 0..4 {
        let name = format!("big-{index}.bin");
        assert_same_file(&source.join(&name), &restored.join(&name));
    }
}
