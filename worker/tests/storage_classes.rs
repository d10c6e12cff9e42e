//! Storage classes end to end, on the moto S3 server the test command
//! starts (Garage ignores storage classes; moto keeps them and, like AWS,
//! refuses to read an archived object that was not restored): data packs go
//! to the class the bucket or the job names, while tree packs, index files
//! and manifests stay in the default class, so incrementals, planning and
//! rebuilds read instantly; packs in an archive class fail a restore with
//! an error that says what to do.

use crate::support;

use std::path::Path;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use coffer_worker::store::s3::S3Credentials;
use coffer_worker::store::{S3Location, S3Store};
use tokio_util::sync::CancellationToken;

use support::{
    assert_restorable, backup_job, bucket_target, create_job, noise, restore, write, WorkerProcess,
};

fn moto_var(name: &str) -> String {
    std::env::var(format!("COFFER_TEST_LOCK_S3_{name}")).unwrap_or_else(|_| {
        panic!("COFFER_TEST_LOCK_S3_{name}: start moto with `eval \"$(scripts/start-moto.sh)\"`")
    })
}

/// A store on `prefix` of bucket `name` on moto.
async fn moto_store(name: &str, prefix: &str) -> S3Store {
    let location = S3Location {
        endpoint: moto_var("ENDPOINT"),
        bucket: name.to_owned(),
        region: moto_var("REGION"),
        force_path_style: true,
        prefix: prefix.to_owned(),
    };
    let credentials = S3Credentials {
        access_key_id: moto_var("ACCESS_KEY_ID"),
        secret_access_key: moto_var("SECRET_ACCESS_KEY"),
        session_token: None,
    };
    S3Store::new(location, credentials).await.expect("S3 store")
}

/// Every object under `prefix` of the store, with its storage class.
async fn classes(store: &S3Store, prefix: &str) -> Vec<(String, Option<String>)> {
    let cancel = CancellationToken::new();
    let keys = coffer_worker::store::Store::S3(store.clone())
        .list(prefix, &cancel)
        .await
        .expect("list");
    let mut classes = Vec::new();
    for key in keys {
        let class = store.storage_class(&key, &cancel).await.expect("head");
        classes.push((key, class));
    }
    classes
}

fn tree_with_content(root: &Path, seed: u64) {
    for index in 0..40 {
        let dir = root.join(format!("dir{}", index % 4));
        write(
            &dir.join(format!("file{index}.bin")),
            &noise(20_000, seed + index),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_packs_take_the_chosen_class_and_archived_ones_are_named_on_restore() {
    let server = TestServer::start(Backend::Sqlite).await;
    let name = format!(
        "coffer-class-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    moto_store(&name, "")
        .await
        .ensure_bucket(&CancellationToken::new())
        .await
        .expect("create the bucket");
    let bucket = server
        .admin()
        .create_bucket(pb::Bucket {
            name: name.clone(),
            location: Some(pb::bucket::Location::S3(pb::S3Location {
                endpoint: moto_var("ENDPOINT"),
                bucket: name.clone(),
                region: moto_var("REGION"),
                force_path_style: true,
                credentials_ref: "env:COFFER_TEST_LOCK_S3".into(),
                pack_storage_class: "STANDARD_IA".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("register the bucket");
    let _worker = WorkerProcess::spawn(&server, "classes");
    let job_into = |prefix: &str, source: &Path, class: &str| pb::Job {
        name: format!("into-{prefix}"),
        source_path: source.display().to_string(),
        target: Some(bucket_target(&bucket.id, prefix)),
        options: Some(pb::JobOptions {
            pack_storage_class: class.into(),
            ..Default::default()
        }),
        ..Default::default()
    };

    // The bucket's class: data packs in STANDARD_IA, the rest in the default.
    let source = tempfile::tempdir().expect("source");
    tree_with_content(source.path(), 1);
    let job = create_job(&server, job_into("ia", source.path(), "")).await;
    let first = backup_job(&server, &job).await;
    let store = moto_store(&name, "ia").await;
    let packs = classes(&store, "packs/").await;
    let cold = packs
        .iter()
        .filter(|(_, class)| class.as_deref() == Some("STANDARD_IA"));
    let hot = packs.iter().filter(|(_, class)| class.is_none());
    assert!(cold.count() >= 1, "no data pack in STANDARD_IA: {packs:?}");
    assert!(
        hot.count() >= 1,
        "no tree pack in the default class: {packs:?}"
    );
    for prefix in ["index/", "snapshots/", "keys/", "config"] {
        for (key, class) in classes(&store, prefix).await {
            assert_eq!(class, None, "{key} left the default class");
        }
    }
    // STANDARD_IA reads instantly: the snapshot restores.
    assert_restorable(&server, &first.id, source.path()).await;

    // A job's own class wins over its bucket's. GLACIER data packs do not
    // stop the next incremental, which reads only trees and the index...
    let archived_source = tempfile::tempdir().expect("source");
    tree_with_content(archived_source.path(), 100);
    let job = create_job(
        &server,
        job_into("glacier", archived_source.path(), "GLACIER"),
    )
    .await;
    backup_job(&server, &job).await;
    write(
        &archived_source.path().join("dir0/new.bin"),
        &noise(30_000, 7),
    );
    let incremental = backup_job(&server, &job).await;
    let store = moto_store(&name, "glacier").await;
    let packs = classes(&store, "packs/").await;
    assert!(
        packs
            .iter()
            .any(|(_, class)| class.as_deref() == Some("GLACIER")),
        "no data pack in GLACIER: {packs:?}"
    );
    // ...but a restore must wait for S3 to restore them, and says so.
    let destination = tempfile::tempdir().expect("destination");
    let run = restore(&server, &incremental.id, destination.path()).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert!(
        run.error.contains("storage class GLACIER") && run.error.contains("RestoreObject"),
        "{}",
        run.error
    );
    // Refused at once, not retried until the attempts run out.
    assert_eq!(run.attempt, 1, "{run:?}");
}
