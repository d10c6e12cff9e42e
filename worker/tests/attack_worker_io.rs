//! The worker's own enforcement, attacked as a tenant would: paths outside
//! the worker's roots or without a grant, symlinks in sources, snapshots and
//! destinations, hand-made manifests and decompression bombs planted in
//! storage, restores over existing trees. Every test asserts the refusal and
//! that nothing outside the run's paths was read, written or changed (a
//! sentinel tree is hashed before and after).
//!
//! Scenarios that go through a control plane run on both catalog backends
//! with real `coffer-worker` processes; the hand-made assignments go to a
//! real worker process from a fake control plane (`support/worker_io.rs`).

use crate::support;
use crate::support::worker_io;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_format::crypto::{open_object, seal_object};
use coffer_format::{
    layout, ChunkerParams, EntryKind, FileAttributes, IndexId, ManifestEntry, ManifestHeader,
    ManifestWriter, ObjectKind, RepositoryKeys,
};
use coffer_proto::v1 as pb;
use coffer_worker::paths::grant::AllowedPath;
use coffer_worker::repository::IndexUse;
use support::worker_api::{
    run_restore, RecordBatch, ReportError, Reporter, Repository, RepositoryAccess, RestorePlan,
    Store,
};
use support::{assert_succeeded, bucket_target, restore, wait_until_final, write, WorkerProcess};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use worker_io::{
    backup_assignment, failure, grant, hash_tree, manifest_key, restore_assignment,
    FakeControlPlane,
};

/// Runs an async test body once per catalog backend.
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(Backend::Postgres).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(Backend::Sqlite).await;
            }
        }
    };
}

/// A scratch directory with the usual parts of a scenario.
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let scene = Scene {
            base: tempfile::tempdir().expect("scene dir"),
        };
        for dir in ["source", "repo", "outside", "dest"] {
            std::fs::create_dir_all(scene.path(dir)).expect("mkdir");
        }
        write(&scene.path("outside/sentinel.txt"), b"must not change\n");
        std::fs::create_dir_all(scene.path("outside/inner")).expect("mkdir");
        write(&scene.path("outside/inner/deep.txt"), b"nor this\n");
        scene
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    fn text(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
}

/// Registers the scene's repository as a filesystem bucket.
async fn filesystem_bucket(server: &TestServer, repo: &Path) -> String {
    let bucket = pb::Bucket {
        name: format!("fs-{}", &Uuid::new_v4().simple().to_string()[..8]),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: repo.display().to_string(),
        })),
        ..Default::default()
    };
    server
        .admin()
        .create_bucket(bucket)
        .await
        .expect("register bucket")
        .id
}

async fn backup_to(server: &TestServer, source: &str, bucket_id: &str) -> pb::Run {
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.to_owned(),
        target: Some(bucket_target(bucket_id, "")),
        ..Default::default()
    });
    let id = server.admin().queue_run(spec).await;
    wait_until_final(server, &id, Duration::from_secs(120)).await
}

async fn rebuild(server: &TestServer, bucket_id: &str) -> pb::Run {
    let request = pb::RebuildCatalogRequest {
        bucket_id: bucket_id.to_owned(),
        prefix: String::new(),
    };
    let mut objects = server.admin().objects;
    let run_id = objects
        .rebuild_catalog(request)
        .await
        .expect("rebuild accepted")
        .into_inner()
        .run_id;
    wait_until_final(server, &run_id, Duration::from_secs(120)).await
}

async fn open_store(repo: &Path) -> Arc<Store> {
    let target = pb::ResolvedTarget {
        filesystem_path: repo.display().to_string(),
        ..Default::default()
    };
    Arc::new(Store::open(&target, "").await.expect("open repository"))
}

/// The entries of the manifest stored under `key`.
async fn manifest_entries(
    repo: &Path,
    key: &str,
    keys: Option<&RepositoryKeys>,
) -> Vec<ManifestEntry> {
    let bytes = opened(
        keys,
        key,
        std::fs::read(repo.join(key)).expect("read manifest"),
    );
    let mut reader = coffer_format::ManifestReader::new(bytes.as_slice()).expect("manifest");
    let mut entries = Vec::new();
    while let Some(entry) = reader.next_entry().expect("entry") {
        entries.push(entry);
    }
    entries
}

