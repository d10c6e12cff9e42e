//! Repository format v2 end to end: a real control plane (in-process, gRPC
//! over loopback, both catalog backends) and real `coffer-worker` processes
//! writing encrypted repositories to a filesystem target and to Garage.
//! New repositories are encrypted; what storage holds reveals nothing of
//! the data, and any change to it is detected, named and never restored.
//! A bucket's passphrase opens its repositories after the catalog is lost.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_format::{RepositoryConfigV2, RepositoryKeys};
use coffer_proto::v1 as pb;
use prost::Message;
use support::{
    assert_restorable, assert_succeeded, create_run, garage_bucket, new_bucket_on, noise,
    open_filesystem_repository, repository_access, restore, run_to_success, s3_bucket,
    verify_fully, wait_until_final, write, S3Server, WorkerProcess,
};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

/// A source tree whose file name and content carry `marker`, which must
/// never show in storage.
fn source_with(marker: &str) -> tempfile::TempDir {
    let source = tempfile::tempdir().expect("source dir");
    let text = format!("{marker} is in the text of this file\n").repeat(200);
    write(
        &source.path().join(format!("docs/{marker}.txt")),
        text.as_bytes(),
    );
    write(&source.path().join("data/big.bin"), &noise(3 << 20, 11));
    write(&source.path().join("data/small.bin"), &noise(10_000, 12));
    source
}

fn filesystem(path: &Path) -> pb::target::Destination {
    pb::target::Destination::FilesystemPath(path.display().to_string())
}

async fn backup_into(server: &TestServer, source: &Path, repo: &Path) -> pb::Run {
    let id = create_run(server, source, filesystem(repo)).await;
    wait_until_final(server, &id, LIMIT).await
}

/// The run's error and every per-file error, in one text.
async fn all_errors(server: &TestServer, run: &pb::Run) -> String {
    let request = pb::ListRunErrorsRequest {
        run_id: run.id.clone(),
        page_size: 1000,
        page_token: String::new(),
    };
    let errors = server
        .admin()
        .runs
        .list_run_errors(request)
        .await
        .expect("run errors")
        .into_inner()
        .errors;
    let mut text = run.error.clone();
    for error in errors {
        text.push('\n');
        text.push_str(&error.path);
        text.push_str(": ");
        text.push_str(&error.message);
    }
    text
}

fn assert_failed_naming(run: &pb::Run, errors: &str, named: &str) {
    assert_eq!(run.state, pb::RunState::Failed as i32, "{errors}");
    assert!(
        errors.contains(named),
        "the failure names {named}: {errors}"
    );
}

/// Every file under `root`, relative.
fn stored_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(root).expect("beneath").to_path_buf());
            }
        }
    }
    files.sort();
    files
}

fn first_under(root: &Path, prefix: &str) -> PathBuf {
    stored_files(root)
        .into_iter()
        .find(|path| path.starts_with(prefix))
        .unwrap_or_else(|| panic!("nothing under {prefix}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Flips one bit of the file at `path`, `at` bytes from its start (or its
/// middle); returns the original bytes.
fn flip_bit(path: &Path, at: Option<usize>) -> Vec<u8> {
    let original = std::fs::read(path).expect("read object");
    let mut damaged = original.clone();
    let index = at.unwrap_or(damaged.len() / 2);
    damaged[index] ^= 0x10;
    std::fs::write(path, damaged).expect("damage object");
    original
}

async fn encrypted_backups_reveal_nothing_and_restore_byte_identical(backend: Backend) {
    let server = TestServer::start(backend).await;
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    let source = source_with(&marker);
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "v2-fs");
    let first = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&first);

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.path().join("config")).expect("config"))
            .expect("the config is JSON");
    assert_eq!(config["version"], 2);
    assert_eq!(config["encryption"], "aes-256-gcm");
    let files = stored_files(repo.path());
    assert_eq!(
        files.iter().filter(|f| f.starts_with("keys")).count(),
        1,
        "one catalog slot"
    );
    assert_eq!(files.iter().filter(|f| f.starts_with("keyring")).count(), 1);
    for file in &files {
        let bytes = std::fs::read(repo.path().join(file)).expect("read object");
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "{} shows a file name or content in the clear",
            file.display()
        );
    }

    // The catalog pinned the generation the backup created.
    let row = server
        .catalog()
        .find_repository(&format!("filesystem:{}", repo.path().display()))
        .await
        .expect("read")
        .expect("repository");
    assert_eq!(row.format_version, 2);
    let opened = open_filesystem_repository(&server, repo.path()).await;
    let current = opened.generation().expect("a v2 repository");
    assert_eq!(
        row.pinned_generation(),
        Some((1, current.fingerprint.as_str()))
    );

    assert_eq!(
        assert_restorable(&server, &first.id, source.path()).await,
        3
    );
    assert_succeeded(&verify_fully(&server, &first.id).await);

    // An incremental after a change opens the pinned repository again.
    write(&source.path().join("data/small.bin"), &noise(20_000, 13));
    let second = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&second);
    assert_eq!(
        assert_restorable(&server, &second.id, source.path()).await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_round_trip_on_garage() {
    let server = TestServer::start(Backend::Postgres).await;
    let (bucket_id, store) = garage_bucket(&server).await;
    let source = source_with("garage-marker");
    let _worker = WorkerProcess::spawn(&server, "v2-garage");
    let target = pb::target::Destination::Bucket(pb::BucketTarget {
        bucket_id,
        prefix: "repo".into(),
    });
    let run_id = create_run(&server, source.path(), target).await;
    let run = wait_until_final(&server, &run_id, LIMIT).await;
    assert_succeeded(&run);
    let cancel = CancellationToken::new();
    let config = store.get_bytes("config", &cancel).await.expect("config");
    assert!(contains(&config, b"aes-256-gcm"), "an encrypted v2 config");
    assert_eq!(store.list("keys/", &cancel).await.expect("list").len(), 1);
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 3);
    assert_succeeded(&verify_fully(&server, &run_id).await);
}

