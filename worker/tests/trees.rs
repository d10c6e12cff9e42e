//! Manifests of format v2 stored as tree blobs, end to end: a real control
//! plane (gRPC over loopback), real `coffer-worker` processes, repositories
//! on a filesystem path and on Garage. An unchanged backup names its
//! parent's tree blobs and uploads almost nothing; a change rewrites only
//! the blob of its run of entries; restore, verify, rebuild and garbage
//! collection read through the trees; a damaged tree blob is detected,
//! named and never restored.

use crate::support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_format::{BlobType, ChunkId, PackEntry, PackId};
use coffer_proto::v1 as pb;
use support::worker_api::Repository;
use support::{
    assert_restorable, assert_succeeded, backup_job, bucket_target, collect_garbage,
    create_job_into, filesystem_target, garage_bucket, keep_last_policy,
    open_filesystem_repository, restore, run_to_success, verify_fully, wait_until_final, write,
    WorkerProcess,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);
/// What an unchanged backup of a few thousand files may upload.
const UNCHANGED_UPLOAD_LIMIT: i64 = 64 << 10;
/// Files in the source tree.
const FILES: usize = 3000;

/// A source of [`FILES`] small files in 30 nested directories.
fn tree_source() -> tempfile::TempDir {
    let source = tempfile::tempdir().expect("source dir");
    for index in 0..FILES {
        let path = source
            .path()
            .join(format!("dir{:02}/inner/file{index:04}.txt", index % 30));
        write(&path, format!("file {index} of the tree\n").as_bytes());
    }
    source
}

fn uploaded(run: &pb::Run) -> i64 {
    run.progress.as_ref().expect("progress").bytes_uploaded
}

/// Every tree blob the repository's index names, with its pack.
async fn tree_blobs(repository: &Repository) -> Vec<(PackId, PackEntry)> {
    let files = repository
        .read_index_files(&CancellationToken::new())
        .await
        .expect("read the index");
    files
        .iter()
        .flat_map(|stored| stored.file.packs.iter())
        .flat_map(|pack| {
            pack.entries
                .iter()
                .map(|entry| (pack.pack_id, entry.clone()))
        })
        .filter(|(_, entry)| entry.blob_type == BlobType::Tree)
        .collect()
}

/// Restores snapshot `run_id` byte for byte and verifies all of its data.
async fn assert_restores_and_verifies(server: &TestServer, run_id: &str, source: &Path) {
    assert_eq!(assert_restorable(server, run_id, source).await, FILES);
    assert_succeeded(&verify_fully(server, run_id).await);
}

