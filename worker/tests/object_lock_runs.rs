//! Backups, retention and garbage collection on a bucket that requires S3
//! Object Lock, end to end: a control plane on PostgreSQL, a real worker
//! process, and the moto server the test command starts (which enforces
//! Object Lock; `eval "$(scripts/start-moto.sh)"` sets COFFER_TEST_LOCK_S3_*).
//! A short retention (seconds) lets locks run out within the test; waits
//! are on the dates the locks end, never fixed sleeps.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use coffer_worker::store::s3::S3Credentials;
use coffer_worker::store::{LockMode, ObjectLock, S3Location, S3Store, Store, StoreError};
use tokio_util::sync::CancellationToken;

use support::{
    backup_job, collect_garbage, noise, pack_bytes, plan_retention, wait_until_final, write,
    WorkerProcess,
};

/// How long objects stay locked in these tests.
const RETENTION: Duration = Duration::from_secs(10);

fn lock_var(name: &str) -> String {
    std::env::var(format!("COFFER_TEST_LOCK_S3_{name}")).unwrap_or_else(|_| {
        panic!("COFFER_TEST_LOCK_S3_{name}: start moto with `eval \"$(scripts/start-moto.sh)\"`")
    })
}

/// A new bucket with Object Lock on the lock server, and a store on its
/// `repo` prefix that reads locks and deletes by version, as a maintenance
/// worker's does.
async fn locked_bucket() -> (String, Arc<Store>) {
    let name = format!(
        "coffer-lock-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let location = S3Location {
        endpoint: lock_var("ENDPOINT"),
        bucket: name.clone(),
        region: lock_var("REGION"),
        force_path_style: true,
        prefix: "repo".into(),
    };
    let credentials = S3Credentials {
        access_key_id: lock_var("ACCESS_KEY_ID"),
        secret_access_key: lock_var("SECRET_ACCESS_KEY"),
        session_token: None,
    };
    let lock = ObjectLock {
        mode: LockMode::Governance,
        retention: RETENTION,
    };
    let store = S3Store::new(location, credentials)
        .await
        .expect("S3 store")
        .with_object_lock(lock);
    store
        .ensure_bucket(&CancellationToken::new())
        .await
        .expect("create a bucket with Object Lock");
    (name, Arc::new(Store::S3(store)))
}

async fn register(server: &TestServer, name: &str) -> String {
    let bucket = pb::Bucket {
        name: name.to_owned(),
        location: Some(pb::bucket::Location::S3(pb::S3Location {
            endpoint: lock_var("ENDPOINT"),
            bucket: name.to_owned(),
            region: lock_var("REGION"),
            force_path_style: true,
            credentials_ref: "env:COFFER_TEST_LOCK_S3".into(),
            ..Default::default()
        })),
        object_lock: Some(pb::ObjectLockSettings {
            mode: pb::ObjectLockMode::Governance.into(),
            min_retention: Some(prost_types::Duration {
                seconds: RETENTION.as_secs() as i64,
                nanos: 0,
            }),
        }),
        ..Default::default()
    };
    let created = server.admin().create_bucket(bucket).await;
    created.expect("register the bucket").id
}

/// What a run reported when it finished (its backup metadata's details).
async fn details(server: &TestServer, run: &pb::Run) -> String {
    let records = support::backup_metadata(server, &run.id).await;
    records
        .first()
        .map(|r| r.details.clone())
        .unwrap_or_default()
}

fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    let nanos = u32::try_from(timestamp.nanos).expect("valid nanos");
    DateTime::from_timestamp(timestamp.seconds, nanos).expect("valid time")
}

