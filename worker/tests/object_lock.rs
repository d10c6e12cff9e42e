//! S3 Object Lock in the store layer, against an S3 server that enforces it:
//! the moto server the test command starts (`eval "$(scripts/start-moto.sh)"`
//! sets COFFER_TEST_LOCK_S3_*). Every test uses a bucket of its own, created
//! with Object Lock enabled (and so versioned).

use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_worker::store::s3::S3Credentials;
use coffer_worker::store::{
    FilesystemStore, LockMode, ObjectLock, S3Location, S3Store, Store, StoreError,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn lock_server_var(name: &str) -> String {
    std::env::var(format!("COFFER_TEST_LOCK_S3_{name}")).unwrap_or_else(|_| {
        panic!(
            "COFFER_TEST_LOCK_S3_{name}: start moto with `eval \"$(scripts/start-moto.sh)\"` \
             (scripts/test.sh does)"
        )
    })
}

/// A store on a fresh bucket of the lock server; the bucket has Object Lock
/// enabled when `lock_enabled`.
async fn bucket_store(lock_enabled: bool) -> S3Store {
    let location = S3Location {
        endpoint: lock_server_var("ENDPOINT"),
        bucket: format!("lock-{}", Uuid::new_v4().simple()),
        region: lock_server_var("REGION"),
        force_path_style: true,
        prefix: "repo".into(),
    };
    let credentials = S3Credentials {
        access_key_id: lock_server_var("ACCESS_KEY_ID"),
        secret_access_key: lock_server_var("SECRET_ACCESS_KEY"),
        session_token: None,
    };
    let store = S3Store::new(location, credentials).await.expect("S3 store");
    let cancel = CancellationToken::new();
    if lock_enabled {
        // Created with the lock, then used as a plain store by the caller.
        let creating = store.clone().with_object_lock(lock(Duration::from_secs(1)));
        creating
            .ensure_bucket(&cancel)
            .await
            .expect("create bucket");
    } else {
        store.ensure_bucket(&cancel).await.expect("create bucket");
    }
    store
}

fn lock(retention: Duration) -> ObjectLock {
    ObjectLock {
        mode: LockMode::Governance,
        retention,
    }
}

/// A store writing with `retention` on a fresh bucket with Object Lock.
async fn locked_store(retention: Duration) -> Store {
    let cancel = CancellationToken::new();
    Store::S3(bucket_store(true).await)
        .with_object_lock(lock(retention), &cancel)
        .await
        .expect("the bucket has Object Lock")
}

/// How many versions and delete markers the store's bucket holds.
async fn versions(store: &Store) -> usize {
    let Store::S3(s3) = store else {
        panic!("an S3 store")
    };
    s3.count_versions(&CancellationToken::new())
        .await
        .expect("list versions")
}

async fn put(store: &Store, key: &str, bytes: &[u8]) {
    store
        .put_bytes(key, bytes.to_vec(), &CancellationToken::new())
        .await
        .expect("put");
}

/// The retain-until date of `key`, which must be locked.
async fn locked_until(store: &Store, key: &str) -> DateTime<Utc> {
    store
        .retain_until(key, &CancellationToken::new())
        .await
        .expect("head")
        .unwrap_or_else(|| panic!("{key} is locked"))
}

/// Waits until the clock is past `until` (the condition itself: nothing
/// else tells when a lock has run out).
async fn wait_past(until: DateTime<Utc>) {
    while Utc::now() <= until {
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn objects_written_under_a_lock_carry_its_retain_until_date() {
    let cancel = CancellationToken::new();
    let store = locked_store(Duration::from_secs(600)).await;
    let before = Utc::now();
    put(&store, "packs/aa/aa01", b"pack").await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), b"manifest").expect("write");
    store
        .put_file_new("snapshots/m", file.path(), &cancel)
        .await
        .expect("put file new");
    store
        .put_file("index/i", file.path(), &cancel)
        .await
        .expect("put file");
    // Past the multipart threshold: the upload and each of its parts carry
    // the lock's checksum, and the object the lock.
    let large = tempfile::NamedTempFile::new().expect("temp file");
    let length = coffer_worker::store::s3::MULTIPART_THRESHOLD + (1 << 20);
    large.as_file().set_len(length).expect("sparse large file");
    let written = store
        .put_file_new("snapshots/large", large.path(), &cancel)
        .await
        .expect("multipart upload under a lock");
    assert_eq!(written, length);
    let read = store
        .get_range("snapshots/large", length - 16, 16, &cancel)
        .await
        .expect("read the last part");
    assert_eq!(read, vec![0u8; 16]);
    for key in ["packs/aa/aa01", "snapshots/m", "index/i", "snapshots/large"] {
        let until = locked_until(&store, key).await;
        let expected = before + chrono::Duration::seconds(600);
        assert!(
            until >= expected - chrono::Duration::seconds(1)
                && until <= expected + chrono::Duration::seconds(5),
            "{key} locked until {until}, expected about {expected}"
        );
    }
}

#[tokio::test]
async fn a_locked_object_cannot_be_deleted_and_stays_visible() {
    let cancel = CancellationToken::new();
    let store = locked_store(Duration::from_secs(600)).await;
    put(&store, "packs/bb/bb01", b"pack").await;
    let error = store
        .delete("packs/bb/bb01", &cancel)
        .await
        .expect_err("the server refuses to delete a locked version");
    let StoreError::Locked { key, until } = error else {
        panic!("expected Locked, got {error:?}");
    };
    assert_eq!(key, "packs/bb/bb01");
    assert!(
        until.is_some_and(|u| u > Utc::now()),
        "names the date: {until:?}"
    );
    assert_eq!(
        store
            .get_bytes("packs/bb/bb01", &cancel)
            .await
            .expect("still readable"),
        b"pack"
    );
    // No delete marker hides it: one version, the data.
    assert_eq!(versions(&store).await, 1);
}

#[tokio::test]
async fn after_the_lock_expires_deleting_removes_every_version() {
    let cancel = CancellationToken::new();
    let store = locked_store(Duration::from_secs(2)).await;
    put(&store, "packs/cc/cc01", b"first").await;
    put(&store, "packs/cc/cc01", b"second").await;
    let until = locked_until(&store, "packs/cc/cc01").await;
    wait_past(until).await;
    store
        .delete("packs/cc/cc01", &cancel)
        .await
        .expect("deleted once the lock has passed");
    assert!(!store.exists("packs/cc/cc01", &cancel).await.expect("head"));
    // Space really reclaimed: no version and no delete marker is left.
    assert_eq!(versions(&store).await, 0);
}

#[tokio::test]
async fn extending_a_lock_moves_its_retain_until_date() {
    let cancel = CancellationToken::new();
    let store = locked_store(Duration::from_secs(60)).await;
    put(&store, "snapshots/s", b"manifest").await;
    let first = locked_until(&store, "snapshots/s").await;
    let later = first + chrono::Duration::seconds(3600);
    store
        .extend_lock("snapshots/s", later, &cancel)
        .await
        .expect("extend");
    let now_until = locked_until(&store, "snapshots/s").await;
    assert_eq!(now_until.timestamp(), later.timestamp());
}

#[tokio::test]
async fn a_bucket_without_object_lock_is_refused_before_any_write() {
    let cancel = CancellationToken::new();
    let plain = Store::S3(bucket_store(false).await);
    let error = plain
        .with_object_lock(lock(Duration::from_secs(60)), &cancel)
        .await
        .expect_err("no Object Lock on the bucket");
    assert!(
        matches!(&error, StoreError::Config(message) if message.contains("Object Lock is not enabled")),
        "{error}"
    );
}

#[tokio::test]
async fn a_filesystem_repository_cannot_require_object_lock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::Filesystem(FilesystemStore::new(dir.path().to_path_buf()).expect("store"));
    let error = store
        .with_object_lock(lock(Duration::from_secs(60)), &CancellationToken::new())
        .await
        .expect_err("a filesystem has no Object Lock");
    assert!(matches!(error, StoreError::Config(_)), "{error}");
}