fn attributes(kind: EntryKind, mode: u32) -> FileAttributes {
    FileAttributes {
        kind,
        size: 0,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 1_600_000_000_000_000_000,
        content_hash: None,
        symlink_target: None,
    }
}

fn entry(path: &[u8], attributes: FileAttributes) -> ManifestEntry {
    ManifestEntry::new(path.to_vec(), attributes)
}

/// `content` (a real file entry) under another path, owned by root with
/// the setuid bit.
fn setuid_root_copy(content: &ManifestEntry, path: &[u8]) -> ManifestEntry {
    let mut copy = content.clone();
    copy.path = path.to_vec();
    copy.attributes.mode = 0o104_755;
    copy.attributes.uid = 0;
    copy.attributes.gid = 0;
    copy
}

/// Writes a well-formed manifest of `entries` (in manifest order) as a new
/// snapshot of the repository; returns its key.
fn plant_manifest(
    repo: &Path,
    entries: &[ManifestEntry],
    keys: Option<&RepositoryKeys>,
) -> (Uuid, String) {
    let run_id = Uuid::now_v7();
    let header = ManifestHeader::new(
        run_id,
        "/planted".to_owned(),
        "attacker".to_owned(),
        chrono::Utc::now(),
        ChunkerParams::default(),
    );
    let mut writer = ManifestWriter::new(Vec::new(), &header, 3).expect("manifest writer");
    for entry in entries {
        writer.add(entry).expect("well-formed entry");
    }
    let key = layout::manifest_key(run_id);
    let lines = writer.finish().expect("manifest");
    write(&repo.join(&key), &sealed(keys, &key, lines));
    (run_id, key)
}

/// Writes raw JSON lines as a new snapshot's manifest (its header names
/// the new run, nothing else is checked): how an attacker with write access
/// to the storage makes one.
fn plant_raw_manifest(
    repo: &Path,
    lines: &[serde_json::Value],
    keys: Option<&RepositoryKeys>,
) -> String {
    let run_id = Uuid::now_v7();
    let mut text = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let mut line = line.clone();
        if n == 0 {
            line["manifest"]["run_id"] = run_id.to_string().into();
        }
        serde_json::to_writer(&mut text, &line).expect("json");
        text.push(b'\n');
    }
    let key = layout::manifest_key(run_id);
    let compressed = zstd::encode_all(text.as_slice(), 3).expect("zstd");
    write(&repo.join(&key), &sealed(keys, &key, compressed));
    key
}

/// The keys of the repository the control plane made for filesystem bucket
/// `bucket_id` at `repo`: planting a manifest in a v2 repository takes them
/// (the attacker here is one who holds them, say a compromised worker).
/// The bucket's repository, opened as its lease would open it.
async fn open_repository(server: &TestServer, bucket_id: &str, repo: &Path) -> Repository {
    let access = support::repository_access(server, &format!("bucket:{bucket_id}/")).await;
    Repository::open(open_store(repo).await, &access, &CancellationToken::new())
        .await
        .expect("open the repository")
}

/// The entries of a v2 manifest, its tree blobs read from the repository.
async fn repository_manifest_entries(repository: &Repository, key: &str) -> Vec<ManifestEntry> {
    let cancel = CancellationToken::new();
    let index = repository
        .load_index(IndexUse::Read, &cancel)
        .await
        .expect("index");
    let mut manifest = repository
        .read_manifest(key, Some(&index), &cancel)
        .await
        .expect("manifest");
    let mut entries = Vec::new();
    while let Some(entry) = manifest.next_entry().expect("entry") {
        entries.push(entry);
    }
    entries
}

/// `lines` with every `subtree` line replaced by the entry lines of its
/// tree blob, so that a test can edit entries a backup stored in trees
/// (the counts on the end line stay right: a subtree counts its entries).
async fn expand_subtrees(
    repository: &Repository,
    lines: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let cancel = CancellationToken::new();
    let index = repository
        .load_index(IndexUse::Read, &cancel)
        .await
        .expect("index");
    let mut expanded = Vec::new();
    for line in lines {
        let Some(blob) = line["subtree"]["blob"].as_str() else {
            expanded.push(line);
            continue;
        };
        let id: coffer_format::ChunkId = blob.parse().expect("a chunk id");
        let location = index.get(&id).expect("the tree blob is indexed");
        let stored = repository
            .store()
            .get_range(
                &layout::pack_key(&location.pack_id),
                u64::from(location.offset),
                u64::from(location.length),
                &cancel,
            )
            .await
            .expect("read the tree blob");
        let plain = repository
            .blob_opener()
            .open(id, &location, &stored)
            .expect("open the tree blob");
        expanded.extend(
            plain
                .split(|b| *b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| serde_json::from_slice::<serde_json::Value>(line).expect("json line")),
        );
    }
    expanded
}