fn tree_ids(blobs: &[(PackId, PackEntry)]) -> HashSet<ChunkId> {
    blobs.iter().map(|(_, entry)| entry.chunk_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_backup_uploads_almost_nothing_and_a_change_rewrites_one_tree() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = tree_source();
    let repo = tempfile::tempdir().expect("repo dir");
    let job_id = create_job_into(&server, source.path(), filesystem_target(repo.path()), "").await;
    let _worker = WorkerProcess::spawn(&server, "trees-fs");

    let first = backup_job(&server, &job_id).await;
    let repository = open_filesystem_repository(&server, repo.path()).await;
    let first_trees = tree_ids(&tree_blobs(&repository).await);
    assert!(
        first_trees.len() > 1 && first_trees.len() < FILES / 100,
        "{} tree blobs for {FILES} files",
        first_trees.len()
    );

    let unchanged = backup_job(&server, &job_id).await;
    assert!(
        uploaded(&unchanged) <= UNCHANGED_UPLOAD_LIMIT,
        "an unchanged backup uploaded {} bytes",
        uploaded(&unchanged)
    );
    assert_eq!(
        tree_ids(&tree_blobs(&repository).await),
        first_trees,
        "no new tree blob"
    );
    assert_restores_and_verifies(&server, &unchanged.id, source.path()).await;

    // One file deep in one directory changes: one tree blob is new.
    write(
        &source.path().join("dir17/inner/file1217.txt"),
        b"changed content, longer than before\n",
    );
    let changed = backup_job(&server, &job_id).await;
    let after = tree_ids(&tree_blobs(&repository).await);
    assert_eq!(
        after.difference(&first_trees).count(),
        1,
        "only the changed run's tree blob is written again"
    );
    assert_eq!(
        assert_restorable(&server, &changed.id, source.path()).await,
        FILES
    );
    // The first snapshot is unaffected.
    assert_succeeded(&verify_fully(&server, &first.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_backup_on_garage_uploads_almost_nothing() {
    let server = TestServer::start(Backend::Postgres).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let target = bucket_target(&bucket_id, "repo");
    let source = tree_source();
    let job_id = create_job_into(&server, source.path(), target, "").await;
    let _worker = WorkerProcess::spawn(&server, "trees-garage");
    backup_job(&server, &job_id).await;
    let cancel = CancellationToken::new();
    let packs = store.list("packs/", &cancel).await.expect("list packs");

    let unchanged = backup_job(&server, &job_id).await;
    assert!(
        uploaded(&unchanged) <= UNCHANGED_UPLOAD_LIMIT,
        "an unchanged backup uploaded {} bytes",
        uploaded(&unchanged)
    );
    assert_eq!(
        store.list("packs/", &cancel).await.expect("list packs"),
        packs,
        "no new pack"
    );
    assert_eq!(
        assert_restorable(&server, &unchanged.id, source.path()).await,
        FILES
    );
}

/// The first snapshot is forgotten and its space collected: the second,
/// which names the first one's tree blobs, keeps them and the data they
/// reference, and restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_keeps_the_trees_a_kept_snapshot_names_and_their_data() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = tree_source();
    let repo = tempfile::tempdir().expect("repo dir");
    let policy = keep_last_policy(&server, 1).await;
    let target = filesystem_target(repo.path());
    let job_id = create_job_into(&server, source.path(), target.clone(), &policy).await;
    let _worker = WorkerProcess::spawn(&server, "trees-gc");
    let first = backup_job(&server, &job_id).await;
    let second = backup_job(&server, &job_id).await;
    assert!(uploaded(&second) <= UNCHANGED_UPLOAD_LIMIT);

    let mut retention = server.admin().retention;
    let applied = retention
        .apply_retention(pb::ApplyRetentionRequest {
            job_id: job_id.clone(),
            ..Default::default()
        })
        .await
        .expect("apply")
        .into_inner();
    let applied = wait_until_final(&server, &applied.run_id, LIMIT).await;
    assert_succeeded(&applied);
    let Some(pb::run::Spec::Retention(spec)) = applied.spec else {
        panic!("a retention run carries a retention spec")
    };
    assert_eq!(spec.removed_run_ids, vec![first.id.clone()]);
    collect_garbage(&server, &target).await;
    collect_garbage(&server, &target).await;

    assert_restores_and_verifies(&server, &second.id, source.path()).await;
}

/// A bit flipped in a tree blob: verify fails naming the blob, and the
/// restore fails without writing any file the blob lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_tree_blob_is_detected_named_and_never_restored() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = tree_source();
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "trees-tamper");
    let backup = run_to_success(
        &server,
        pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: source.path().display().to_string(),
            target: Some(filesystem_target(repo.path())),
            ..Default::default()
        }),
    )
    .await;
    let repository = open_filesystem_repository(&server, repo.path()).await;
    let blobs = tree_blobs(&repository).await;
    let (pack_id, entry) = blobs.last().expect("a tree blob");
    let pack = repo.path().join(coffer_format::layout::pack_key(pack_id));
    let mut bytes = std::fs::read(&pack).expect("read pack");
    bytes[entry.offset as usize + entry.length as usize / 2] ^= 0x10;
    std::fs::write(&pack, bytes).expect("damage the pack");

    let checked = verify_fully(&server, &backup.id).await;
    assert_eq!(checked.state, pb::RunState::Failed as i32);
    let blob = entry.chunk_id.to_string();
    assert!(
        checked.error.contains(&blob),
        "verify names tree blob {blob}: {}",
        checked.error
    );
    let destination = tempfile::tempdir().expect("restore dir");
    let restored = restore(&server, &backup.id, destination.path()).await;
    assert_eq!(restored.state, pb::RunState::Failed as i32);
    assert!(restored.error.contains(&blob), "{}", restored.error);
    // What was restored before the damaged blob is intact; its entries and
    // those after it are not there.
    let mut missing = 0;
    for index in 0..FILES {
        let relative = format!("dir{:02}/inner/file{index:04}.txt", index % 30);
        match std::fs::read(destination.path().join(&relative)) {
            Ok(restored) => assert_eq!(
                restored,
                std::fs::read(source.path().join(&relative)).expect("source"),
                "{relative}"
            ),
            Err(_) => missing += 1,
        }
    }
    assert!(missing > 0, "the damaged tree's files are not restored");
}

/// The catalog is lost; a new one rebuilds the snapshots of an unencrypted
/// v2 repository from storage, expanding their trees, and restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_catalog_lists_and_restores_snapshots_stored_as_trees() {
    let repo = tempfile::tempdir().expect("repo dir");
    let bucket = |path: &Path| pb::Bucket {
        name: "plain-trees".into(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: path.display().to_string(),
        })),
        encryption: pb::RepositoryEncryption::None as i32,
        ..Default::default()
    };
    let bucket_target = |bucket_id: String| pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id,
            prefix: String::new(),
        })),
    };
    let source = tree_source();
    let second_id = {
        let server = TestServer::start(Backend::Sqlite).await;
        let created = server
            .admin()
            .create_bucket(bucket(repo.path()))
            .await
            .expect("bucket");
        let job_id = create_job_into(&server, source.path(), bucket_target(created.id), "").await;
        let _worker = WorkerProcess::spawn(&server, "trees-plain");
        backup_job(&server, &job_id).await;
        let second = backup_job(&server, &job_id).await;
        assert!(uploaded(&second) <= UNCHANGED_UPLOAD_LIMIT);
        second.id
    };

    let fresh = TestServer::start(Backend::Sqlite).await;
    let created = fresh
        .admin()
        .create_bucket(bucket(repo.path()))
        .await
        .expect("bucket in the new catalog");
    let _worker = WorkerProcess::spawn(&fresh, "trees-rebuild");
    let mut objects = fresh.admin().objects;
    let run_id = objects
        .rebuild_catalog(pb::RebuildCatalogRequest {
            bucket_id: created.id,
            prefix: String::new(),
        })
        .await
        .expect("rebuild")
        .into_inner()
        .run_id;
    assert_succeeded(&wait_until_final(&fresh, &run_id, LIMIT).await);
    assert_eq!(
        assert_restorable(&fresh, &second_id, source.path()).await,
        FILES
    );
}
