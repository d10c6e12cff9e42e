//! Backups, restores and verifications in repository format v1 against real
//! stores: a filesystem repository in a temporary directory, and an S3
//! repository on the Garage server that the test command starts
//! (`eval "$(scripts/start-garage.sh)"` sets COFFER_TEST_S3_*). Every test
//! checks real outcomes: the bytes, modes and times on disk after a restore,
//! the bytes stored, what a run reports.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_format::layout::{PACKS_PREFIX, SNAPSHOTS_PREFIX};
use coffer_format::{read_pack_entries, ChunkId};
use coffer_proto::v1::{
    FileRecord, JobOptions, ResolvedBucket, ResolvedTarget, RunError, RunProgress,
};
use support::worker_api::{
    run_backup, run_gc, run_restore, run_verify, BackupPlan, BackupSummary, GcPlan, GcSummary,
    ParentSnapshot, RecordBatch, ReportError, Reporter, Repository, RepositoryAccess, RestorePlan,
    RestoreSummary, RunFailure, Store, StoreError, VerifyPlan, VerifySummary, MAX_BATCH_RECORDS,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MIB: usize = 1 << 20;
/// Chunk key of the repositories the tests create.
const REPOSITORY_KEY: [u8; 32] = [7; 32];

// ---------------------------------------------------------------------------
// What runs report

/// Collects everything a run reports.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<RecordBatch>>,
    last_progress: Mutex<Option<RunProgress>>,
    /// Cancelled when the first batch arrives, if set.
    cancel_on_first_batch: Option<CancellationToken>,
}

impl Reporter for Recorder {
    fn progress(&self, progress: &RunProgress) {
        *self
            .last_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(progress.clone());
    }

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(batch);
        if let Some(cancel) = &self.cancel_on_first_batch {
            cancel.cancel();
        }
        Ok(())
    }
}

impl Recorder {
    fn batches(&self) -> Vec<RecordBatch> {
        self.batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn files(&self) -> Vec<FileRecord> {
        self.batches().into_iter().flat_map(|b| b.files).collect()
    }

    fn errors(&self) -> Vec<RunError> {
        self.batches().into_iter().flat_map(|b| b.errors).collect()
    }

    fn error_paths(&self) -> BTreeSet<String> {
        self.errors().into_iter().map(|e| e.path).collect()
    }

    fn last_progress(&self) -> RunProgress {
        self.last_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .expect("progress was reported")
    }

    /// Batches are numbered 0, 1, 2, … and none is over the limit.
    fn assert_batches_well_formed(&self, batch_count: i64) {
        let batches = self.batches();
        assert_eq!(batch_count, batches.len() as i64);
        let sequences: Vec<i64> = batches.iter().map(|b| b.sequence).collect();
        assert_eq!(sequences, (0..batch_count).collect::<Vec<_>>());
        for batch in &batches {
            assert!(batch.files.len() + batch.errors.len() <= MAX_BATCH_RECORDS);
        }
    }
}

// ---------------------------------------------------------------------------
// Source trees

fn write(root: &Path, rel: &[u8], content: &[u8]) {
    let path = root.join(OsStr::from_bytes(rel));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directories");
    }
    fs::write(&path, content).expect("write fixture file");
}

/// Deterministic, incompressible bytes (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    File::open(path)
        .expect("open to set times")
        .set_modified(mtime)
        .expect("set mtime");
}

fn mtime_of(path: &Path) -> SystemTime {
    fs::symlink_metadata(path)
        .expect("stat")
        .modified()
        .expect("mtime")
}

/// A tree with the awkward cases: nested and empty directories, an empty
/// file, identical files, a multi-chunk file, a symlink and a dangling one
/// with a non-UTF-8 target, a non-UTF-8 name, a private file with a set
/// mtime, an executable, a socket (not part of a snapshot) and an excluded
/// file. Returns the paths the snapshot must hold.
fn build_tree(root: &Path) -> BTreeSet<Vec<u8>> {
    fs::create_dir_all(root.join("docs/guides/deep")).expect("mkdir");
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    write(root, b"docs/readme.txt", b"read me\n");
    write(root, b"docs/guides/deep/notes.md", b"# deep notes\n");
    write(root, b"empty.txt", b"");
    let shared = pattern(300_000, 1);
    write(root, b"same1.bin", &shared);
    write(root, b"docs/same2.bin", &shared);
    // Several chunks, and more than one 16 MiB pack.
    write(root, b"big.bin", &pattern(18 * MIB, 2));
    write(root, b"caf\xe9.txt", b"latin-1 name\n");
    write(root, b"private.txt", b"secret\n");
    let private = root.join("private.txt");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).expect("chmod");
    set_mtime(
        &private,
        UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789),
    );
    write(root, b"run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(root.join("docs/guides"), fs::Permissions::from_mode(0o750))
        .expect("chmod");
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(OsStr::from_bytes(b"../nowhere-\xff"), root.join("dangling"))
        .expect("symlink");
    write(root, b"skip.tmp", b"excluded\n");
    // The socket file stays after the listener is dropped.
    drop(std::os::unix::net::UnixListener::bind(root.join("app.sock")).expect("bind socket"));
    [
        &b"big.bin"[..],
        b"caf\xe9.txt",
        b"dangling",
        b"docs",
        b"docs/guides",
        b"docs/guides/deep",
        b"docs/guides/deep/notes.md",
        b"docs/readme.txt",
        b"docs/same2.bin",
        b"empty-dir",
        b"empty.txt",
        b"link",
        b"private.txt",
        b"run.sh",
        b"same1.bin",
    ]
    .into_iter()
    .map(<[u8]>::to_vec)
    .collect()
}

/// What a tree holds at a path, as a restore must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File {
        len: u64,
        blake3: String,
        mode: u32,
        mtime: SystemTime,
        uid: u32,
        gid: u32,
    },
    Directory {
        mode: u32,
        mtime: SystemTime,
    },
    Symlink {
        target: Vec<u8>,
    },
    Other,
}

/// BLAKE3 of a file and its length, read in 1 MiB pieces (files may be
/// larger than memory).
fn hash_file(path: &Path) -> (u64, String) {
    let mut file = File::open(path).expect("open for hashing");
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; MIB];
    let mut len = 0u64;
    loop {
        let read = file.read(&mut buffer).expect("read for hashing");
        if read == 0 {
            return (len, hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buffer[..read]);
        len += read as u64;
    }
}