/// A bit flipped in a pack, an index file, a manifest or the config: each
/// is detected, the failure names the object, and restore writes no
/// damaged byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_anywhere_is_detected_and_named() {
    let server = TestServer::start(Backend::Postgres).await;
    let source = source_with("tamper-marker");
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "v2-tamper");
    let backup = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&backup);

    // A pack: verify names it; the restore leaves the damaged file out.
    // The data pack: the largest (the tree pack holds the manifest's entries).
    let pack = stored_files(repo.path())
        .into_iter()
        .filter(|path| path.starts_with("packs"))
        .max_by_key(|path| {
            std::fs::metadata(repo.path().join(path))
                .expect("pack size")
                .len()
        })
        .expect("a pack");
    let pack_id = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let original = flip_bit(&repo.path().join(&pack), None);
    let checked = verify_fully(&server, &backup.id).await;
    let errors = all_errors(&server, &checked).await;
    assert_failed_naming(&checked, &errors, &pack_id);
    let destination = tempfile::tempdir().expect("restore dir");
    let restored = restore(&server, &backup.id, destination.path()).await;
    assert_eq!(restored.state, pb::RunState::Failed as i32);
    for relative in ["data/big.bin", "data/small.bin"] {
        if let Ok(bytes) = std::fs::read(destination.path().join(relative)) {
            let expected = std::fs::read(source.path().join(relative)).expect("source");
            assert_eq!(
                bytes, expected,
                "{relative}: restored bytes are the original ones"
            );
        }
    }
    std::fs::write(repo.path().join(&pack), original).expect("repair");

    // An index file, a manifest and the config: the run fails naming it.
    let manifest = first_under(repo.path(), "snapshots");
    let config = std::fs::read(repo.path().join("config")).expect("config");
    let encryption_value = config
        .windows(b"aes-256-gcm".len())
        .position(|window| window == b"aes-256-gcm");
    let cases = [
        (
            first_under(repo.path(), "index"),
            None,
            "index file index/".to_string(),
        ),
        (
            manifest.clone(),
            None,
            format!("manifest {}", manifest.display()),
        ),
        (
            PathBuf::from("config"),
            encryption_value,
            "config".to_string(),
        ),
    ];
    for (object, at, named) in cases {
        let original = flip_bit(&repo.path().join(&object), at);
        let checked = verify_fully(&server, &backup.id).await;
        let errors = all_errors(&server, &checked).await;
        assert_failed_naming(&checked, &errors, &named);
        std::fs::write(repo.path().join(&object), original).expect("repair");
    }
    assert_succeeded(&verify_fully(&server, &backup.id).await);
}

/// One snapshot's manifest copied over another's key does not open there:
/// each manifest is bound to its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_copied_to_another_key_is_rejected() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = source_with("moved-marker");
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "v2-moved");
    let first = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&first);
    write(
        &source.path().join("docs/extra.txt"),
        b"only in the second\n",
    );
    let second = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&second);

    let key_of = |run: &pb::Run| format!("snapshots/{}.{}", run.id, run.attempt);
    std::fs::copy(
        repo.path().join(key_of(&first)),
        repo.path().join(key_of(&second)),
    )
    .expect("copy the first manifest over the second");
    let destination = tempfile::tempdir().expect("restore dir");
    let restored = restore(&server, &second.id, destination.path()).await;
    let errors = all_errors(&server, &restored).await;
    assert_failed_naming(&restored, &errors, &format!("manifest {}", key_of(&second)));
    assert!(
        !destination.path().join("docs").exists(),
        "nothing restored"
    );
}

