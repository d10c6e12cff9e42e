//! BucketService over real gRPC on both catalog backends.

use crate::support;

use coffer_proto::v1 as pb;
use prost_types::FieldMask;
use support::{
    assert_code, assert_hidden_from_stranger, assert_violated, assert_violations, violated_fields,
    Backend, TestServer,
};
use tonic::Code;

/// An S3 bucket whose credentials are the secret `secret_id` of its owner.
fn s3_bucket(name: &str, secret_id: &str) -> pb::Bucket {
    pb::Bucket {
        name: name.to_string(),
        description: "offsite copies".to_string(),
        location: Some(pb::bucket::Location::S3(pb::S3Location {
            endpoint: "http://minio:9000".to_string(),
            bucket: "coffer-backups".to_string(),
            region: "eu-central-1".to_string(),
            force_path_style: true,
            secret_id: secret_id.to_string(),
            ..Default::default()
        })),
        prefix: "team-a".to_string(),
        ..Default::default()
    }
}

/// A secret of the caller of `api`, for its S3 buckets; returns its id.
async fn secret_of(api: &coffer_control_plane::testing::Api) -> String {
    support::s3_secret(api, "s3", "AKIAIOSFODNN7EXAMPLE").await
}

fn fs_bucket(name: &str) -> pb::Bucket {
    pb::Bucket {
        name: name.to_string(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: "/srv/backups".to_string(),
        })),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_string()).collect(),
    })
}

async fn get(server: &TestServer, token: &str, id: &str) -> Result<pb::Bucket, tonic::Status> {
    let request = pb::GetBucketRequest { id: id.to_string() };
    server.as_user(token).get_bucket(request).await
}

async fn bucket_crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let secret = secret_of(&api).await;

    let created = api
        .create_bucket(s3_bucket("offsite", &secret))
        .await
        .expect("create");
    assert_eq!(created.owner_id, alice.id);
    assert_eq!(created.name, "offsite");
    assert_eq!(created.location, s3_bucket("offsite", &secret).location);
    assert_eq!(created.prefix, "team-a");
    assert!(created.create_time.is_some());

    let fetched = get(&server, &token, &created.id).await.expect("get");
    assert_eq!(fetched, created);

    // Switch the location to a filesystem and change the description only.
    let updated = api
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: created.id.clone(),
                name: "ignored-not-in-mask".into(),
                description: "now local".into(),
                ..fs_bucket("x")
            }),
            update_mask: mask(&["description", "filesystem"]),
        })
        .await
        .expect("update");
    assert_eq!(updated.name, "offsite");
    assert_eq!(updated.description, "now local");
    assert_eq!(updated.location, fs_bucket("x").location);
    assert_eq!(updated.prefix, "team-a");
    assert_eq!(
        get(&server, &token, &created.id).await.expect("get"),
        updated
    );

    api.delete_bucket(&created.id).await.expect("delete");
    assert_code(
        get(&server, &token, &created.id).await,
        Code::NotFound,
        "deleted",
    );
}

async fn foreign_bucket_is_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let mut bob_api = server.as_user(&bob_token);
    let bucket = server
        .as_user(&alice_token)
        .create_bucket(fs_bucket("private"))
        .await
        .expect("create");

    let takeover = pb::UpdateBucketRequest {
        bucket: Some(pb::Bucket {
            id: bucket.id.clone(),
            description: "mine now".into(),
            ..Default::default()
        }),
        update_mask: mask(&["description"]),
    };
    assert_hidden_from_stranger(
        get(&server, &bob_token, &bucket.id).await,
        bob_api.update_bucket(takeover).await,
        bob_api.delete_bucket(&bucket.id).await,
    );

    // Bob's list holds nothing, even when he asks for Alice's buckets.
    let listed = bob_api
        .buckets
        .list_buckets(pb::ListBucketsRequest {
            owner_id: alice.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.buckets.is_empty(), "{listed:?}");

    // The admin sees it, also when filtering by owner.
    assert_eq!(
        get(&server, &server.admin_token, &bucket.id)
            .await
            .expect("admin get")
            .id,
        bucket.id
    );
    let listed = server
        .admin()
        .buckets
        .list_buckets(pb::ListBucketsRequest {
            owner_id: alice.id.clone(),
            ..Default::default()
        })
        .await
        .expect("admin list")
        .into_inner();
    assert_eq!(listed.buckets.len(), 1);
    assert_eq!(listed.buckets[0].id, bucket.id);
}

