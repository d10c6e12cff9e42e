//! Backups against real stores: a filesystem repository in a temporary
//! directory, and an S3 repository on the Garage server that the test command
//! starts (`eval "$(scripts/start-garage.sh)"` sets COFFER_TEST_S3_*).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_proto::v1::{JobOptions, ResolvedBucket, ResolvedTarget, RunProgress};
use coffer_worker::backup::{
    run_backup, BackupFailure, BackupPlan, BackupSummary, Manifest, RecordBatch, ReportError,
    Reporter, MAX_BATCH_RECORDS,
};
use coffer_worker::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Collects everything a backup reports.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<RecordBatch>>,
    last_progress: Mutex<Option<RunProgress>>,
    /// Cancelled when the first batch arrives, if set.
    cancel_on_first_batch: Option<CancellationToken>,
}

impl Reporter for Recorder {
    fn progress(&self, progress: &RunProgress) {
        *self.last_progress.lock().expect("progress lock") = Some(progress.clone());
    }

    async fn batch(&self, batch: RecordBatch) -> Result<(), ReportError> {
        self.batches.lock().expect("batches lock").push(batch);
        if let Some(cancel) = &self.cancel_on_first_batch {
            cancel.cancel();
        }
        Ok(())
    }
}

impl Recorder {
    fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("batches lock").clone()
    }

    fn last_progress(&self) -> RunProgress {
        self.last_progress
            .lock()
            .expect("progress lock")
            .clone()
            .expect("progress was reported")
    }
}

/// A source tree with the awkward cases; returns the paths (relative, raw)
/// expected in the snapshot.
struct Fixture {
    root: PathBuf,
    /// Paths that must be in the manifest.
    expected: BTreeSet<Vec<u8>>,
    /// Distinct regular-file contents.
    distinct_contents: usize,
    /// Whether the unreadable file really is unreadable (not when running as root).
    unreadable_enforced: bool,
}