/// Someone who can write the storage replaces the config with an
/// unencrypted one (keys in the clear, which they know): the worker
/// refuses it against the catalog's record and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_unencrypted_config_is_refused() {
    let server = TestServer::start(Backend::Postgres).await;
    let source = source_with("planted-marker");
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "v2-planted");
    assert_succeeded(&backup_into(&server, source.path(), repo.path()).await);
    let access = repository_access(&server, &format!("filesystem:{}", repo.path().display())).await;

    let (planted, _) = RepositoryConfigV2::unencrypted(
        &access.repository_id,
        chrono::Utc::now(),
        &mut rand::rngs::OsRng,
    )
    .expect("an unencrypted config");
    std::fs::write(repo.path().join("config"), planted.to_bytes()).expect("plant");
    let before = stored_files(repo.path());
    write(
        &source.path().join("docs/new.txt"),
        b"must not be written in the clear\n",
    );
    let refused = backup_into(&server, source.path(), repo.path()).await;
    assert_failed_naming(&refused, &refused.error, "encryption");
    assert_eq!(stored_files(repo.path()), before, "nothing was written");
}

/// Someone who holds the catalog key (a catalog from before, say) and can
/// write the storage replaces the keyring with one of their own: the
/// repository then opens to another generation than the catalog pinned,
/// and the worker refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_keyring_fails_the_generation_pin() {
    let server = TestServer::start(Backend::Sqlite).await;
    let source = source_with("forged-marker");
    let repo = tempfile::tempdir().expect("repo dir");
    let _worker = WorkerProcess::spawn(&server, "v2-forged");
    assert_succeeded(&backup_into(&server, source.path(), repo.path()).await);
    let access = repository_access(&server, &format!("filesystem:{}", repo.path().display())).await;
    assert!(
        access.pinned.is_some(),
        "the first backup pinned its generation"
    );

    for dir in ["keys", "keyring"] {
        std::fs::remove_dir_all(repo.path().join(dir)).expect("remove the keys");
    }
    let catalog_key = access
        .catalog_key
        .as_ref()
        .expect("an encrypted repository");
    let forged = RepositoryKeys::create(
        &access.repository_id,
        catalog_key,
        None,
        chrono::Utc::now(),
        &mut rand::rngs::OsRng,
    )
    .expect("forge");
    for (key, bytes) in forged.objects {
        write(&repo.path().join(key), &bytes);
    }
    let refused = backup_into(&server, source.path(), repo.path()).await;
    assert_failed_naming(&refused, &refused.error, "generation");
}

/// Everything the process logged since the first call.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .try_init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The catalog key reaches the worker inside its lease only: no API
/// response and no log line of the control plane or the worker holds it,
/// in any spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_key_never_leaves_the_lease() {
    let logs = captured_logs();
    let server = TestServer::start(Backend::Postgres).await;
    let source = source_with("key-marker");
    let repo = tempfile::tempdir().expect("repo dir");
    let worker_log = tempfile::NamedTempFile::new().expect("worker log");
    let _worker = WorkerProcess::spawn_with(
        &server,
        "v2-key",
        2,
        &[("COFFER_LOG", "trace")],
        Some(worker_log.path()),
    );
    let backup = backup_into(&server, source.path(), repo.path()).await;
    assert_succeeded(&backup);
    assert_eq!(
        assert_restorable(&server, &backup.id, source.path()).await,
        3
    );

    let access = repository_access(&server, &format!("filesystem:{}", repo.path().display())).await;
    let key = access
        .catalog_key
        .as_ref()
        .expect("an encrypted repository");
    let spellings: Vec<Vec<u8>> = {
        use base64::Engine;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        vec![
            key.to_vec(),
            hex.clone().into_bytes(),
            hex.to_uppercase().into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(key.as_slice())
                .into_bytes(),
            format!("{:?}", key.as_slice()).into_bytes(),
        ]
    };
    let assert_absent = |bytes: &[u8], what: &str| {
        for spelling in &spellings {
            assert!(
                !contains(bytes, spelling),
                "the catalog key shows in {what}"
            );
        }
    };

    let admin = server.admin();
    let runs = admin
        .runs
        .clone()
        .list_runs(pb::ListRunsRequest::default())
        .await
        .expect("list runs")
        .into_inner();
    assert_absent(&runs.encode_to_vec(), "ListRuns");
    for run in &runs.runs {
        let got = admin.get_run(&run.id).await.expect("get run");
        assert_absent(&got.encode_to_vec(), "GetRun");
        for record in admin.run_metadata(&run.id).await {
            assert_absent(&record.encode_to_vec(), "backup metadata");
        }
    }
    let buckets = admin
        .buckets
        .clone()
        .list_buckets(pb::ListBucketsRequest::default())
        .await
        .expect("list buckets")
        .into_inner();
    assert_absent(&buckets.encode_to_vec(), "ListBuckets");
    let files = support::snapshot_files(&server, &backup.id).await;
    for file in &files {
        assert_absent(&file.encode_to_vec(), "ListSnapshotFiles");
    }

    let logged = logs.lock().expect("logs").clone();
    assert!(!logged.is_empty(), "the log capture works");
    assert_absent(&logged, "the control plane's log");
    let worker_logged = std::fs::read(worker_log.path()).expect("worker log");
    assert!(!worker_logged.is_empty(), "the worker logs");
    assert_absent(&worker_logged, "the worker's log");
}