/// A manifest's stored bytes: as they are in v1, sealed to `key` in v2.
fn sealed(keys: Option<&RepositoryKeys>, key: &str, plain: Vec<u8>) -> Vec<u8> {
    match keys {
        Some(keys) => seal_object(
            keys,
            ObjectKind::Manifest,
            key,
            &plain,
            &mut rand::rngs::OsRng,
        )
        .expect("seal"),
        None => plain,
    }
}

/// A manifest's lines from its stored bytes (opened with `keys` in v2).
fn opened(keys: Option<&RepositoryKeys>, key: &str, stored: Vec<u8>) -> Vec<u8> {
    match keys {
        Some(keys) => open_object(keys, ObjectKind::Manifest, key, &stored).expect("open"),
        None => stored,
    }
}

/// The key of the one manifest a committed backup wrote: each attempt
/// writes under its own key (`snapshots/<run>.<lease token>`).
fn committed_manifest_key(repo: &Path, run_id: &str) -> String {
    let prefix = format!("{run_id}.");
    let mut names: Vec<String> = std::fs::read_dir(repo.join("snapshots"))
        .expect("snapshots directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert_eq!(names.len(), 1, "one attempt wrote a manifest: {names:?}");
    format!("snapshots/{}", names.remove(0))
}

/// The JSON lines of a real manifest.
fn manifest_lines(repo: &Path, key: &str, keys: Option<&RepositoryKeys>) -> Vec<serde_json::Value> {
    let stored = opened(keys, key, std::fs::read(repo.join(key)).expect("read"));
    let bytes = zstd::decode_all(stored.as_slice()).expect("zstd");
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("json line"))
        .collect()
}

/// A restore grant of `destination` beneath `root` that allows neither
/// owners nor special bits, as a non-admin tenant would hold.
fn tenant_restore_access(destination: &Path, root: &Path) -> AllowedPath {
    AllowedPath {
        path: destination.to_path_buf(),
        anchor: root.to_path_buf(),
        skip: Vec::new(),
        in_place: false,
        restore_ownership: false,
        restore_special_bits: false,
    }
}

/// A reporter that keeps what a direct restore reports.
#[derive(Default)]
struct Collected {
    errors: std::sync::Mutex<Vec<String>>,
}

impl Reporter for Collected {
    fn progress(&self, _progress: &pb::RunProgress) {}

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        let mut errors = self.errors.lock().expect("errors");
        errors.extend(
            batch
                .errors
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message)),
        );
        Ok(())
    }
}

async fn direct_restore(
    repo: &Path,
    key: &str,
    destination: &Path,
    access: AllowedPath,
    repository: RepositoryAccess,
) -> (Result<String, String>, Vec<String>) {
    let plan = RestorePlan {
        run_id: Uuid::now_v7(),
        lease_token: 1,
        store: open_store(repo).await,
        repository,
        manifest_key: key.to_owned(),
        paths: Vec::new(),
        destination: destination.to_path_buf(),
        overwrite_newer: false,
        access: Some(access),
    };
    let reporter = Collected::default();
    let result = run_restore(plan, &reporter, CancellationToken::new())
        .await
        .map(|summary| summary.details)
        .map_err(|failure| failure.message);
    let errors = reporter.errors.lock().expect("errors").clone();
    (result, errors)
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).map_or(true, |mut entries| entries.next().is_none())
}

// --- hand-made manifests in storage ------------------------------------------

