//! Attacks on managed S3 credentials with real `coffer-worker` processes
//! (issue 12, item 6): a tenant's backup signs with the tenant's own secret,
//! delivered in the lease, and a tenant's bucket pointing at a server the
//! tenant controls never receives the worker's or anyone else's keys.

use crate::support;

use std::time::Duration;

use coffer_control_plane::testing::{Backend, TestServer};
use coffer_proto::v1 as pb;
use support::credentials::{
    contains, create_secret, create_tenant_bucket, endpoint_host, RecordingListener,
};
use support::{
    assert_restorable, assert_succeeded, new_bucket_on, noise, wait_until_final, write, S3Server,
    WorkerProcess,
};

/// Keys in the worker's environment that no tenant may sign with.
const AMBIENT_KEY_ID: &str = "AKIAWORKERAMBIENT0001";
const AMBIENT_MINIO_KEY_ID: &str = "AKIAWORKERMINIO00001";

/// A worker whose ambient credentials are decoys: anything it signs with
/// them fails against Garage and is recognisable on a recording listener.
fn worker_with_decoy_keys(server: &TestServer, name: &str, log: &std::path::Path) -> WorkerProcess {
    WorkerProcess::spawn_with(
        server,
        name,
        1,
        &[
            ("AWS_ACCESS_KEY_ID", AMBIENT_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", "worker-ambient-secret-key"),
            ("MINIO_ACCESS_KEY", AMBIENT_MINIO_KEY_ID),
            ("MINIO_SECRET_KEY", "worker-minio-secret-key"),
            ("COFFER_LOG", "debug"),
        ],
        Some(log),
    )
}

fn backup_to(source: &std::path::Path, bucket_id: &str) -> pb::create_run_request::Spec {
    pb::create_run_request::Spec::Backup(pb::BackupSpec {
        source_path: source.display().to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket_id.into(),
                prefix: String::new(),
            })),
        }),
        ..Default::default()
    })
}

async fn a_tenant_backs_up_to_garage_through_its_own_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let garage = S3Server::shared();
    server
        .configure("s3_endpoint_allow", &endpoint_host(&garage.endpoint))
        .await;
    let (name, store) = new_bucket_on(&garage).await;
    let values = pb::S3CredentialValues {
        access_key_id: std::env::var("COFFER_TEST_S3_ACCESS_KEY_ID").expect("garage key id"),
        secret_access_key: std::env::var("COFFER_TEST_S3_SECRET_ACCESS_KEY")
            .expect("garage secret"),
        session_token: String::new(),
    };
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let secret = create_secret(&alice, "garage", &values).await;
    let bucket =
        create_tenant_bucket(&alice, &garage.endpoint, &garage.region, &name, &secret).await;

    let source = tempfile::tempdir().expect("source");
    write(&source.path().join("notes.txt"), b"tenant data\n");
    write(&source.path().join("data/blob.bin"), &noise(2 << 20, 11));
    let logs = tempfile::tempdir().expect("logs");
    let log = logs.path().join("worker.log");
    let _worker = worker_with_decoy_keys(&server, "tenant-e2e", &log);

    let run_id = alice.queue_run(backup_to(source.path(), &bucket)).await;
    let run = wait_until_final(&server, &run_id, Duration::from_secs(180)).await;
    assert_succeeded(&run);
    let keys = store
        .list("snapshots/", &tokio_util::sync::CancellationToken::new())
        .await
        .expect("list snapshots");
    assert_eq!(keys.len(), 1, "the manifest is in the tenant's bucket");
    assert_eq!(assert_restorable(&server, &run_id, source.path()).await, 2);

    let logged = std::fs::read(&log).expect("worker log");
    assert!(!logged.is_empty());
    assert!(
        !contains(&logged, &values.secret_access_key),
        "the worker logged the tenant's secret key"
    );
}

async fn a_tenant_endpoint_receives_no_foreign_credentials(backend: Backend) {
    let server = TestServer::start(backend).await;
    let listener = RecordingListener::start().await;
    server.configure("s3_endpoint_allow", "127.0.0.1").await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let values = pb::S3CredentialValues {
        access_key_id: format!("AKIAMALLORY{}", tag.to_uppercase()),
        secret_access_key: format!("mallory-secret-{tag}"),
        session_token: String::new(),
    };
    let (_, token) = server.create_user("mallory").await;
    let mallory = server.as_user(&token);
    let secret = create_secret(&mallory, "mine", &values).await;
    let bucket = create_tenant_bucket(
        &mallory,
        &listener.endpoint,
        "us-east-1",
        "harvest",
        &secret,
    )
    .await;

    let source = tempfile::tempdir().expect("source");
    write(&source.path().join("f.txt"), b"anything\n");
    let logs = tempfile::tempdir().expect("logs");
    let _worker = worker_with_decoy_keys(&server, "harvested", &logs.path().join("worker.log"));
    let run_id = mallory.queue_run(backup_to(source.path(), &bucket)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !contains(&listener.received(), "Credential=") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never called the tenant's endpoint (run {run_id})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = listener.received();
    assert!(
        contains(&received, &values.access_key_id),
        "requests are signed with the tenant's own key"
    );
    for foreign in [
        AMBIENT_KEY_ID.to_string(),
        AMBIENT_MINIO_KEY_ID.to_string(),
        std::env::var("COFFER_TEST_S3_ACCESS_KEY_ID").unwrap_or_else(|_| "unset".into()),
        server.worker_token.clone(),
        server.admin_token.clone(),
        values.secret_access_key.clone(),
    ] {
        assert!(
            !contains(&received, &foreign),
            "the tenant's endpoint received a foreign credential"
        );
    }
    let run = server.get_run(&run_id).await;
    assert!(
        !run.error.contains(&values.secret_access_key),
        "{}",
        run.error
    );
}

both_backends!(
    a_tenant_backs_up_to_garage_through_its_own_secret,
    a_tenant_endpoint_receives_no_foreign_credentials,
);