async fn duplicate_name_per_owner_is_already_exists(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let alice_api = server.as_user(&alice_token);
    let (_, bob_token) = server.create_user("bob").await;
    alice_api
        .create_bucket(fs_bucket("main"))
        .await
        .expect("first");
    let secret = secret_of(&alice_api).await;
    assert_code(
        alice_api.create_bucket(s3_bucket("main", &secret)).await,
        Code::AlreadyExists,
        "duplicate",
    );
    // Another owner may use the same name.
    server
        .as_user(&bob_token)
        .create_bucket(fs_bucket("main"))
        .await
        .expect("same name, other owner");

    // Renaming onto a taken name is refused too.
    let other = alice_api
        .create_bucket(fs_bucket("other"))
        .await
        .expect("other");
    assert_code(
        alice_api
            .update_bucket(pb::UpdateBucketRequest {
                bucket: Some(pb::Bucket {
                    id: other.id,
                    name: "main".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["name"]),
            })
            .await,
        Code::AlreadyExists,
        "rename onto taken name",
    );
}

async fn invalid_bucket_reports_every_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let status = api
        .create_bucket(pb::Bucket {
            name: "Bad Name".into(),
            location: Some(pb::bucket::Location::S3(pb::S3Location {
                endpoint: "ftp://example.com".into(),
                bucket: "Not_An_S3_Name".into(),
                credentials_ref: "AKIAIOSFODNN7EXAMPLE".into(),
                pack_storage_class: "COLD".into(),
                ..Default::default()
            })),
            prefix: "/absolute".into(),
            retention_policy_id: "not-a-uuid".into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_violations(
        &status,
        &[
            "bucket.name",
            "bucket.s3.endpoint",
            "bucket.s3.bucket",
            "bucket.s3.credentials_ref",
            "bucket.s3.pack_storage_class",
            "bucket.prefix",
            "bucket.retention_policy_id",
        ],
    );

    assert_violated(
        api.create_bucket(pb::Bucket {
            name: "nolocation".into(),
            ..Default::default()
        })
        .await,
        &["bucket.location"],
        "no location",
    );

    assert_violated(
        api.create_bucket(pb::Bucket {
            location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
                path: "relative/path".into(),
            })),
            ..fs_bucket("fs")
        })
        .await,
        &["bucket.filesystem.path"],
        "relative filesystem path",
    );

    // Valid credential references and endpoints are accepted (from admins,
    // the only ones who may name a worker's credentials).
    for (i, credentials_ref) in ["", "env:MINIO_PROD", "file:/var/run/secrets/s3"]
        .into_iter()
        .enumerate()
    {
        let mut bucket = s3_bucket(&format!("ok-{i}"), "");
        if let Some(pb::bucket::Location::S3(s3)) = bucket.location.as_mut() {
            s3.credentials_ref = credentials_ref.to_string();
            s3.pack_storage_class = ["", "GLACIER_IR", "DEEP_ARCHIVE"][i].into();
            s3.endpoint = if i == 0 {
                String::new()
            } else {
                "https://s3.example.com".into()
            };
        }
        let created = server
            .admin()
            .create_bucket(bucket.clone())
            .await
            .unwrap_or_else(|e| panic!("{credentials_ref:?} should be valid: {e}"));
        assert_eq!(
            created.location, bucket.location,
            "the location round-trips"
        );
    }
}