/// The attack: a hand-made manifest in a filesystem repository
/// names a setuid-root file `../outside/escape` (and one at an absolute
/// path). Rebuilding the catalog from that storage as admin refuses the
/// manifest and creates no snapshot; restoring it directly is refused
/// before anything is written; nothing outside the destination changes.
async fn hand_made_manifest_with_escaping_paths_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let scene = Scene::new();
    write(&scene.path("source/tool"), b"#!/bin/sh\necho owned\n");
    let bucket_id = filesystem_bucket(&server, &scene.path("repo")).await;
    let _worker = WorkerProcess::spawn(&server, "attack-rebuild");
    let backup = backup_to(&server, &scene.text("source"), &bucket_id).await;
    assert_succeeded(&backup);
    let real_key = committed_manifest_key(&scene.path("repo"), &backup.id);
    let repository = open_repository(&server, &bucket_id, &scene.path("repo")).await;
    let keys = Arc::clone(repository.keys().expect("a v2 repository"));
    let mut lines = expand_subtrees(
        &repository,
        manifest_lines(&scene.path("repo"), &real_key, Some(&keys)),
    )
    .await;
    let file_line = lines
        .iter()
        .position(|line| line["entry"]["kind"] == "file")
        .expect("a file entry");
    let sentinel = hash_tree(&scene.path("outside"));

    use base64::Engine;
    let b64 = |path: &[u8]| base64::engine::general_purpose::STANDARD.encode(path);
    let mut planted = Vec::new();
    for path in [
        &b"../outside/escape"[..],
        b"/tmp/coffer-escape",
        b"a/../../x",
    ] {
        let entry = &mut lines[file_line]["entry"];
        entry["path_b64"] = b64(path).into();
        entry["mode"] = 0o104_755.into();
        entry["uid"] = 0.into();
        planted.push(plant_raw_manifest(&scene.path("repo"), &lines, Some(&keys)));
    }

    let rebuilt = rebuild(&server, &bucket_id).await;
    assert_eq!(
        rebuilt.state,
        pb::RunState::Failed as i32,
        "{}",
        rebuilt.error
    );
    assert!(
        rebuilt.error.contains("component") && planted.iter().any(|k| rebuilt.error.contains(k)),
        "the refusal names the manifest and what is wrong: {}",
        rebuilt.error
    );
    assert_eq!(hash_tree(&scene.path("outside")), sentinel);

    for key in &planted {
        let destination = scene.path("dest");
        let access = tenant_restore_access(&destination, scene.base.path());
        let repository = support::repository_access(&server, &format!("bucket:{bucket_id}/")).await;
        let (result, _) =
            direct_restore(&scene.path("repo"), key, &destination, access, repository).await;
        let error = result.expect_err("the restore is refused");
        assert!(error.contains("component"), "{error}");
        assert!(is_empty_dir(&destination), "nothing is written");
    }
    assert_eq!(hash_tree(&scene.path("outside")), sentinel);
    assert!(!Path::new("/tmp/coffer-escape").exists());
}
both_backends!(
    hand_made_manifest_paths,
    hand_made_manifest_with_escaping_paths_is_refused
);

/// A well-formed hand-made manifest that a rebuild accepts: a symlink
/// `evil` to a directory outside, then a setuid-root file "beneath" it, and
/// a setuid-root file inside. Restored as admin into a destination whose
/// `docs` directory an attacker replaced by a symlink to the outside: no
/// entry is written through either symlink, the setuid bit is stripped
/// and the file belongs to the worker; the outside tree is unchanged.
async fn restore_never_writes_through_symlinks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let scene = Scene::new();
    write(&scene.path("source/docs/readme.txt"), b"read me\n");
    write(&scene.path("source/tool"), b"#!/bin/sh\necho owned\n");
    let bucket_id = filesystem_bucket(&server, &scene.path("repo")).await;
    let _worker = WorkerProcess::spawn(&server, "attack-symlinks");
    let backup = backup_to(&server, &scene.text("source"), &bucket_id).await;
    assert_succeeded(&backup);
    let real_key = committed_manifest_key(&scene.path("repo"), &backup.id);
    let repository = open_repository(&server, &bucket_id, &scene.path("repo")).await;
    let keys = Arc::clone(repository.keys().expect("a v2 repository"));
    let real = repository_manifest_entries(&repository, &real_key).await;
    let tool = real
        .iter()
        .find(|e| e.path == b"tool")
        .expect("tool entry")
        .clone();
    let mut link = entry(b"evil", attributes(EntryKind::Symlink, 0o120_777));
    link.attributes.symlink_target = Some(scene.text("outside").into_bytes());
    let entries = vec![
        entry(b"", attributes(EntryKind::Directory, 0o040_755)),
        entry(b"docs", attributes(EntryKind::Directory, 0o040_777)),
        setuid_root_copy(&tool, b"docs/planted"),
        link,
        setuid_root_copy(&tool, b"evil/planted"),
        setuid_root_copy(&tool, b"suid"),
    ];
    let (planted_id, _) = plant_manifest(&scene.path("repo"), &entries, Some(&keys));
    let rebuilt = rebuild(&server, &bucket_id).await;
    assert_succeeded(&rebuilt);

    // Restore as a tenant would: under a grant (deeper than the harness's
    // grant of `/`, so it is the one that applies) that allows neither
    // owners nor special bits.
    server
        .admin()
        .grant(
            &backup.owner_id,
            &scene.text("dest"),
            &[pb::GrantUse::RestoreDestination],
        )
        .await
        .expect("a tenant's restore grant");
    let destination = scene.path("dest");
    std::os::unix::fs::symlink(scene.path("outside/inner"), destination.join("docs"))
        .expect("attacker's symlink");
    let sentinel = hash_tree(&scene.path("outside"));
    let restored = restore(&server, &planted_id.to_string(), &destination).await;
    assert_eq!(
        restored.state,
        pb::RunState::Failed as i32,
        "{}",
        restored.error
    );
    assert_eq!(
        hash_tree(&scene.path("outside")),
        sentinel,
        "outside changed"
    );
    assert!(!scene.path("outside/planted").exists());
    assert!(!scene.path("outside/inner/planted").exists());
    let suid = std::fs::metadata(destination.join("suid")).expect("suid restored");
    assert_eq!(suid.mode() & 0o7000, 0, "special bits stripped");
    assert!(
        std::fs::symlink_metadata(destination.join("docs"))
            .expect("docs")
            .file_type()
            .is_symlink(),
        "the attacker's link is left as it was, not followed"
    );
}
both_backends!(
    symlinks_in_snapshot_and_destination,
    restore_never_writes_through_symlinks
);