fn describe(path: &Path) -> Node {
    let metadata = fs::symlink_metadata(path).expect("stat");
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).expect("read link");
        return Node::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        };
    }
    let mtime = metadata.modified().expect("mtime");
    let mode = metadata.mode() & 0o7777;
    if file_type.is_dir() {
        return Node::Directory { mode, mtime };
    }
    if !file_type.is_file() {
        return Node::Other;
    }
    let (len, blake3) = hash_file(path);
    Node::File {
        len,
        blake3,
        mode,
        mtime,
        uid: metadata.uid(),
        gid: metadata.gid(),
    }
}

/// Every entry below `root` (not `root` itself), by raw relative path.
fn describe_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut nodes = BTreeMap::new();
    let mut pending = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = pending.pop() {
        for child in fs::read_dir(&dir).expect("read dir") {
            let child = child.expect("dir entry");
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(child.file_name().as_bytes());
            let node = describe(&child.path());
            if matches!(node, Node::Directory { .. }) {
                pending.push((child.path(), child_rel.clone()));
            }
            nodes.insert(child_rel, node);
        }
    }
    nodes
}

/// Asserts that two descriptions are equal, naming the first differing path.
fn assert_same_tree(restored: &BTreeMap<Vec<u8>, Node>, expected: &BTreeMap<Vec<u8>, Node>) {
    let restored_paths: BTreeSet<&Vec<u8>> = restored.keys().collect();
    let expected_paths: BTreeSet<&Vec<u8>> = expected.keys().collect();
    assert_eq!(
        lossy(restored_paths.iter().copied()),
        lossy(expected_paths.iter().copied()),
        "the restored tree has other paths"
    );
    for (path, node) in expected {
        assert_eq!(
            restored.get(path),
            Some(node),
            "{} differs",
            String::from_utf8_lossy(path)
        );
    }
}