fn write(root: &Path, rel: &[u8], content: &[u8]) {
    let path = root.join(OsStr::from_bytes(rel));
    fs::write(&path, content).expect("write fixture file");
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn build_fixture(root: &Path, big_file_len: usize) -> Fixture {
    for dir in ["a/b/c", "empty-dir"] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    write(root, b"a/empty1", b"");
    write(root, b"a/empty2", b"");
    write(root, b"a/b/c/deep.txt", b"deep content\n");
    let shared = pattern(100_000, 7);
    write(root, b"dup1.bin", &shared);
    write(root, b"a/dup2.bin", &shared);
    write(root, b"caf\xe9-latin1.txt", b"not utf-8 name\n");
    write(root, b"big.bin", &pattern(big_file_len, 42));
    write(root, b"skip.tmp", b"excluded\n");
    std::os::unix::fs::symlink("a/b/c/deep.txt", root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(OsStr::from_bytes(b"../nowhere-\xff"), root.join("dangling"))
        .expect("symlink");
    write(root, b"secret.txt", b"unreadable\n");
    let secret = root.join("secret.txt");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod");
    // Root (or CAP_DAC_OVERRIDE) reads it anyway; then it is just a file.
    let unreadable_enforced = fs::File::open(&secret).is_err();

    let mut expected: BTreeSet<Vec<u8>> = [
        &b"a"[..],
        b"a/b",
        b"a/b/c",
        b"a/b/c/deep.txt",
        b"a/dup2.bin",
        b"a/empty1",
        b"a/empty2",
        b"big.bin",
        b"caf\xe9-latin1.txt",
        b"dangling",
        b"dup1.bin",
        b"empty-dir",
        b"link",
    ]
    .into_iter()
    .map(<[u8]>::to_vec)
    .collect();
    // empty, deep, shared, latin1, big (+ secret when readable)
    let mut distinct_contents = 5;
    if !unreadable_enforced {
        expected.insert(b"secret.txt".to_vec());
        distinct_contents += 1;
    }
    Fixture {
        root: root.to_path_buf(),
        expected,
        distinct_contents,
        unreadable_enforced,
    }
}

fn options() -> JobOptions {
    JobOptions {
        exclude: vec!["**/*.tmp".into()],
        fail_on_file_errors: false,
        one_file_system: true,
    }
}

fn plan(store: &Arc<Store>, source: &Path, options: JobOptions) -> BackupPlan {
    BackupPlan {
        run_id: Uuid::new_v4(),
        lease_token: 1,
        source: source.to_path_buf(),
        options,
        store: Arc::clone(store),
        parent_manifest_key: None,
        staging_dir: None,
    }
}

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

async fn backup(store: &Arc<Store>, source: &Path) -> (BackupSummary, Recorder) {
    let recorder = Recorder::default();
    let summary = run_backup(
        plan(store, source, options()),
        &recorder,
        CancellationToken::new(),
    )
    .await
    .expect("backup succeeds");
    (summary, recorder)
}

async fn read_manifest(store: &Store, key: &str) -> Manifest {
    let bytes = store
        .get_bytes(key, &CancellationToken::new())
        .await
        .expect("manifest exists");
    serde_json::from_slice(&bytes).expect("manifest is valid JSON")
}

/// Checks the snapshot against the source tree byte for byte.
async fn assert_snapshot_matches_source(
    store: &Store,
    fixture: &Fixture,
    summary: &BackupSummary,
    recorder: &Recorder,
) {
    let cancel = CancellationToken::new();
    let manifest = read_manifest(store, &summary.manifest_key).await;
    assert_eq!(manifest.format, "coffer-v0");
    let mut by_path = BTreeMap::new();
    for entry in &manifest.entries {
        by_path.insert(entry.path().expect("path is base64"), entry.clone());
    }
    let paths: BTreeSet<Vec<u8>> = by_path.keys().cloned().collect();
    assert_eq!(paths, fixture.expected, "manifest lists every entry");
    assert_eq!(summary.file_count, fixture.expected.len() as i64);

    for (path, entry) in &by_path {
        let source = fixture.root.join(OsStr::from_bytes(path));
        match entry.kind.as_str() {
            "regular" => {
                let key = entry
                    .storage_key
                    .as_deref()
                    .expect("regular file has a key");
                let stored = store.get_bytes(key, &cancel).await.expect("content object");
                let original = fs::read(&source).expect("read source");
                assert!(
                    stored == original,
                    "{} differs from its content object",
                    source.display()
                );
                assert_eq!(entry.size, original.len() as u64);
                assert_eq!(
                    entry.content_hash.as_deref(),
                    Some(blake3::hash(&original).to_hex().as_str())
                );
            }
            "symlink" => {
                let target = fs::read_link(&source).expect("read link");
                let recorded = entry
                    .symlink_target()
                    .expect("symlink has a target")
                    .expect("target is base64");
                assert_eq!(recorded, target.as_os_str().as_bytes());
            }
            "directory" => assert!(source.is_dir()),
            other => panic!("unexpected kind {other}"),
        }
    }

    let objects = store.list("data/", &cancel).await.expect("list data");
    assert_eq!(
        objects.len(),
        fixture.distinct_contents,
        "identical files are stored once: {objects:?}"
    );

    let batches = recorder.batches();
    assert_eq!(summary.batch_count, batches.len() as i64);
    let sequences: Vec<i64> = batches.iter().map(|b| b.sequence).collect();
    assert_eq!(sequences, (0..batches.len() as i64).collect::<Vec<_>>());
    let recorded: BTreeSet<Vec<u8>> = batches
        .iter()
        .flat_map(|b| b.files.iter().map(|f| f.path.clone()))
        .collect();
    assert_eq!(recorded, fixture.expected, "every entry is reported");
    let errors: Vec<String> = batches
        .iter()
        .flat_map(|b| b.errors.iter().map(|e| e.path.clone()))
        .collect();
    if fixture.unreadable_enforced {
        assert_eq!(
            errors,
            ["secret.txt"],
            "the unreadable file is a per-file error"
        );
        assert_eq!(manifest.errors.len(), 1);
    } else {
        assert!(errors.is_empty(), "no errors expected: {errors:?}");
    }
    let progress = recorder.last_progress();
    assert_eq!(progress.files_done, progress.files_seen);
    assert_eq!(progress.error_count, errors.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_backup_stores_every_file_once_and_byte_for_byte() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    // Larger than the in-memory limit, so the staged-upload path runs too.
    let fixture = build_fixture(source.path(), 9 << 20);
    let store = filesystem_store(repo.path()).await;

    let (first, recorder) = backup(&store, source.path()).await;
    assert_snapshot_matches_source(&store, &fixture, &first, &recorder).await;
    assert!(first.progress.bytes_uploaded > 0);
    assert!(
        first.details.contains("files"),
        "details: {}",
        first.details
    );

    let (second, recorder) = backup(&store, source.path()).await;
    assert_eq!(
        second.progress.bytes_uploaded, 0,
        "an unchanged tree uploads nothing new"
    );
    assert_snapshot_matches_source(&store, &fixture, &second, &recorder).await;
    let manifests = store
        .list("snapshots/", &CancellationToken::new())
        .await
        .expect("list snapshots");
    assert_eq!(manifests.len(), 2);
}

#[tokio::test]
async fn records_arrive_in_numbered_batches_of_at_most_a_thousand() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    for i in 0..2500 {
        write(source.path(), format!("f{i:05}").as_bytes(), &[]);
    }
    let store = filesystem_store(repo.path()).await;
    let (summary, recorder) = backup(&store, source.path()).await;
    let batches = recorder.batches();
    assert_eq!(summary.batch_count, 3);
    assert!(batches
        .iter()
        .all(|b| b.files.len() + b.errors.len() <= MAX_BATCH_RECORDS));
    let total: usize = batches.iter().map(|b| b.files.len()).sum();
    assert_eq!(total, 2500);
    // 2500 empty files share one content object.
    let objects = store
        .list("data/", &CancellationToken::new())
        .await
        .expect("list");
    assert_eq!(objects.len(), 1);
}

#[tokio::test]
async fn missing_source_fails_without_retry() {
    let repo = tempfile::tempdir().expect("temp dir");
    let store = filesystem_store(repo.path()).await;
    let failure: BackupFailure = run_backup(
        plan(&store, &repo.path().join("no-such-source"), options()),
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

#[tokio::test]
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
    let failure = run_backup(plan(&store, source.path(), options()), &recorder, cancel)
        .await
        .expect_err("cancelled backup fails");
    assert_eq!(failure.message, "cancelled");
    assert_eq!(
        recorder.batches().len(),
        1,
        "nothing is reported after cancellation"
    );
    let manifests = store
        .list("snapshots/", &CancellationToken::new())
        .await
        .expect("list");
    assert!(
        manifests.is_empty(),
        "no manifest after cancellation: {manifests:?}"
    );
}

#[tokio::test]
async fn fail_on_file_errors_turns_an_unreadable_file_into_a_failed_run() {
    let source = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    let fixture = build_fixture(source.path(), 1000);
    if !fixture.unreadable_enforced {
        eprintln!("running with permission to read anything (root?): nothing to check");
        return;
    }
    let store = filesystem_store(repo.path()).await;
    let mut options = options();
    options.fail_on_file_errors = true;
    let failure = run_backup(
        plan(&store, source.path(), options),
        &Recorder::default(),
        CancellationToken::new(),
    )
    .await
    .expect_err("a file error fails the run");
    assert!(
        failure.message.contains("secret.txt"),
        "{}",
        failure.message
    );
}

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
            prefix: prefix.into(),
            filesystem_path: String::new(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_round_trips_including_multipart_uploads() {
    let store = garage_store("backups/repo").await;
    let source = tempfile::tempdir().expect("temp dir");
    // Above the 64 MiB multipart threshold: 5 parts of up to 16 MiB.
    let fixture = build_fixture(source.path(), 70 << 20);

    let (first, recorder) = backup(&store, source.path()).await;
    assert_snapshot_matches_source(&store, &fixture, &first, &recorder).await;

    let (second, recorder) = backup(&store, source.path()).await;
    assert_eq!(second.progress.bytes_uploaded, 0);
    assert_snapshot_matches_source(&store, &fixture, &second, &recorder).await;
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
    fs::write(&big, pattern(100 << 20, 3)).expect("write big file");
    let cancel = CancellationToken::new();
    let upload = store.put_file("data/big", &big, &cancel);
    let canceller = async {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
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
        .exists("data/big", &CancellationToken::new())
        .await
        .expect("exists"));
}