/// Entries whose sizes and counts do not fit (a huge size with one chunk, a
/// footer claiming more entries than there are) are refused when read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_impossible_sizes_and_counts_are_refused() {
    let scene = Scene::new();
    write(&scene.path("source/file"), b"some content\n");
    let key = direct_backup(&scene).await;
    let lines = manifest_lines(&scene.path("repo"), &key, None);
    let file_line = lines
        .iter()
        .position(|line| line["entry"]["kind"] == "file")
        .expect("a file entry");
    let mut huge = lines.clone();
    huge[file_line]["entry"]["size"] = u64::MAX.into();
    let mut counts = lines.clone();
    let end = counts.len() - 1;
    counts[end]["end"]["files"] = 1_000_000_000u64.into();
    let mut mode = lines.clone();
    mode[file_line]["entry"]["mode"] = 0o040_755.into();
    for (what, crafted) in [
        ("chunks cannot hold", huge),
        ("end line", counts),
        ("file-type", mode),
    ] {
        let planted = plant_raw_manifest(&scene.path("repo"), &crafted, None);
        let destination = scene.path("dest");
        let access = tenant_restore_access(&destination, scene.base.path());
        let (result, _) = direct_restore(
            &scene.path("repo"),
            &planted,
            &destination,
            access,
            RepositoryAccess::v1(Vec::new()),
        )
        .await;
        let error = result.expect_err("refused");
        assert!(error.contains(what), "{what}: {error}");
    }
}

// --- decompression bombs --------------------------------------------------------

/// A zstd frame of `header` then `len` bytes of `b'a'` with no newline.
fn bomb(header: &[u8], len: usize) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
    encoder.write_all(header).expect("header");
    let block = vec![b'a'; 1 << 20];
    for _ in 0..len / block.len() {
        encoder.write_all(&block).expect("block");
    }
    encoder.finish().expect("bomb")
}

/// The peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Backs up the scene's source directly into its repository; returns the
/// manifest key.
async fn direct_backup(scene: &Scene) -> String {
    use support::worker_api::{run_backup, BackupPlan};
    let plan = BackupPlan {
        run_id: Uuid::now_v7(),
        job_id: None,
        lease_token: 1,
        source: scene.path("source"),
        options: pb::JobOptions::default(),
        store: open_store(&scene.path("repo")).await,
        repository: coffer_worker::repository::RepositoryAccess::v1(vec![3; 32]),
        parent: None,
        access: None,
        commands: Default::default(),
    };
    let reporter = Collected::default();
    run_backup(plan, &reporter, CancellationToken::new())
        .await
        .expect("backup")
        .manifest_key
}