/// The catalog is lost; a new one, given the same (unencrypted) storage,
/// rebuilds the snapshots, adopts the repository's identity in storage,
/// restores byte for byte and backs up into it again.
async fn a_new_catalog_adopts_an_unencrypted_repository(backend: Backend) {
    let unencrypted_bucket = |path: &Path| pb::Bucket {
        name: "plain".into(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: path.display().to_string(),
        })),
        encryption: pb::RepositoryEncryption::None as i32,
        ..Default::default()
    };
    let repo = tempfile::tempdir().expect("repo dir");
    let source = source_with("plain-marker");
    let first_id = {
        let server = TestServer::start(backend).await;
        let bucket = server
            .admin()
            .create_bucket(unencrypted_bucket(repo.path()))
            .await
            .expect("bucket");
        let _worker = WorkerProcess::spawn(&server, "v2-plain");
        let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: source.path().display().to_string(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                    bucket_id: bucket.id,
                    prefix: String::new(),
                })),
            }),
            ..Default::default()
        });
        run_to_success(&server, spec).await.id
    };
    let config = std::fs::read(repo.path().join("config")).expect("config");
    assert!(contains(&config, b"\"none\""), "an unencrypted v2 config");

    let fresh = TestServer::start(backend).await;
    let bucket = fresh
        .admin()
        .create_bucket(unencrypted_bucket(repo.path()))
        .await
        .expect("bucket in the new catalog");
    let _worker = WorkerProcess::spawn(&fresh, "v2-plain-rebuild");
    let rebuild = pb::RebuildCatalogRequest {
        bucket_id: bucket.id.clone(),
        prefix: String::new(),
    };
    let mut objects = fresh.admin().objects;
    let run_id = objects
        .rebuild_catalog(rebuild)
        .await
        .expect("rebuild")
        .into_inner()
        .run_id;
    assert_succeeded(&wait_until_final(&fresh, &run_id, LIMIT).await);
    assert_eq!(assert_restorable(&fresh, &first_id, source.path()).await, 3);

    write(
        &source.path().join("docs/after.txt"),
        b"after the rebuild\n",
    );
    let spec = pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.path().display().to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket.id,
                prefix: String::new(),
            })),
        }),
        ..Default::default()
    });
    let again = run_to_success(&fresh, spec).await;
    assert_eq!(assert_restorable(&fresh, &again.id, source.path()).await, 4);
}

/// Registers Garage bucket `name` in `server` with a passphrase secret
/// holding `passphrase`; returns the bucket's id.
async fn bucket_with_passphrase(server: &TestServer, name: &str, passphrase: &str) -> String {
    let secret = support::passphrase_secret(&server.admin(), passphrase).await;
    let bucket = pb::Bucket {
        passphrase_secret_id: secret,
        ..s3_bucket(&S3Server::shared(), name)
    };
    server
        .admin()
        .create_bucket(bucket)
        .await
        .expect("bucket with a passphrase")
        .id
}

fn backup_to_bucket(source: &Path, bucket_id: &str) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.display().to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket_id.into(),
                prefix: "repo".into(),
            })),
        }),
        ..Default::default()
    })
}