#[tokio::test]
async fn an_append_only_store_refuses_every_delete_and_lock_change() {
    let cancel = CancellationToken::new();
    let store = Store::S3(bucket_store(false).await).refusing_deletes();
    put(&store, "packs/dd/dd01", b"pack").await;
    let error = store
        .delete("packs/dd/dd01", &cancel)
        .await
        .expect_err("append-only");
    assert!(
        matches!(&error, StoreError::DeleteRefused { key } if key == "packs/dd/dd01"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    let error = store
        .extend_lock("packs/dd/dd01", Utc::now(), &cancel)
        .await
        .expect_err("append-only");
    assert!(
        matches!(error, StoreError::DeleteRefused { .. }),
        "{error:?}"
    );
    assert!(store.exists("packs/dd/dd01", &cancel).await.expect("head"));

    let dir = tempfile::tempdir().expect("temp dir");
    let filesystem = Store::Filesystem(FilesystemStore::new(dir.path().to_path_buf()).expect("fs"))
        .refusing_deletes();
    filesystem
        .put_bytes("packs/ee/ee01", b"pack".to_vec(), &cancel)
        .await
        .expect("write");
    assert!(matches!(
        filesystem.delete("packs/ee/ee01", &cancel).await,
        Err(StoreError::DeleteRefused { .. })
    ));
    assert!(filesystem
        .exists("packs/ee/ee01", &cancel)
        .await
        .expect("stat"));
}