/// A 13 KB manifest used to decode without bound: now a manifest, and an
/// index file, that decode to 1 GiB without a line end are errors after a
/// bounded amount of memory, and the restore writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_in_manifests_and_index_files_are_errors_not_allocations() {
    let scene = Scene::new();
    write(&scene.path("source/file"), b"some content\n");
    let real_key = direct_backup(&scene).await;
    let header = manifest_lines(&scene.path("repo"), &real_key, None)[0].to_string() + "\n";
    let manifest_bomb = bomb(header.as_bytes(), 1 << 30);
    assert!(
        manifest_bomb.len() < 256 << 10,
        "{} bytes",
        manifest_bomb.len()
    );
    let bomb_key = layout::manifest_key(Uuid::now_v7());
    write(&scene.path("repo").join(&bomb_key), &manifest_bomb);

    let before = peak_rss();
    let destination = scene.path("dest");
    let access = tenant_restore_access(&destination, scene.base.path());
    let (result, _) = direct_restore(
        &scene.path("repo"),
        &bomb_key,
        &destination,
        access.clone(),
        RepositoryAccess::v1(Vec::new()),
    )
    .await;
    let error = result.expect_err("the manifest bomb is refused");
    assert!(error.contains("decompression bomb"), "{error}");

    let index_bomb = bomb(
        b"{\"index\":{\"format\":\"coffer\",\"version\":1}}\n",
        1 << 30,
    );
    let index_key = layout::index_key(&IndexId::compute(&index_bomb));
    write(&scene.path("repo").join(index_key), &index_bomb);
    let (result, _) = direct_restore(
        &scene.path("repo"),
        &real_key,
        &destination,
        access,
        RepositoryAccess::v1(Vec::new()),
    )
    .await;
    let error = result.expect_err("the index bomb is refused");
    assert!(error.contains("decompression bomb"), "{error}");
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 400 << 20, "decoding the bombs took {grown} bytes");
    assert!(is_empty_dir(&destination), "nothing is written");
}

// --- backup sources ----------------------------------------------------------------

/// A backup whose source root is a symlink to a directory outside is
/// refused; nothing is read from the link's target and no snapshot written.
async fn backup_of_a_symlinked_root_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let scene = Scene::new();
    let link = scene.path("source/link");
    std::os::unix::fs::symlink(scene.path("outside"), &link).expect("symlink");
    let bucket_id = filesystem_bucket(&server, &scene.path("repo")).await;
    let _worker = WorkerProcess::spawn(&server, "attack-root-link");
    for source in [link.clone(), link.join("inner")] {
        let run = backup_to(&server, &source.display().to_string(), &bucket_id).await;
        assert_eq!(run.state, pb::RunState::Failed as i32);
        assert!(run.error.contains("symlink"), "{}", run.error);
    }
    assert!(is_empty_dir(&scene.path("repo/snapshots")));
}
both_backends!(symlinked_backup_root, backup_of_a_symlinked_root_is_refused);

/// Directories swapped for symlinks to the outside while backups run: the
/// walk and the reads never follow them, so no byte of the outside is in
/// any snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_swapped_for_symlinks_mid_walk_are_not_followed() {
    let scene = Scene::new();
    write(&scene.path("outside/secret.txt"), b"top secret outside\n");
    for i in 0..200 {
        write(
            &scene.path(&format!("source/sub/f{i:03}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        let sub = scene.path("source/sub");
        let parked = scene.path("source/.parked");
        let outside = scene.path("outside");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&sub, &parked);
                let _ = std::os::unix::fs::symlink(&outside, &sub);
                std::thread::yield_now();
                let _ = std::fs::remove_file(&sub);
                let _ = std::fs::rename(&parked, &sub);
            }
        })
    };
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(direct_backup(&scene).await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().expect("swapper");
    for key in keys {
        for entry in manifest_entries(&scene.path("repo"), &key, None).await {
            assert!(
                !entry.path.ends_with(b"secret.txt") && !entry.path.ends_with(b"deep.txt"),
                "{} came from outside",
                String::from_utf8_lossy(&entry.path)
            );
        }
    }
}

// --- restores over existing trees -----------------------------------------------------