/// The key slots the bucket shows, as (kind, generations), sorted.
async fn shown_slots(server: &TestServer, bucket_id: &str) -> Vec<(i32, Vec<u32>)> {
    let bucket = server
        .admin()
        .buckets
        .get_bucket(pb::GetBucketRequest {
            id: bucket_id.into(),
        })
        .await
        .expect("get bucket")
        .into_inner()
        .bucket
        .expect("bucket");
    let mut slots: Vec<(i32, Vec<u32>)> = bucket
        .key_slots
        .into_iter()
        .map(|slot| (slot.kind, slot.generations))
        .collect();
    slots.sort();
    slots
}

/// Disaster recovery with only the storage and the passphrase: the catalog
/// (and with it every catalog key) is lost; a new control plane with an
/// empty catalog, given the bucket and its passphrase, rebuilds the
/// snapshots through the passphrase slot, restores them byte for byte, and
/// adds a catalog slot of its own, so the next backup needs no human. A
/// wrong passphrase opens nothing and says only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_catalog_is_recovered_with_the_passphrase_alone() {
    let passphrase = format!("recovery {}", uuid::Uuid::new_v4().simple());
    let (name, store) = new_bucket_on(&S3Server::shared()).await;
    let source = source_with("recovery-marker");
    let cancel = CancellationToken::new();
    let first_id = {
        let lost = TestServer::start(Backend::Postgres).await;
        let bucket_id = bucket_with_passphrase(&lost, &name, &passphrase).await;
        let _worker = WorkerProcess::spawn(&lost, "dr-before");
        let first = run_to_success(&lost, backup_to_bucket(source.path(), &bucket_id)).await;
        let catalog = pb::KeySlotKind::Catalog as i32;
        let passphrase_kind = pb::KeySlotKind::Passphrase as i32;
        assert_eq!(
            shown_slots(&lost, &bucket_id).await,
            vec![(passphrase_kind, vec![1]), (catalog, vec![1])],
            "a passphrase slot beside the catalog's, both holding generation 1"
        );
        first.id
    };
    assert_eq!(store.list("keys/", &cancel).await.expect("list").len(), 2);

    // A wrong passphrase opens nothing, and the error names no slot.
    let wrong = TestServer::start(Backend::Sqlite).await;
    let bucket_id = bucket_with_passphrase(&wrong, &name, "not the passphrase").await;
    let _worker = WorkerProcess::spawn(&wrong, "dr-wrong");
    let rebuild = |bucket_id: String| pb::RebuildCatalogRequest {
        bucket_id,
        prefix: "repo".into(),
    };
    let run_id = wrong
        .admin()
        .objects
        .rebuild_catalog(rebuild(bucket_id))
        .await
        .expect("rebuild")
        .into_inner()
        .run_id;
    let refused = wait_until_final(&wrong, &run_id, LIMIT).await;
    assert_eq!(refused.state, pb::RunState::Failed as i32, "{refused:?}");
    assert!(
        refused
            .error
            .contains("no key slot opens with this passphrase"),
        "{}",
        refused.error
    );
    for key in store.list("keys/", &cancel).await.expect("list") {
        let id = key.trim_start_matches("keys/");
        assert!(!refused.error.contains(id), "the error names slot {id}");
    }
    drop(_worker);

    let fresh = TestServer::start(Backend::Sqlite).await;
    let bucket_id = bucket_with_passphrase(&fresh, &name, &passphrase).await;
    let _worker = WorkerProcess::spawn(&fresh, "dr-after");
    let run_id = fresh
        .admin()
        .objects
        .rebuild_catalog(rebuild(bucket_id.clone()))
        .await
        .expect("rebuild")
        .into_inner()
        .run_id;
    assert_succeeded(&wait_until_final(&fresh, &run_id, LIMIT).await);
    assert_eq!(assert_restorable(&fresh, &first_id, source.path()).await, 3);
    let catalog = pb::KeySlotKind::Catalog as i32;
    let passphrase_kind = pb::KeySlotKind::Passphrase as i32;
    assert_eq!(
        shown_slots(&fresh, &bucket_id).await,
        vec![
            (passphrase_kind, vec![1]),
            (catalog, vec![1]),
            (catalog, vec![1])
        ],
        "the rebuild added a catalog slot for the new catalog's key"
    );

    // Scheduled runs need no human: the next backup opens the repository
    // with the new catalog's key alone.
    write(
        &source.path().join("docs/after.txt"),
        b"after the recovery\n",
    );
    let again = run_to_success(&fresh, backup_to_bucket(source.path(), &bucket_id)).await;
    assert_eq!(assert_restorable(&fresh, &again.id, source.path()).await, 4);
}

both_backends!(
    encrypted_backups_reveal_nothing_and_restore_byte_identical,
    a_new_catalog_adopts_an_unencrypted_repository,
);