async fn only_admins_choose_another_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let alice_api = server.as_user(&alice_token);
    let (bob, _) = server.create_user("bob").await;
    assert_code(
        alice_api
            .create_bucket(pb::Bucket {
                owner_id: bob.id.clone(),
                ..fs_bucket("for-bob")
            })
            .await,
        Code::PermissionDenied,
        "non-admin creating for another user",
    );

    let created = server
        .admin()
        .create_bucket(pb::Bucket {
            owner_id: bob.id.clone(),
            ..fs_bucket("for-bob")
        })
        .await
        .expect("admin creating for bob");
    assert_eq!(created.owner_id, bob.id);

    // Alice cannot move her bucket to Bob; the admin can move it back to Alice.
    let own = alice_api
        .create_bucket(fs_bucket("mine"))
        .await
        .expect("own");
    assert_code(
        alice_api
            .update_bucket(pb::UpdateBucketRequest {
                bucket: Some(pb::Bucket {
                    id: own.id.clone(),
                    owner_id: bob.id.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["owner_id"]),
            })
            .await,
        Code::PermissionDenied,
        "non-admin moving a bucket",
    );
    let moved = server
        .admin()
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: created.id.clone(),
                owner_id: alice.id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["owner_id"]),
        })
        .await
        .expect("admin moves bucket");
    assert_eq!(moved.owner_id, alice.id);
}

async fn retention_policy_must_belong_to_the_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let alice_api = server.as_user(&alice_token);
    let (_, bob_token) = server.create_user("bob").await;
    let bob_api = server.as_user(&bob_token);
    let policy = alice_api
        .create_retention_policy(pb::RetentionPolicy {
            name: "daily".into(),
            keep_daily: 7,
            ..Default::default()
        })
        .await
        .expect("policy");
    let status = bob_api
        .create_bucket(pb::Bucket {
            retention_policy_id: policy.id.clone(),
            ..fs_bucket("bobs")
        })
        .await
        .expect_err("foreign policy");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec!["bucket.retention_policy_id".to_string()]
    );
    assert_violated(
        bob_api
            .create_bucket(pb::Bucket {
                retention_policy_id: uuid::Uuid::now_v7().to_string(),
                ..fs_bucket("bobs")
            })
            .await,
        &["bucket.retention_policy_id"],
        "missing policy",
    );

    let bucket = alice_api
        .create_bucket(pb::Bucket {
            retention_policy_id: policy.id.clone(),
            ..fs_bucket("alices")
        })
        .await
        .expect("own policy");
    assert_eq!(bucket.retention_policy_id, policy.id);

    // Clearing the policy through the mask.
    let cleared = alice_api
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: bucket.id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["retention_policy_id"]),
        })
        .await
        .expect("clear policy");
    assert_eq!(cleared.retention_policy_id, "");
}

async fn buckets_page_by_name_prefix(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    for name in ["b1", "b2", "other", "b3", "b4", "b5"] {
        api.create_bucket(fs_bucket(name)).await.expect("create");
    }
    let request = pb::ListBucketsRequest {
        page_size: 2,
        name_prefix: "b".into(),
        ..Default::default()
    };
    let all = api.all_buckets(request).await;
    let seen: Vec<_> = all.into_iter().map(|b| b.name).collect();
    assert_eq!(seen, vec!["b1", "b2", "b3", "b4", "b5"]);
}

async fn update_rejects_bad_masks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let bucket = api.create_bucket(fs_bucket("main")).await.expect("create");
    for paths in [&[][..], &["create_time"][..], &["s3", "filesystem"][..]] {
        let status = api
            .update_bucket(pb::UpdateBucketRequest {
                bucket: Some(pb::Bucket {
                    id: bucket.id.clone(),
                    ..s3_bucket("main", "")
                }),
                update_mask: mask(paths),
            })
            .await
            .expect_err("bad mask");
        assert_eq!(status.code(), Code::InvalidArgument, "{paths:?}");
    }
    // Naming `s3` without sending an S3 location is invalid, not a silent no-op.
    assert_violated(
        api.update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: bucket.id.clone(),
                ..fs_bucket("main")
            }),
            update_mask: mask(&["s3"]),
        })
        .await,
        &["bucket.s3"],
        "s3 mask without s3",
    );
}