/// Restoring into a destination that already holds a tree leaves the modes
/// and owners of what was there alone (only an in-place grant may change
/// them) and replaces files by rename, never writing through them.
async fn restore_over_an_existing_tree_leaves_it_alone(backend: Backend) {
    let server = TestServer::start(backend).await;
    let scene = Scene::new();
    write(&scene.path("source/docs/readme.txt"), b"read me\n");
    std::fs::set_permissions(
        scene.path("source/docs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let bucket_id = filesystem_bucket(&server, &scene.path("repo")).await;
    let _worker = WorkerProcess::spawn(&server, "attack-existing");
    let backup = backup_to(&server, &scene.text("source"), &bucket_id).await;
    assert_succeeded(&backup);

    let destination = scene.path("dest");
    std::fs::create_dir_all(destination.join("docs")).expect("mkdir");
    std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    std::fs::set_permissions(
        destination.join("docs"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    std::os::unix::fs::chown(destination.join("docs"), Some(4321), Some(4321)).expect("chown");
    // A hard link to a file outside: writing through it would change the outside.
    std::fs::hard_link(
        scene.path("outside/sentinel.txt"),
        destination.join("docs/readme.txt"),
    )
    .expect("hard link");
    let sentinel = hash_tree(&scene.path("outside"));

    let restored = restore(&server, &backup.id, &destination).await;
    assert_succeeded(&restored);
    let docs = std::fs::metadata(destination.join("docs")).expect("docs");
    assert_eq!(
        docs.mode() & 0o7777,
        0o700,
        "existing directory not re-moded"
    );
    assert_eq!(
        (docs.uid(), docs.gid()),
        (4321, 4321),
        "existing directory not chowned"
    );
    let root = std::fs::metadata(&destination).expect("destination");
    assert_eq!(root.mode() & 0o7777, 0o750, "the destination not re-moded");
    assert_eq!(
        std::fs::read(destination.join("docs/readme.txt")).expect("restored"),
        b"read me\n"
    );
    assert_eq!(
        hash_tree(&scene.path("outside")),
        sentinel,
        "written through a link"
    );
}
both_backends!(existing_tree, restore_over_an_existing_tree_leaves_it_alone);

// --- the worker's own roots, grants and protected paths -----------------------------

/// Hand-made assignments to a real worker process with its own roots: a
/// path outside them is refused even with a grant for it, a path without a
/// grant is refused once the control plane sends grants, unnormalised paths
/// and protected paths are refused, and a protected path inside a granted
/// source is skipped. Refusals are permanent and leave the repository empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_enforces_its_roots_grants_and_protected_paths() {
    let scene = Scene::new();
    write(&scene.path("source/data.txt"), b"tenant data\n");
    write(&scene.path("source/state/admin.token"), b"coffer_secret\n");
    write(&scene.path("outside/secret.txt"), b"other tenant\n");
    let repo = scene.path("repo");
    let base = scene.base.path();
    let control_plane = FakeControlPlane::start().await;
    let source_root = scene.text("source");
    let protected = scene.text("source/state");
    let _worker = control_plane.spawn_worker(&[
        "--source-roots",
        &source_root,
        "--restore-roots",
        &scene.text("dest"),
        "--repository-roots",
        &scene.text("repo"),
        "--protected-paths",
        &protected,
    ]);
    let repo_grant = grant(&repo, base, pb::GrantUse::Repository);
    let source_grant = |path: &Path| grant(path, base, pb::GrantUse::BackupSource);
    let outside = scene.path("outside");
    let sentinel = hash_tree(&outside);
    let mut climbing = source_grant(&outside);
    climbing.path = format!("{source_root}/../outside");
    let other_repo = scene.path("outside/repo");
    let refusals = [
        // Outside the worker's source roots, although the control plane granted it.
        (
            backup_assignment(
                &outside.display().to_string(),
                &repo,
                vec![source_grant(&outside), repo_grant.clone()],
            ),
            "outside this worker's backup source roots",
        ),
        // Within the roots but without a grant for the source.
        (
            backup_assignment(&source_root, &repo, vec![repo_grant.clone()]),
            "no grant",
        ),
        // A grant for another use does not do.
        (
            backup_assignment(
                &source_root,
                &repo,
                vec![
                    grant(
                        &scene.path("source"),
                        base,
                        pb::GrantUse::RestoreDestination,
                    ),
                    repo_grant.clone(),
                ],
            ),
            "no grant",
        ),
        // Spelled to climb out: refused before any grant is looked at.
        (
            backup_assignment(
                &climbing.path.clone(),
                &repo,
                vec![climbing, repo_grant.clone()],
            ),
            "'..'",
        ),
        // A protected path.
        (
            backup_assignment(
                &protected,
                &repo,
                vec![
                    source_grant(&scene.path("source/state")),
                    repo_grant.clone(),
                ],
            ),
            "protects",
        ),
        // A repository outside the worker's repository roots.
        (
            backup_assignment(
                &source_root,
                &other_repo,
                vec![
                    source_grant(&scene.path("source")),
                    grant(&other_repo, base, pb::GrantUse::Repository),
                ],
            ),
            "outside this worker's repository roots",
        ),
    ];
    for (assignment, expected) in refusals {
        let completion = control_plane.run(assignment).await;
        let refused = failure(&completion);
        assert!(
            refused.error.contains(expected),
            "{expected}: {}",
            refused.error
        );
        assert!(!refused.retryable, "a refusal is permanent");
    }
    assert!(!other_repo.exists());
    assert!(
        is_empty_dir(&repo),
        "no refused run wrote to the repository"
    );

    // Granted and within the roots: backed up, without the protected path.
    let completion = control_plane
        .run(backup_assignment(
            &source_root,
            &repo,
            vec![source_grant(&scene.path("source")), repo_grant.clone()],
        ))
        .await;
    let key = manifest_key(&completion);
    let paths: Vec<Vec<u8>> = manifest_entries(&repo, &key, None)
        .await
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(paths.contains(&b"data.txt".to_vec()));
    assert!(
        !paths.iter().any(|p| p.starts_with(b"state")),
        "the protected path was read: {paths:?}"
    );

    // A restore outside the restore roots, granted or not; then within them.
    for (target, root) in [
        (scene.path("outside/restored"), base.to_path_buf()),
        (scene.path("dest/restored"), scene.path("dest")),
    ] {
        let completion = control_plane
            .run(restore_assignment(
                &key,
                &target.display().to_string(),
                &repo,
                vec![
                    grant(&target, &root, pb::GrantUse::RestoreDestination),
                    repo_grant.clone(),
                ],
            ))
            .await;
        if target.starts_with(&outside) {
            let refused = failure(&completion);
            assert!(
                refused
                    .error
                    .contains("outside this worker's restore destination roots"),
                "{}",
                refused.error
            );
        } else {
            let _ = manifest_key(&completion);
        }
    }
    assert_eq!(hash_tree(&outside), sentinel, "the outside changed");
    assert_eq!(
        std::fs::read(scene.path("dest/restored/data.txt")).expect("restored"),
        b"tenant data\n"
    );
}

// --- bounded descriptors ------------------------------------------------------------------

/// A tree of 12,000 files over a few contents plus large files copied
/// several times (their chunks spread over several packs) restores with at
/// most 1024 descriptors, in several plan windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tree_sharing_chunks_across_packs_restores_under_1024_descriptors() {
    let scene = Scene::new();
    for i in 0..12_000u64 {
        let content = support::noise(2000, i % 5);
        write(
            &scene.path(&format!("source/d{:02}/f{i:05}", i % 40)),
            &content,
        );
    }
    for i in 0..20u64 {
        let content = support::noise(1 << 20, 100 + i);
        for copy in 0..3 {
            write(&scene.path(&format!("source/big{copy}/b{i:02}")), &content);
        }
    }
    let key = direct_backup(&scene).await;
    let packs = walk_count(&scene.path("repo/packs"));
    assert!(packs > 1, "the chunks span several packs ({packs})");

    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(1024),
            maximum: current.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
    let destination = scene.path("dest");
    let access = tenant_restore_access(&destination, scene.base.path());
    let (result, errors) = direct_restore(
        &scene.path("repo"),
        &key,
        &destination,
        access,
        RepositoryAccess::v1(Vec::new()),
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    result.expect("restored under 1024 descriptors");
    for (rel, seed) in [("d07/f00007", 2u64), ("d39/f11999", 4)] {
        assert_eq!(
            std::fs::read(destination.join(rel)).expect("restored file"),
            support::noise(2000, seed)
        );
    }
    assert_eq!(
        std::fs::read(destination.join("big2/b19")).expect("restored file"),
        support::noise(1 << 20, 119)
    );
}

fn walk_count(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            count += walk_count(&path);
        } else {
            count += 1;
        }
    }
    count
}