fn lossy<'a>(paths: impl Iterator<Item = &'a Vec<u8>>) -> Vec<String> {
    paths
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// Temporary files a restore writes start with a dot; none may be left.
fn assert_no_temporary_files(root: &Path) {
    let leftovers: Vec<String> = describe_tree(root)
        .into_keys()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .filter(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// ---------------------------------------------------------------------------
// Stores

async fn filesystem_store(repo: &Path) -> Arc<Store> {
    let target = ResolvedTarget {
        filesystem_path: repo.to_string_lossy().into_owned(),
        ..Default::default()
    };
    Arc::new(
        Store::open(&target, "")
            .await
            .expect("filesystem store opens"),
    )
}

/// The Garage server started by the test command, as an S3 target with a
/// fresh bucket.
async fn garage_store(prefix: &str) -> Arc<Store> {
    let endpoint = std::env::var("COFFER_TEST_S3_ENDPOINT").unwrap_or_default();
    assert!(
        !endpoint.is_empty(),
        "COFFER_TEST_S3_ENDPOINT is not set: start Garage first with \
         `eval \"$(scripts/start-garage.sh)\"` (the test command does this)"
    );
    let target = ResolvedTarget {
        bucket: Some(ResolvedBucket {
            id: Uuid::new_v4().to_string(),
            endpoint,
            bucket: format!("coffer-test-{}", &Uuid::new_v4().simple().to_string()[..12]),
            region: std::env::var("COFFER_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
            force_path_style: true,
            // COFFER_TEST_S3_ACCESS_KEY_ID / COFFER_TEST_S3_SECRET_ACCESS_KEY
            credentials_ref: "env:COFFER_TEST_S3".into(),
            use_worker_credentials: true,
            prefix: prefix.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let store = Store::open(&target, "").await.expect("S3 store opens");
    let Store::S3(s3) = &store else {
        panic!("an S3 bucket target opens an S3 store");
    };
    s3.ensure_bucket(&CancellationToken::new())
        .await
        .expect("create test bucket");
    Arc::new(store)
}

/// Total bytes of the packs in a filesystem repository.
async fn pack_bytes(store: &Store, repo: &Path) -> u64 {
    let keys = store
        .list(PACKS_PREFIX, &CancellationToken::new())
        .await
        .expect("list packs");
    keys.iter()
        .map(|key| fs::metadata(repo.join(key)).expect("pack file").len())
        .sum()
}

async fn snapshot_keys(store: &Store) -> Vec<String> {
    store
        .list(SNAPSHOTS_PREFIX, &CancellationToken::new())
        .await
        .expect("list snapshots")
}

/// `(path, chunks)` of every file in a snapshot.
async fn snapshot_files(store: &Arc<Store>, manifest_key: &str) -> Vec<(String, Vec<ChunkId>)> {
    let cancel = CancellationToken::new();
    let repository = Repository::open(
        Arc::clone(store),
        &RepositoryAccess::v1(Vec::new()),
        &cancel,
    )
    .await
    .expect("repository opens");
    let mut manifest = repository
        .read_manifest(manifest_key, None, &cancel)
        .await
        .expect("manifest reads");
    let mut files = Vec::new();
    while let Some(entry) = manifest.next_entry().expect("manifest entry") {
        if entry.kind() == coffer_format::EntryKind::File {
            files.push((
                String::from_utf8_lossy(&entry.path).into_owned(),
                entry.chunks,
            ));
        }
    }
    files
}

/// Files of a snapshot that hold any of `chunks`.
async fn files_holding(
    store: &Arc<Store>,
    manifest_key: &str,
    chunks: &BTreeSet<ChunkId>,
) -> BTreeSet<String> {
    snapshot_files(store, manifest_key)
        .await
        .into_iter()
        .filter(|(_, ids)| ids.iter().any(|id| chunks.contains(id)))
        .map(|(path, _)| path)
        .collect()
}

// ---------------------------------------------------------------------------
// Runs

fn options() -> JobOptions {
    JobOptions {
        exclude: vec!["**/*.tmp".into()],
        fail_on_file_errors: false,
        one_file_system: true,
        ..JobOptions::default()
    }
}

/// A finished backup and what it reported.
struct Snapshot {
    run_id: Uuid,
    summary: BackupSummary,
    recorder: Recorder,
}

impl Snapshot {
    fn as_parent(&self) -> Option<ParentSnapshot> {
        Some(ParentSnapshot {
            run_id: self.run_id,
            manifest_key: self.summary.manifest_key.clone(),
        })
    }
}

fn backup_plan(
    store: &Arc<Store>,
    source: &Path,
    options: JobOptions,
    parent: Option<ParentSnapshot>,
) -> BackupPlan {
    BackupPlan {
        run_id: Uuid::new_v4(),
        job_id: None,
        lease_token: 1,
        source: source.to_path_buf(),
        options,
        store: Arc::clone(store),
        repository: RepositoryAccess::v1(REPOSITORY_KEY.to_vec()),
        parent,
        access: None,
        commands: Default::default(),
    }
}

async fn backup(store: &Arc<Store>, source: &Path, parent: Option<ParentSnapshot>) -> Snapshot {
    let plan = backup_plan(store, source, options(), parent);
    let run_id = plan.run_id;
    let recorder = Recorder::default();
    let summary = run_backup(plan, &recorder, CancellationToken::new())
        .await
        .expect("backup succeeds");
    recorder.assert_batches_well_formed(summary.batch_count);
    Snapshot {
        run_id,
        summary,
        recorder,
    }
}

fn restore_plan(store: &Arc<Store>, manifest_key: &str, destination: &Path) -> RestorePlan {
    RestorePlan {
        run_id: Uuid::new_v4(),
        lease_token: 1,
        store: Arc::clone(store),
        repository: RepositoryAccess::v1(Vec::new()),
        manifest_key: manifest_key.to_owned(),
        paths: Vec::new(),
        destination: destination.to_path_buf(),
        overwrite_newer: false,
        access: None,
    }
}

async fn try_restore(plan: RestorePlan) -> (Result<RestoreSummary, RunFailure>, Recorder) {
    let recorder = Recorder::default();
    let result = run_restore(plan, &recorder, CancellationToken::new()).await;
    (result, recorder)
}

async fn restore(store: &Arc<Store>, manifest_key: &str, destination: &Path) -> RestoreSummary {
    let (result, recorder) = try_restore(restore_plan(store, manifest_key, destination)).await;
    let summary = result.expect("restore succeeds");
    assert!(recorder.errors().is_empty(), "{:?}", recorder.errors());
    summary
}

async fn verify(
    store: &Arc<Store>,
    manifest_key: &str,
    read_data_percent: f64,
) -> (Result<VerifySummary, RunFailure>, Recorder) {
    let recorder = Recorder::default();
    let plan = VerifyPlan {
        run_id: Uuid::new_v4(),
        lease_token: 1,
        store: Arc::clone(store),
        repository: RepositoryAccess::v1(Vec::new()),
        manifest_key: manifest_key.to_owned(),
        read_data_percent,
    };
    let result = run_verify(plan, &recorder, CancellationToken::new()).await;
    (result, recorder)
}

// ---------------------------------------------------------------------------
// Round trips

/// Backs up the awkward tree to `store`, restores it to a new directory and
/// compares every path: kind, bytes, mode, mtime, owner, link target.
async fn assert_round_trip(store: &Arc<Store>) {
    let source = tempfile::tempdir().expect("temp dir");
    let expected_paths = build_tree(source.path());
    let snapshot = backup(store, source.path(), None).await;

    let summary = &snapshot.summary;
    assert_eq!(summary.parent_run_id, None);
    assert_eq!(summary.file_count, expected_paths.len() as i64);
    assert_eq!(summary.files_read, 9, "every regular file is read");
    assert!(summary.bytes_uploaded > 18 * MIB as u64);
    assert_eq!(
        snapshot_keys(store).await,
        std::slice::from_ref(&summary.manifest_key)
    );
    let records = snapshot.recorder.files();
    let recorded: BTreeSet<Vec<u8>> = records.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        lossy(recorded.iter()),
        lossy(expected_paths.iter()),
        "a full backup reports every entry"
    );
    assert!(snapshot.recorder.errors().is_empty());
    for record in &records {
        let expected_kind = match describe(&source.path().join(OsStr::from_bytes(&record.path))) {
            Node::File { .. } => "regular",
            Node::Directory { .. } => "directory",
            Node::Symlink { .. } => "symlink",
            Node::Other => "other",
        };
        assert_eq!(record.kind, expected_kind);
    }
    let private = records
        .iter()
        .find(|r| r.path == b"private.txt")
        .expect("private.txt is recorded");
    assert_eq!(private.mode, 0o600);
    assert_eq!(private.size_bytes, 7);
    let progress = snapshot.recorder.last_progress();
    // Every entry the walk found is done, the socket included (skipped).
    assert_eq!(progress.files_done, progress.files_seen);
    assert_eq!(progress.files_done, expected_paths.len() as i64 + 1);

    let destination = tempfile::tempdir().expect("temp dir");
    let restored = restore(store, &summary.manifest_key, destination.path()).await;
    assert_eq!(restored.files, 9);

    let mut expected = describe_tree(source.path());
    expected.remove(&b"skip.tmp"[..]);
    expected.remove(&b"app.sock"[..]);
    assert_eq!(expected.len(), expected_paths.len());
    assert_same_tree(&describe_tree(destination.path()), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_snapshot_restores_every_path_with_bytes_modes_times_and_links() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    assert_round_trip(&store).await;
    assert!(
        store
            .list(PACKS_PREFIX, &CancellationToken::new())
            .await
            .expect("list packs")
            .len()
            >= 2,
        "18 MiB of new data fill more than one 16 MiB pack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_snapshot_restores_every_path_with_bytes_modes_times_and_links() {
    let store = garage_store("backups/repo").await;
    assert_round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_three_gib_file_round_trips_and_stays_sparse() {
    const LEN: u64 = 3 << 30;
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    let path = source.path().join("disk.img");
    let file = File::create(&path).expect("create sparse file");
    file.set_len(LEN).expect("set length");
    file.write_all_at(&pattern(2 * MIB, 3), (1 << 30) + 12_345)
        .expect("write data");
    file.write_all_at(&pattern(MIB, 4), LEN - MIB as u64 - 7)
        .expect("write data");
    drop(file);
    let source_allocated = fs::metadata(&path).expect("stat").blocks() * 512;
    assert!(
        source_allocated < 64 * MIB as u64,
        "the temporary filesystem does not keep files sparse ({source_allocated} bytes allocated)"
    );

    let store = filesystem_store(repo.path()).await;
    let snapshot = backup(&store, source.path(), None).await;
    assert_eq!(snapshot.summary.size_bytes, LEN as i64);
    assert!(
        snapshot.summary.bytes_uploaded < 32 * MIB as u64,
        "runs of zeros are stored once, compressed: {} bytes uploaded",
        snapshot.summary.bytes_uploaded
    );

    let destination = tempfile::tempdir().expect("temp dir");
    restore(&store, &snapshot.summary.manifest_key, destination.path()).await;
    let restored = destination.path().join("disk.img");
    assert_eq!(hash_file(&restored), hash_file(&path), "the bytes differ");
    let allocated = fs::metadata(&restored).expect("stat").blocks() * 512;
    assert!(
        allocated < 64 * MIB as u64,
        "the restored file is not sparse: {allocated} bytes allocated for {LEN}"
    );
}

// ---------------------------------------------------------------------------
// Deduplication and incrementals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_stored_once_across_files_and_backups() {
    const LEN: usize = 20 * MIB;
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let content = pattern(LEN, 5);
    let first_source = tempfile::tempdir().expect("temp dir");
    write(first_source.path(), b"a.bin", &content);
    write(first_source.path(), b"copy/b.bin", &content);

    let first = backup(&store, first_source.path(), None).await;
    let after_first = pack_bytes(&store, repo.path()).await;
    assert!(
        (LEN as u64..LEN as u64 + MIB as u64).contains(&after_first),
        "two identical 20 MiB files take {after_first} bytes of packs"
    );
    assert!(first.summary.bytes_uploaded < (LEN + 2 * MIB) as u64);

    // Another source with the same content under other names.
    let second_source = tempfile::tempdir().expect("temp dir");
    write(second_source.path(), b"elsewhere/c.bin", &content);
    let second = backup(&store, second_source.path(), None).await;
    let growth = pack_bytes(&store, repo.path()).await - after_first;
    assert_eq!(growth, 0, "known content adds no pack bytes");
    assert!(
        second.summary.bytes_uploaded < 64 * 1024,
        "only an index and a manifest are uploaded: {} bytes",
        second.summary.bytes_uploaded
    );
    assert_eq!(
        second.summary.files_read, 1,
        "without a parent the file is read"
    );

    let destination = tempfile::tempdir().expect("temp dir");
    restore(&store, &second.summary.manifest_key, destination.path()).await;
    assert!(fs::read(destination.path().join("elsewhere/c.bin")).expect("restored") == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_reads_and_reports_only_changes_and_both_snapshots_restore() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    let root = source.path();
    write(root, b"data/changed.txt", b"version one\n");
    write(root, b"data/sneaky.txt", b"version one\n");
    write(root, b"data/unchanged.bin", &pattern(3 * MIB, 6));
    write(root, b"gone.txt", b"soon deleted\n");
    for i in 0..5 {
        write(
            root,
            format!("keep/{i}.txt").as_bytes(),
            format!("keep {i}\n").as_bytes(),
        );
    }
    let first = backup(&store, root, None).await;
    assert_eq!(first.summary.files_read, 9);
    let old_tree = describe_tree(root);

    // Same size, new mtime.
    write(root, b"data/changed.txt", b"version two\n");
    set_mtime(
        &root.join("data/changed.txt"),
        SystemTime::now() + Duration::from_secs(60),
    );
    // Same size and the old mtime: only the status-change time tells.
    let sneaky = root.join("data/sneaky.txt");
    let sneaky_mtime = mtime_of(&sneaky);
    write(root, b"data/sneaky.txt", b"version 2!!\n");
    set_mtime(&sneaky, sneaky_mtime);
    write(root, b"new.txt", b"brand new\n");
    fs::remove_file(root.join("gone.txt")).expect("delete");

    let second = backup(&store, root, first.as_parent()).await;
    assert_eq!(second.summary.parent_run_id, Some(first.run_id));
    assert_eq!(
        second.summary.files_read, 3,
        "only the changed and new files are read: {}",
        second.summary.details
    );
    let records: BTreeMap<String, String> = second
        .recorder
        .files()
        .into_iter()
        .map(|r| (String::from_utf8_lossy(&r.path).into_owned(), r.kind))
        .collect();
    let expected: BTreeMap<String, String> = [
        ("data/changed.txt", "regular"),
        ("data/sneaky.txt", "regular"),
        ("gone.txt", "deleted"),
        ("new.txt", "regular"),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_owned(), k.to_owned()))
    .collect();
    assert_eq!(records, expected);
    assert_eq!(
        second.summary.file_count, 11,
        "the snapshot itself is complete"
    );

    let new_restore = tempfile::tempdir().expect("temp dir");
    restore(&store, &second.summary.manifest_key, new_restore.path()).await;
    assert_same_tree(&describe_tree(new_restore.path()), &describe_tree(root));
    let old_restore = tempfile::tempdir().expect("temp dir");
    restore(&store, &first.summary.manifest_key, old_restore.path()).await;
    assert_same_tree(&describe_tree(old_restore.path()), &old_tree);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_inserted_mid_file_upload_only_the_chunks_around_them() {
    const LEN: usize = 30 * MIB;
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    let mut content = pattern(LEN, 7);
    write(source.path(), b"log.bin", &content);
    let first = backup(&store, source.path(), None).await;
    assert!(first.summary.bytes_uploaded >= LEN as u64);

    let inserted = pattern(1000, 8);
    content.splice(LEN / 2..LEN / 2, inserted);
    write(source.path(), b"log.bin", &content);
    let second = backup(&store, source.path(), first.as_parent()).await;
    assert_eq!(second.summary.files_read, 1);
    assert!(
        second.summary.bytes_uploaded < LEN as u64 / 4,
        "1000 bytes inserted into {LEN} uploaded {} bytes",
        second.summary.bytes_uploaded
    );

    let destination = tempfile::tempdir().expect("temp dir");
    restore(&store, &second.summary.manifest_key, destination.path()).await;
    assert!(fs::read(destination.path().join("log.bin")).expect("restored") == content);
}

// ---------------------------------------------------------------------------
// Damage

/// Distinct random files, `len` bytes each.
fn write_distinct_files(root: &Path, count: u64, len: usize) -> BTreeMap<String, Vec<u8>> {
    write_seeded_files(root, count, len, 100)
}

/// Random files, `len` bytes each, distinct from those of any other `seed`
/// more than `count` away.
fn write_seeded_files(root: &Path, count: u64, len: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    (0..count)
        .map(|i| {
            let name = format!("file{i}.bin");
            let content = pattern(len, seed + i);
            write(root, name.as_bytes(), &content);
            (name, content)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_pack_is_found_by_verify_and_never_restored() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    let contents = write_distinct_files(source.path(), 4, 3 * MIB);
    let snapshot = backup(&store, source.path(), None).await;
    let manifest_key = &snapshot.summary.manifest_key;
    let (result, _) = verify(&store, manifest_key, 100.0).await;
    result.expect("an intact snapshot verifies");

    let packs = store
        .list(PACKS_PREFIX, &CancellationToken::new())
        .await
        .expect("list packs");
    let pack_path = repo.path().join(&packs[0]);
    let mut pack = fs::read(&pack_path).expect("read pack");
    let entries = read_pack_entries(&pack).expect("pack is intact");
    // Offset 100 lies in the first blob (blobs start at 8, chunks are
    // hundreds of KiB).
    let first = entries.first().expect("the pack holds chunks");
    assert!(first.offset <= 100 && 100 < first.offset + first.length);
    let damaged = files_holding(&store, manifest_key, &BTreeSet::from([first.chunk_id])).await;
    assert!(!damaged.is_empty());
    pack[100] ^= 0x5a;
    fs::write(&pack_path, &pack).expect("write damaged pack");

    let (result, recorder) = verify(&store, manifest_key, 100.0).await;
    let failure = result.expect_err("verify finds the damage");
    assert!(!failure.retryable, "{failure}");
    assert_eq!(recorder.error_paths(), damaged);
    for error in recorder.errors() {
        assert!(error.message.contains("corrupt"), "{}", error.message);
    }

    let destination = tempfile::tempdir().expect("temp dir");
    let (result, recorder) =
        try_restore(restore_plan(&store, manifest_key, destination.path())).await;
    let failure = result.expect_err("restoring damaged data fails");
    assert!(!failure.retryable, "{failure}");
    assert_eq!(recorder.error_paths(), damaged);
    for error in recorder.errors() {
        assert!(error.message.contains("damaged"), "{}", error.message);
    }
    for (name, content) in &contents {
        let restored = destination.path().join(name);
        if damaged.contains(name) {
            assert!(!restored.exists(), "damaged {name} was written");
        } else {
            assert!(fs::read(&restored).expect("intact file restored") == *content);
        }
    }
    assert_no_temporary_files(destination.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pack_is_found_by_an_existence_only_verify() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    // 24 MiB of new data: two packs.
    write_distinct_files(source.path(), 4, 6 * MIB);
    let snapshot = backup(&store, source.path(), None).await;
    let manifest_key = &snapshot.summary.manifest_key;
    let (result, _) = verify(&store, manifest_key, 0.0).await;
    result.expect("an intact snapshot verifies");

    let cancel = CancellationToken::new();
    let packs = store.list(PACKS_PREFIX, &cancel).await.expect("list packs");
    assert_eq!(packs.len(), 2, "{packs:?}");
    let pack = store
        .get_bytes(&packs[0], &cancel)
        .await
        .expect("read pack");
    let lost: BTreeSet<ChunkId> = read_pack_entries(&pack)
        .expect("pack is intact")
        .into_iter()
        .map(|e| e.chunk_id)
        .collect();
    let damaged = files_holding(&store, manifest_key, &lost).await;
    // Files are read in parallel, so a pack may hold chunks of every file.
    assert!(!damaged.is_empty(), "{damaged:?}");
    store.delete(&packs[0], &cancel).await.expect("delete pack");

    let (result, recorder) = verify(&store, manifest_key, 0.0).await;
    let failure = result.expect_err("verify finds the missing pack");
    assert!(!failure.retryable, "{failure}");
    assert_eq!(recorder.error_paths(), damaged);
    for error in recorder.errors() {
        assert!(error.message.contains("missing"), "{}", error.message);
    }
    assert_eq!(
        recorder.last_progress().bytes_done,
        0,
        "no pack is downloaded at 0%"
    );
}

// ---------------------------------------------------------------------------
// Restore choices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtree_restore_writes_only_that_subtree() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    write(source.path(), b"docs/a.txt", b"a\n");
    write(source.path(), b"docs/sub/b.txt", b"b\n");
    write(source.path(), b"docs2/c.txt", b"c\n");
    write(source.path(), b"other.txt", b"other\n");
    let snapshot = backup(&store, source.path(), None).await;

    let destination = tempfile::tempdir().expect("temp dir");
    let mut plan = restore_plan(&store, &snapshot.summary.manifest_key, destination.path());
    plan.paths = vec!["docs".into()];
    let (result, recorder) = try_restore(plan).await;
    let summary = result.expect("restore succeeds");
    assert!(recorder.errors().is_empty());
    assert_eq!(summary.files, 2);

    let mut expected = describe_tree(source.path());
    expected.retain(|path, _| path.starts_with(b"docs/") || path == b"docs");
    assert_same_tree(&describe_tree(destination.path()), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_keeps_a_newer_file_unless_overwrite_newer() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    write(source.path(), b"newer.txt", b"from the snapshot\n");
    write(source.path(), b"older.txt", b"from the snapshot\n");
    let snapshot = backup(&store, source.path(), None).await;
    let manifest_key = &snapshot.summary.manifest_key;

    let destination = tempfile::tempdir().expect("temp dir");
    let newer = destination.path().join("newer.txt");
    let older = destination.path().join("older.txt");
    fs::write(&newer, b"edited after the backup\n").expect("write");
    set_mtime(&newer, SystemTime::now() + Duration::from_secs(3600));
    fs::write(&older, b"stale\n").expect("write");
    set_mtime(&older, UNIX_EPOCH + Duration::from_secs(1_000_000));

    let (result, recorder) =
        try_restore(restore_plan(&store, manifest_key, destination.path())).await;
    result.expect("keeping a newer file is not a failure");
    assert_eq!(
        fs::read(&newer).expect("read"),
        b"edited after the backup\n"
    );
    assert_eq!(fs::read(&older).expect("read"), b"from the snapshot\n");
    let errors = recorder.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "newer.txt");
    assert!(errors[0].message.contains("kept"), "{}", errors[0].message);

    let mut plan = restore_plan(&store, manifest_key, destination.path());
    plan.overwrite_newer = true;
    let (result, recorder) = try_restore(plan).await;
    result.expect("restore succeeds");
    assert!(recorder.errors().is_empty());
    assert_same_tree(
        &describe_tree(destination.path()),
        &describe_tree(source.path()),
    );
}

// ---------------------------------------------------------------------------
// Failures, cancellation, batches

#[tokio::test]
async fn missing_source_fails_without_retry() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let failure = run_backup(
        backup_plan(&store, &repo.path().join("no-such-source"), options(), None),
        &Recorder::default(),
        CancellationToken::new(),
    )
    .await
    .expect_err("missing source fails");
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("does not exist"),
        "{}",
        failure.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_backup_stops_and_writes_no_manifest() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    for i in 0..3000 {
        write(
            source.path(),
            format!("f{i:05}").as_bytes(),
            i.to_string().as_bytes(),
        );
    }
    let store = filesystem_store(repo.path()).await;
    let cancel = CancellationToken::new();
    let recorder = Recorder {
        cancel_on_first_batch: Some(cancel.clone()),
        ..Recorder::default()
    };
    let failure = run_backup(
        backup_plan(&store, source.path(), options(), None),
        &recorder,
        cancel,
    )
    .await
    .expect_err("cancelled backup fails");
    assert_eq!(failure, RunFailure::cancelled());
    assert_eq!(
        recorder.batches().len(),
        1,
        "nothing is reported after cancellation"
    );
    let manifests = snapshot_keys(&store).await;
    assert!(
        manifests.is_empty(),
        "no manifest after cancellation: {manifests:?}"
    );
}

/// Makes `root/<255 × d>/x…/x…` a chain of directories whose deepest levels
/// have absolute paths longer than PATH_MAX, so that `lstat` fails for them
/// with ENAMETOOLONG whatever the permissions (root included). Returns the
/// relative path of the first entry that cannot be read.
fn build_unreadable_entry(root: &Path) -> String {
    const PATH_MAX: usize = 4096;
    let component = "x".repeat(200);
    let short_top = root.join("d");
    let mut deepest = short_top.clone();
    while deepest.as_os_str().len() + 1 + component.len() < PATH_MAX - 10 {
        deepest.push(&component);
    }
    fs::create_dir_all(&deepest).expect("create deep directories");
    // Lengthen the top after the fact: every path is created while short.
    let long_top = "d".repeat(255);
    fs::rename(&short_top, root.join(&long_top)).expect("rename top");
    let mut rel = long_top;
    while root.as_os_str().len() + 1 + rel.len() < PATH_MAX {
        rel.push('/');
        rel.push_str(&component);
    }
    rel
}

#[tokio::test]
async fn unreadable_entry_is_reported_and_skipped() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    write(source.path(), b"fine.txt", b"fine\n");
    let unreadable = build_unreadable_entry(source.path());
    let store = filesystem_store(repo.path()).await;
    let snapshot = backup(&store, source.path(), None).await;
    let errors = snapshot.recorder.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, unreadable);
    assert!(
        errors[0].message.contains("cannot stat"),
        "{}",
        errors[0].message
    );
    assert_eq!(snapshot.recorder.last_progress().error_count, 1);
    assert_eq!(
        snapshot_keys(&store).await,
        std::slice::from_ref(&snapshot.summary.manifest_key)
    );
}

#[tokio::test]
async fn fail_on_file_errors_turns_an_unreadable_entry_into_a_failed_run() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    write(source.path(), b"fine.txt", b"fine\n");
    let unreadable = build_unreadable_entry(source.path());
    let store = filesystem_store(repo.path()).await;
    let mut options = options();
    options.fail_on_file_errors = true;
    let recorder = Recorder::default();
    let failure = run_backup(
        backup_plan(&store, source.path(), options, None),
        &recorder,
        CancellationToken::new(),
    )
    .await
    .expect_err("a file error fails the run");
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("fail_on_file_errors"),
        "{}",
        failure.message
    );
    assert_eq!(
        recorder.error_paths(),
        BTreeSet::from([unreadable]),
        "the failure's cause is reported"
    );
    assert!(
        snapshot_keys(&store).await.is_empty(),
        "a failed run writes no manifest"
    );
}

#[tokio::test]
async fn records_arrive_in_numbered_batches_of_at_most_a_thousand() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    for i in 0..2500 {
        write(source.path(), format!("f{i:05}").as_bytes(), &[]);
    }
    let store = filesystem_store(repo.path()).await;
    let snapshot = backup(&store, source.path(), None).await;
    let batches = snapshot.recorder.batches();
    let sizes: Vec<usize> = batches.iter().map(|b| b.files.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    let sequences: Vec<i64> = batches.iter().map(|b| b.sequence).collect();
    assert_eq!(sequences, [0, 1, 2]);
    assert_eq!(snapshot.summary.batch_count, 3);
    let paths: BTreeSet<Vec<u8>> = snapshot
        .recorder
        .files()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(paths.len(), 2500);
    assert!(
        store
            .list(PACKS_PREFIX, &CancellationToken::new())
            .await
            .expect("list")
            .is_empty(),
        "empty files have no chunks"
    );
}

// ---------------------------------------------------------------------------
// Stores

#[tokio::test]
async fn filesystem_store_round_trips_lists_and_deletes() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let cancel = CancellationToken::new();
    store
        .put_bytes("x/one", b"1".to_vec(), &cancel)
        .await
        .expect("put");
    store
        .put_bytes("x/two", b"22".to_vec(), &cancel)
        .await
        .expect("put");
    store
        .put_bytes("y", b"3".to_vec(), &cancel)
        .await
        .expect("put");
    assert_eq!(store.get_bytes("x/two", &cancel).await.expect("get"), b"22");
    assert_eq!(
        store
            .get_range("x/two", 1, 5, &cancel)
            .await
            .expect("range"),
        b"2"
    );
    assert_eq!(
        store.list("x/", &cancel).await.expect("list"),
        ["x/one", "x/two"]
    );
    assert_eq!(store.list("", &cancel).await.expect("list").len(), 3);
    assert!(store.exists("y", &cancel).await.expect("exists"));
    store.delete("y", &cancel).await.expect("delete");
    store
        .delete("y", &cancel)
        .await
        .expect("deleting twice is fine");
    assert!(!store.exists("y", &cancel).await.expect("exists"));
    assert!(matches!(
        store.get_bytes("y", &cancel).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.put_bytes("../escape", vec![], &cancel).await,
        Err(StoreError::InvalidKey { .. })
    ));
    // No temporary files are left behind.
    let leftovers: Vec<_> = fs::read_dir(repo.path().join("x"))
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test]
async fn s3_store_lists_checks_and_deletes_under_its_prefix() {
    let store = garage_store("p").await;
    let cancel = CancellationToken::new();
    for key in ["a/1", "a/2", "b"] {
        store
            .put_bytes(key, key.as_bytes().to_vec(), &cancel)
            .await
            .expect("put");
    }
    assert_eq!(
        store.list("a/", &cancel).await.expect("list"),
        ["a/1", "a/2"]
    );
    assert_eq!(
        store.list("", &cancel).await.expect("list"),
        ["a/1", "a/2", "b"]
    );
    assert_eq!(store.get_bytes("a/2", &cancel).await.expect("get"), b"a/2");
    assert_eq!(
        store.get_range("a/2", 1, 10, &cancel).await.expect("range"),
        b"/2"
    );
    assert!(store.exists("b", &cancel).await.expect("exists"));
    store.delete("b", &cancel).await.expect("delete");
    assert!(!store.exists("b", &cancel).await.expect("exists"));
    assert!(matches!(
        store.get_bytes("b", &cancel).await,
        Err(StoreError::NotFound { .. })
    ));
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(matches!(
        store.exists("a/1", &cancelled).await,
        Err(StoreError::Cancelled)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_multipart_upload_is_aborted() {
    let store = garage_store("abort").await;
    let Store::S3(s3) = store.as_ref() else {
        panic!("garage_store opens an S3 store");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big.bin");
    fs::write(&big, pattern(100 * MIB, 3)).expect("write big file");
    let cancel = CancellationToken::new();
    let upload = store.put_file("packs/big", &big, &cancel);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(upload, canceller);
    assert!(matches!(result, Err(StoreError::Cancelled)), "{result:?}");
    let pending = s3
        .pending_multipart_uploads(&CancellationToken::new())
        .await
        .expect("list multipart uploads");
    assert!(pending.is_empty(), "upload left behind: {pending:?}");
    assert!(!store
        .exists("packs/big", &CancellationToken::new())
        .await
        .expect("exists"));
}

// ---------------------------------------------------------------------------
// Garbage collection

/// Bytes of every pack in the repository, as the store lists them.
async fn stored_pack_bytes(store: &Store) -> u64 {
    store
        .list_with_sizes(PACKS_PREFIX, &CancellationToken::new())
        .await
        .expect("list packs")
        .iter()
        .map(|(_, size)| size)
        .sum()
}

fn gc_plan(store: &Arc<Store>, oldest_in_flight: Option<chrono::DateTime<chrono::Utc>>) -> GcPlan {
    GcPlan {
        run_id: Uuid::now_v7(),
        lease_token: 1,
        store: Arc::clone(store),
        repository: RepositoryAccess::v1(Vec::new()),
        grace: Duration::ZERO,
        repack_threshold_percent: 50.0,
        oldest_in_flight,
        lock_kept: Default::default(),
    }
}

async fn collect_garbage(plan: GcPlan) -> GcSummary {
    let recorder = Recorder::default();
    let summary = run_gc(plan, &recorder, CancellationToken::new())
        .await
        .expect("garbage collection succeeds");
    assert!(recorder.errors().is_empty(), "{:?}", recorder.errors());
    summary
}

/// Deletes a snapshot's manifest, as a retention run does.
async fn forget(store: &Store, snapshot: &Snapshot) {
    store
        .delete(&snapshot.summary.manifest_key, &CancellationToken::new())
        .await
        .expect("delete manifest");
}

/// Restores `snapshot` and checks it against the tree in `source`, then
/// verifies every byte of it in storage.
async fn assert_restores(store: &Arc<Store>, snapshot: &Snapshot, source: &Path) {
    let destination = tempfile::tempdir().expect("temp dir");
    restore(store, &snapshot.summary.manifest_key, destination.path()).await;
    assert_same_tree(&describe_tree(destination.path()), &describe_tree(source));
    let (verified, recorder) = verify(store, &snapshot.summary.manifest_key, 100.0).await;
    verified.expect("the snapshot verifies");
    assert!(recorder.errors().is_empty(), "{:?}", recorder.errors());
}

/// Two snapshots of unrelated trees; the first is forgotten; two
/// collections later only the second's data is left, and it restores.
async fn assert_collection_reclaims_a_forgotten_snapshot(store: &Arc<Store>) {
    let old = tempfile::tempdir().expect("temp dir");
    write_seeded_files(old.path(), 6, 2 * MIB, 1000);
    let kept = tempfile::tempdir().expect("temp dir");
    write_seeded_files(kept.path(), 3, 2 * MIB, 2000);
    let old_snapshot = backup(store, old.path(), None).await;
    let before_kept = stored_pack_bytes(store).await;
    let kept_snapshot = backup(store, kept.path(), None).await;
    let with_both = stored_pack_bytes(store).await;
    forget(store, &old_snapshot).await;

    // Phase one only condemns.
    let first = collect_garbage(gc_plan(store, None)).await;
    assert_eq!(first.packs_deleted, 0);
    assert!(first.packs_condemned > 0, "{first:?}");
    assert_eq!(first.bytes_condemned, before_kept, "{first:?}");
    assert_eq!(stored_pack_bytes(store).await, with_both);
    assert_restores(store, &kept_snapshot, kept.path()).await;

    // Phase two deletes, and storage shrinks to what the kept snapshot needs.
    let second = collect_garbage(gc_plan(store, None)).await;
    assert_eq!(second.bytes_reclaimed, before_kept, "{second:?}");
    assert_eq!(second.packs_rescued, 0);
    assert_eq!(stored_pack_bytes(store).await, with_both - before_kept);
    assert_restores(store, &kept_snapshot, kept.path()).await;

    // The forgotten data can be backed up again: it is stored anew.
    let again = backup(store, old.path(), None).await;
    assert!(again.summary.bytes_uploaded >= 12 * MIB as u64);
    assert_restores(store, &again, old.path()).await;
    // Nothing is garbage now.
    let third = collect_garbage(gc_plan(store, None)).await;
    assert_eq!(
        (third.packs_condemned, third.packs_deleted),
        (0, 0),
        "{third:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_collection_reclaims_the_data_of_a_forgotten_snapshot_in_two_phases() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    assert_collection_reclaims_a_forgotten_snapshot(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_collection_reclaims_the_data_of_a_forgotten_snapshot_in_two_phases() {
    let store = garage_store("gc").await;
    assert_collection_reclaims_a_forgotten_snapshot(&store).await;
}

/// Holds a backup after its first batch (its chunks already deduplicated
/// against the index it loaded) until released.
struct PausingRecorder {
    inner: Recorder,
    paused: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Reporter for PausingRecorder {
    fn progress(&self, progress: &RunProgress) {
        self.inner.progress(progress);
    }

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        let first = batch.sequence == 0;
        self.inner.batch(batch).await?;
        if first {
            self.paused.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_racing_a_backup_keeps_every_chunk_the_backup_relies_on() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    write_distinct_files(source.path(), 4, 3 * MIB);
    let old = backup(&store, source.path(), None).await;

    // A second backup of the same data loads the index, finds every chunk
    // stored, and is held before it writes its manifest.
    let recorder = Arc::new(PausingRecorder {
        inner: Recorder::default(),
        paused: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
    });
    let plan = backup_plan(&store, source.path(), options(), None);
    let started = chrono::Utc::now();
    let racing = tokio::spawn({
        let recorder = Arc::clone(&recorder);
        async move { run_backup(plan, &*recorder, CancellationToken::new()).await }
    });
    recorder.paused.notified().await;

    // Meanwhile the only snapshot holding those chunks is forgotten and
    // collected twice, the second time with the backup reported in flight.
    forget(&store, &old).await;
    let marked = collect_garbage(gc_plan(&store, None)).await;
    assert!(marked.packs_condemned > 0);
    let waiting = collect_garbage(gc_plan(&store, Some(started))).await;
    assert_eq!(
        waiting.packs_deleted, 0,
        "a run in flight holds the sweep back"
    );
    assert_eq!(waiting.bytes_waiting, marked.bytes_condemned);

    recorder.release.notify_one();
    let summary = racing.await.expect("backup task").expect("backup succeeds");
    let packs = store
        .list(PACKS_PREFIX, &CancellationToken::new())
        .await
        .expect("list packs");
    assert_eq!(packs.len(), 1, "every chunk was deduplicated");
    let snapshot = Snapshot {
        run_id: Uuid::new_v4(),
        summary,
        recorder: Recorder::default(),
    };

    // Now the sweep may run: it finds the new snapshot needs the condemned
    // packs and keeps them.
    let swept = collect_garbage(gc_plan(&store, None)).await;
    assert_eq!(swept.packs_deleted, 0, "{swept:?}");
    assert_eq!(swept.packs_rescued, marked.packs_condemned);
    assert_restores(&store, &snapshot, source.path()).await;
    // And they are live again: nothing more is condemned.
    let after = collect_garbage(gc_plan(&store, None)).await;
    assert_eq!(after.packs_condemned, 0, "{after:?}");
    assert_restores(&store, &snapshot, source.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_killed_midway_and_rerun_leaves_a_consistent_repository() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let old = tempfile::tempdir().expect("temp dir");
    // Enough data for several packs, so a sweep can stop between them.
    write_seeded_files(old.path(), 12, 4 * MIB, 1000);
    let kept = tempfile::tempdir().expect("temp dir");
    write_seeded_files(kept.path(), 2, MIB, 2000);
    let old_snapshot = backup(&store, old.path(), None).await;
    let kept_snapshot = backup(&store, kept.path(), None).await;
    forget(&store, &old_snapshot).await;
    let marked = collect_garbage(gc_plan(&store, None)).await;
    assert!(marked.packs_condemned >= 3, "{marked:?}");

    // A sweep killed after deleting some of the condemned packs, before it
    // consolidated the index or removed its condemned set.
    let cancel = CancellationToken::new();
    let condemned = Repository::open(
        Arc::clone(&store),
        &RepositoryAccess::v1(Vec::new()),
        &cancel,
    )
    .await
    .expect("repository opens")
    .condemned_sets(&cancel)
    .await
    .expect("condemned sets");
    assert_eq!(condemned.len(), 1);
    for pack in condemned[0].packs.iter().take(2) {
        store
            .delete(&coffer_format::layout::pack_key(&pack.pack_id), &cancel)
            .await
            .expect("delete pack");
    }
    // Backups and restores in that state are sound.
    assert_restores(&store, &kept_snapshot, kept.path()).await;
    let meanwhile = backup(&store, kept.path(), kept_snapshot.as_parent()).await;
    assert_restores(&store, &meanwhile, kept.path()).await;

    // A rerun finishes the job.
    let rerun = collect_garbage(gc_plan(&store, None)).await;
    assert_eq!(rerun.packs_deleted, marked.packs_condemned - 2, "{rerun:?}");
    assert_eq!(rerun.packs_condemned, 0);
    assert!(Repository::open(
        Arc::clone(&store),
        &RepositoryAccess::v1(Vec::new()),
        &cancel
    )
    .await
    .expect("repository opens")
    .condemned_sets(&cancel)
    .await
    .expect("condemned sets")
    .is_empty());
    assert_restores(&store, &kept_snapshot, kept.path()).await;
    assert_restores(&store, &meanwhile, kept.path()).await;
    // The forgotten data is stored afresh when backed up again.
    let again = backup(&store, old.path(), None).await;
    assert_restores(&store, &again, old.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mostly_garbage_pack_is_repacked_and_its_space_given_back() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    // Forty small files share one pack; a later snapshot keeps ten of them.
    let all = tempfile::tempdir().expect("temp dir");
    let contents = write_distinct_files(all.path(), 40, 100_000);
    let some = tempfile::tempdir().expect("temp dir");
    for (name, content) in contents.iter().take(10) {
        write(some.path(), name.as_bytes(), content);
    }
    let all_snapshot = backup(&store, all.path(), None).await;
    let kept_snapshot = backup(&store, some.path(), None).await;
    let before = stored_pack_bytes(&store).await;
    forget(&store, &all_snapshot).await;

    let marked = collect_garbage(gc_plan(&store, None)).await;
    assert_eq!(marked.packs_repacked, 1, "{marked:?}");
    assert!(marked.bytes_repacked > 900_000 && marked.bytes_repacked < 1_100_000);
    assert_restores(&store, &kept_snapshot, some.path()).await;
    let swept = collect_garbage(gc_plan(&store, None)).await;
    assert_eq!(swept.bytes_reclaimed, before);
    let after = stored_pack_bytes(&store).await;
    assert!(after < before / 3, "{after} of {before} bytes left");
    assert_restores(&store, &kept_snapshot, some.path()).await;
}

/// Lowers this test process's limit on open files (nextest runs every test
/// in a process of its own, so no other test is affected).
fn limit_open_files(limit: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: current.maximum,
        },
    )
    .expect("lower RLIMIT_NOFILE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_many_files_sharing_chunks_holds_few_files_open() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let source = tempfile::tempdir().expect("temp dir");
    // 3,000 files over 4 contents: every pack names far more files than the
    // limit below allows to be open at once.
    for i in 0..3000u64 {
        let content = pattern(3000, i % 4);
        write(
            source.path(),
            format!("d{:02}/f{i:05}", i % 30).as_bytes(),
            &content,
        );
    }
    let snapshot = backup(&store, source.path(), None).await;

    limit_open_files(256);
    let destination = tempfile::tempdir().expect("temp dir");
    let (result, recorder) = try_restore(restore_plan(
        &store,
        &snapshot.summary.manifest_key,
        destination.path(),
    ))
    .await;
    let summary = result.expect("restore succeeds under a low descriptor limit");
    assert!(recorder.errors().is_empty(), "{:?}", recorder.errors());
    assert_eq!(summary.files, 3000);
    assert_same_tree(
        &describe_tree(destination.path()),
        &describe_tree(source.path()),
    );
}