async fn delete_refused_while_a_job_targets_the_bucket(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let bucket = api
        .create_bucket(fs_bucket("target"))
        .await
        .expect("create");
    let job = pb::Job {
        name: "nightly".into(),
        source_path: "/data".into(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                bucket_id: bucket.id.clone(),
                prefix: String::new(),
            })),
        }),
        ..Default::default()
    };
    let job = api
        .create_job(job)
        .await
        .expect("a job targeting the bucket");
    assert_code(
        api.delete_bucket(&bucket.id).await,
        Code::FailedPrecondition,
        "referenced bucket",
    );
    get(&server, &token, &bucket.id).await.expect("still there");

    api.delete_job(&job.id).await.expect("delete job");
    api.delete_bucket(&bucket.id)
        .await
        .expect("unreferenced bucket deletes");
}

fn compliance_lock(seconds: i64) -> pb::ObjectLockSettings {
    pb::ObjectLockSettings {
        mode: pb::ObjectLockMode::Compliance.into(),
        min_retention: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

async fn immutability(
    server: &TestServer,
    token: &str,
    id: &str,
) -> Result<pb::BucketImmutability, tonic::Status> {
    let mut buckets = server.as_user(token).buckets;
    let response = buckets
        .get_bucket_immutability(pb::GetBucketImmutabilityRequest { id: id.to_string() })
        .await?;
    Ok(response.into_inner().immutability.expect("immutability"))
}

async fn object_lock_round_trip_and_immutability(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let secret = secret_of(&api).await;
    let maintenance = support::s3_secret(&api, "s3-maintenance", "AKIAMAINTENANCE").await;

    let plain = api
        .create_bucket(s3_bucket("plain", &secret))
        .await
        .expect("create");
    let shown = immutability(&server, &token, &plain.id).await.expect("get");
    assert!(!shown.immutable);
    assert_eq!(shown.object_lock, None);

    let locked = api
        .create_bucket(pb::Bucket {
            object_lock: Some(compliance_lock(86_400)),
            maintenance_secret_id: maintenance.clone(),
            ..s3_bucket("vault", &secret)
        })
        .await
        .expect("create a bucket with Object Lock");
    assert_eq!(locked.object_lock, Some(compliance_lock(86_400)));
    assert_eq!(locked.maintenance_secret_id, maintenance);
    assert_eq!(get(&server, &token, &locked.id).await.expect("get"), locked);
    let shown = immutability(&server, &token, &locked.id)
        .await
        .expect("get");
    assert_eq!(shown.bucket_id, locked.id);
    assert!(shown.immutable);
    assert_eq!(shown.object_lock, Some(compliance_lock(86_400)));
    assert_eq!(shown.snapshot_count, 0);
    assert_eq!(shown.newest_snapshot_locked_until, None);

    // The lock can be changed and removed through the mask.
    let mut buckets = api.buckets.clone();
    let updated = buckets
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: plain.id.clone(),
                object_lock: Some(compliance_lock(3600)),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["object_lock".into()],
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .bucket
        .expect("bucket");
    assert_eq!(updated.object_lock, Some(compliance_lock(3600)));

    // Another user cannot read it.
    let (_, stranger) = server.create_user("mallory").await;
    assert_code(
        immutability(&server, &stranger, &locked.id).await,
        Code::NotFound,
        "a stranger reads another user's bucket immutability",
    );
}

async fn object_lock_is_refused_where_it_cannot_hold(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let secret = secret_of(&api).await;

    // A filesystem cannot lock objects.
    let status = api
        .create_bucket(pb::Bucket {
            object_lock: Some(compliance_lock(60)),
            ..fs_bucket("disk")
        })
        .await
        .expect_err("filesystem with Object Lock");
    assert_violations(&status, &["bucket.object_lock"]);

    // A mode and a retention are required, within bounds.
    let status = api
        .create_bucket(pb::Bucket {
            object_lock: Some(pb::ObjectLockSettings {
                mode: pb::ObjectLockMode::Unspecified.into(),
                min_retention: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }),
            ..s3_bucket("nomode", &secret)
        })
        .await
        .expect_err("no mode");
    assert_violations(&status, &["bucket.object_lock.mode"]);
    let status = api
        .create_bucket(pb::Bucket {
            object_lock: Some(compliance_lock(0)),
            ..s3_bucket("zero", &secret)
        })
        .await
        .expect_err("no retention");
    assert_violations(&status, &["bucket.object_lock.min_retention"]);

    // A maintenance secret must be the owner's.
    let (_, other) = server.create_user("bob").await;
    let foreign = secret_of(&server.as_user(&other)).await;
    let status = api
        .create_bucket(pb::Bucket {
            maintenance_secret_id: foreign,
            ..s3_bucket("borrowed", &secret)
        })
        .await
        .expect_err("someone else's secret");
    assert_violations(&status, &["bucket.maintenance_secret_id"]);
}

async fn bucket_encryption_defaults_to_aes_and_is_fixed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let api = server.as_user(&token);

    let default = api
        .create_bucket(fs_bucket("default"))
        .await
        .expect("create");
    assert_eq!(
        default.encryption,
        pb::RepositoryEncryption::Aes256Gcm as i32,
        "unspecified means encrypted"
    );
    let plain = api
        .create_bucket(pb::Bucket {
            encryption: pb::RepositoryEncryption::None as i32,
            ..fs_bucket("plain")
        })
        .await
        .expect("create unencrypted");
    assert_eq!(plain.encryption, pb::RepositoryEncryption::None as i32);
    let got = get(&server, &token, &plain.id).await.expect("get");
    assert_eq!(
        got.encryption,
        pb::RepositoryEncryption::None as i32,
        "Get shows it"
    );
    let listed = api
        .buckets
        .clone()
        .list_buckets(pb::ListBucketsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .buckets;
    let shown: Vec<(String, i32)> = listed.into_iter().map(|b| (b.name, b.encryption)).collect();
    assert_eq!(
        shown,
        [
            (
                "default".to_string(),
                pb::RepositoryEncryption::Aes256Gcm as i32
            ),
            ("plain".to_string(), pb::RepositoryEncryption::None as i32),
        ],
        "List shows it"
    );

    let unknown = api
        .create_bucket(pb::Bucket {
            encryption: 99,
            ..fs_bucket("odd")
        })
        .await;
    assert_violated(unknown, &["bucket.encryption"], "an unknown encryption");
    let change = api
        .buckets
        .clone()
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: plain.id.clone(),
                encryption: pb::RepositoryEncryption::Aes256Gcm as i32,
                ..Default::default()
            }),
            update_mask: mask(&["encryption"]),
        })
        .await;
    assert_violated(change, &["bucket.encryption"], "encryption after creation");
    let kept = get(&server, &token, &plain.id).await.expect("get");
    assert_eq!(kept.encryption, pb::RepositoryEncryption::None as i32);
}

both_backends!(
    object_lock_round_trip_and_immutability,
    object_lock_is_refused_where_it_cannot_hold,
    bucket_crud_round_trip,
    bucket_encryption_defaults_to_aes_and_is_fixed,
    foreign_bucket_is_not_found,
    duplicate_name_per_owner_is_already_exists,
    invalid_bucket_reports_every_field,
    only_admins_choose_another_owner,
    retention_policy_must_belong_to_the_owner,
    buckets_page_by_name_prefix,
    update_rejects_bad_masks,
    delete_refused_while_a_job_targets_the_bucket,
);