/// Waits until the clock is past `until`: the lock's end is the event.
async fn wait_past(until: DateTime<Utc>) {
    while Utc::now() <= until {
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
}

/// The date in "Object Lock keeps condemned packs until <date>" of a
/// collection's details.
fn lock_wait_in(details: &str) -> Option<DateTime<Utc>> {
    let (_, rest) = details.split_once("Object Lock keeps condemned packs until ")?;
    let date = rest.split(';').next()?.trim();
    DateTime::parse_from_rfc3339(date)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

async fn retain_until(store: &Store, key: &str) -> DateTime<Utc> {
    store
        .retain_until(key, &CancellationToken::new())
        .await
        .expect("head")
        .unwrap_or_else(|| panic!("{key} is locked"))
}

/// Every key of the repository has exactly one version and no delete
/// marker hides anything: what is listed is all the bucket holds.
async fn assert_nothing_hidden(store: &Store) {
    let cancel = CancellationToken::new();
    let listed = store.list("", &cancel).await.expect("list").len();
    let Store::S3(s3) = store else {
        panic!("an S3 store")
    };
    let versions = s3.count_versions(&cancel).await.expect("list versions");
    assert_eq!(versions, listed, "versions hidden behind delete markers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_collection_plan_around_object_locks() {
    let server = TestServer::start(Backend::Postgres).await;
    let (name, store) = locked_bucket().await;
    let bucket_id = register(&server, &name).await;
    let target = pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket_id.clone(),
            prefix: "repo".into(),
        })),
    };
    let policy = server
        .admin()
        .create_retention_policy(pb::RetentionPolicy {
            name: "keep-last-1".into(),
            keep_last: 1,
            ..Default::default()
        })
        .await
        .expect("policy")
        .id;
    let source = tempfile::tempdir().expect("source");
    write(&source.path().join("notes.txt"), b"in every snapshot\n");
    write(&source.path().join("big0.bin"), &noise(2 << 20, 7));
    let job = pb::Job {
        name: "locked".into(),
        source_path: source.path().display().to_string(),
        target: Some(target.clone()),
        retention_policy_id: policy,
        ..Default::default()
    };
    let job_id = support::create_job(&server, job).await;
    let _worker = WorkerProcess::spawn(&server, "locked-all");

    // Everything a backup writes carries the lock.
    let first = backup_job(&server, &job_id).await;
    let cancel = CancellationToken::new();
    let first_manifest = format!("snapshots/{}.1", first.id);
    let written = store.list("", &cancel).await.expect("list");
    assert!(
        written.iter().any(|k| k.starts_with("packs/")),
        "{written:?}"
    );
    assert!(
        written.iter().any(|k| k.starts_with("index/")),
        "{written:?}"
    );
    assert!(written.contains(&first_manifest), "{written:?}");
    for key in &written {
        assert!(
            retain_until(&store, key).await > Utc::now(),
            "{key} not locked"
        );
    }
    // The server refuses to delete it, and nothing is hidden by trying.
    let refused = store.delete(&first_manifest, &cancel).await;
    assert!(
        matches!(refused, Err(StoreError::Locked { .. })),
        "{refused:?}"
    );
    assert_nothing_hidden(&store).await;

    std::fs::remove_file(source.path().join("big0.bin")).expect("remove");
    write(&source.path().join("big1.bin"), &noise(2 << 20, 8));
    let second = backup_job(&server, &job_id).await;

    // The policy drops the first snapshot, but its manifest is locked:
    // the plan keeps it and says until when.
    let planned = plan_retention(&server, &job_id).await;
    let decision = planned
        .decisions
        .iter()
        .find(|d| d.run_id == first.id)
        .expect("the first snapshot is planned");
    let locked_until = time_of(decision.locked_until.as_ref().expect("locked_until"));
    assert!(locked_until >= retain_until(&store, &first_manifest).await);
    assert!(decision.keep, "{decision:?}");
    assert_eq!(decision.reasons, vec!["object_lock".to_string()]);

    let mut buckets = server.admin().buckets;
    let immutability = buckets
        .get_bucket_immutability(pb::GetBucketImmutabilityRequest {
            id: bucket_id.clone(),
        })
        .await
        .expect("immutability")
        .into_inner()
        .immutability
        .expect("immutability");
    assert!(immutability.immutable);
    assert_eq!(immutability.snapshot_count, 2);
    assert_eq!(
        immutability.oldest_snapshot_locked_until.map(|t| t.seconds),
        Some(locked_until.timestamp())
    );
    assert!(immutability.newest_snapshot_locked_until.is_some());

    // Once the lock has passed, retention removes it from storage.
    wait_past(locked_until).await;
    let planned = plan_retention(&server, &job_id).await;
    assert!(planned
        .decisions
        .iter()
        .any(|d| d.run_id == first.id && !d.keep));
    let mut retention = server.admin().retention;
    let applied = retention
        .apply_retention(pb::ApplyRetentionRequest {
            job_id: job_id.clone(),
            ..Default::default()
        })
        .await
        .expect("apply")
        .into_inner();
    let applied = wait_until_final(&server, &applied.run_id, Duration::from_secs(120)).await;
    support::assert_succeeded(&applied);
    assert!(!store.exists(&first_manifest, &cancel).await.expect("head"));
    assert_nothing_hidden(&store).await;

    // The first collection condemns the first snapshot's data and tree
    // packs (format v2 packs a snapshot's tree blobs apart) and extends
    // the locks of what the kept snapshot needs.
    let second_manifest = format!("snapshots/{}.1", second.id);
    let before_extension = retain_until(&store, &second_manifest).await;
    let with_all = pack_bytes(&store).await;
    let marked = details(&server, &collect_garbage(&server, &target).await).await;
    assert!(marked.contains("condemned 2 packs"), "{}", marked);
    assert!(
        retain_until(&store, &second_manifest).await >= before_extension,
        "an extension never shortens a lock"
    );

    // The next ones wait while what the sweep deletes is locked, then
    // reclaim it: no version or delete marker is left behind.
    let mut reclaimed = None;
    for _ in 0..4 {
        let collected = details(&server, &collect_garbage(&server, &target).await).await;
        if pack_bytes(&store).await < with_all {
            reclaimed = Some(collected);
            break;
        }
        let until = lock_wait_in(&collected)
            .unwrap_or_else(|| panic!("nothing reclaimed and no lock named: {}", collected));
        wait_past(until).await;
    }
    let reclaimed = reclaimed.expect("garbage reclaimed once its locks passed");
    assert!(reclaimed.contains("deleted 2 packs"), "{}", reclaimed);
    assert_nothing_hidden(&store).await;
    assert_eq!(
        support::assert_restorable(&server, &second.id, source.path()).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_extension_moves_the_kept_snapshots_locks() {
    let server = TestServer::start(Backend::Postgres).await;
    let (name, store) = locked_bucket().await;
    let bucket_id = register(&server, &name).await;
    let target = pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id,
            prefix: "repo".into(),
        })),
    };
    let source = tempfile::tempdir().expect("source");
    write(&source.path().join("a.txt"), b"kept\n");
    let job = pb::Job {
        name: "extended".into(),
        source_path: source.path().display().to_string(),
        target: Some(target.clone()),
        ..Default::default()
    };
    let job_id = support::create_job(&server, job).await;
    let _worker = WorkerProcess::spawn(&server, "locked-extend");
    let snapshot = backup_job(&server, &job_id).await;
    let manifest = format!("snapshots/{}.1", snapshot.id);
    let first = retain_until(&store, &manifest).await;
    // Past half the retention, a collection extends it by a full period.
    wait_past(first - chrono::Duration::from_std(RETENTION / 2).expect("duration")).await;
    let collected = details(&server, &collect_garbage(&server, &target).await).await;
    assert!(
        collected.contains("extended the Object Lock"),
        "{}",
        collected
    );
    let extended = retain_until(&store, &manifest).await;
    assert!(extended > first, "{extended} is not after {first}");
}
