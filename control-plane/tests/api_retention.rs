//! RetentionService over real gRPC on both catalog backends.

use crate::support;

use coffer_control_plane::catalog::repositories::NewRepositoryFormat;

use coffer_control_plane::model::object::SnapshotCommit;
use coffer_proto::v1 as pb;
use coffer_proto::v1::retention_service_client::RetentionServiceClient;
use prost_types::{Duration, FieldMask, Timestamp};
use support::{
    assert_code, assert_violated, assert_violations, authed, one_byte_file, violated_fields,
    Backend, TestServer,
};
use tonic::transport::Channel;
use tonic::Code;

type Client = RetentionServiceClient<Channel>;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_string()).collect(),
    })
}

fn policy(name: &str) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        name: name.to_string(),
        keep_daily: 7,
        ..Default::default()
    }
}

/// A time `days` from now (negative: in the past), at whole seconds.
fn days_from_now(days: i64) -> Timestamp {
    let time = chrono::Utc::now() + chrono::Duration::days(days);
    Timestamp {
        seconds: time.timestamp(),
        nanos: 0,
    }
}

async fn create_policy(
    client: &mut Client,
    token: &str,
    policy: pb::RetentionPolicy,
) -> Result<pb::RetentionPolicy, tonic::Status> {
    client
        .create_retention_policy(authed(
            token,
            pb::CreateRetentionPolicyRequest {
                retention_policy: Some(policy),
            },
        ))
        .await
        .map(|r| r.into_inner().retention_policy.expect("policy"))
}

async fn create_retention(
    client: &mut Client,
    token: &str,
    retention: pb::ObjectRetention,
) -> Result<pb::ObjectRetention, tonic::Status> {
    client
        .create_object_retention(authed(
            token,
            pb::CreateObjectRetentionRequest {
                object_retention: Some(retention),
            },
        ))
        .await
        .map(|r| r.into_inner().object_retention.expect("retention"))
}

async fn update_retention(
    client: &mut Client,
    token: &str,
    retention: pb::ObjectRetention,
    paths: &[&str],
) -> Result<pb::ObjectRetention, tonic::Status> {
    client
        .update_object_retention(authed(
            token,
            pb::UpdateObjectRetentionRequest {
                object_retention: Some(retention),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(|r| r.into_inner().object_retention.expect("retention"))
}

/// A literal for a UUID column in raw SQL of the given backend.
fn uuid_literal(backend: Backend, id: &str) -> String {
    match backend {
        Backend::Postgres => format!("'{id}'"),
        Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
    }
}

/// Inserts a backup object owned by `owner_id` (the objects API belongs to
/// another service); returns its id.
async fn insert_object(
    server: &TestServer,
    backend: Backend,
    owner_id: &str,
    path: &str,
) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let hex: String = path.bytes().map(|b| format!("{b:02x}")).collect();
    let bytes = match backend {
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
        Backend::Sqlite => format!("X'{hex}'"),
    };
    let repository_id = ensure_repository(server, "repo", owner_id).await;
    server
        .catalog()
        .execute_raw(&format!(
            "INSERT INTO objects (id, owner_id, repository_id, path, path_text, create_time) \
             VALUES ({}, {}, {}, {bytes}, '{path}', '2024-01-01T00:00:00Z')",
            uuid_literal(backend, &id),
            uuid_literal(backend, owner_id),
            uuid_literal(backend, &repository_id.to_string()),
        ))
        .await
        .expect("insert object");
    id
}

/// Inserts a version of an object, with the run that wrote it; returns its id.
async fn insert_version(
    server: &TestServer,
    backend: Backend,
    owner_id: &str,
    object_id: &str,
) -> String {
    let run_id = uuid::Uuid::now_v7().to_string();
    let now = "'2024-01-01T00:00:00Z'";
    server
        .catalog()
        .execute_raw(&format!(
            "INSERT INTO runs (id, owner_id, kind, state, spec, max_attempts, not_before_time, \
             create_time, update_time) VALUES ({}, {}, 'backup', 'succeeded', '{{}}', 1, {now}, {now}, {now})",
            uuid_literal(backend, &run_id),
            uuid_literal(backend, owner_id),
        ))
        .await
        .expect("insert run");
    let id = uuid::Uuid::now_v7().to_string();
    server
        .catalog()
        .execute_raw(&format!(
            "INSERT INTO object_versions (id, object_id, kind, first_run_id, create_time) \
             VALUES ({}, {}, 'file', {}, {now})",
            uuid_literal(backend, &id),
            uuid_literal(backend, object_id),
            uuid_literal(backend, &run_id),
        ))
        .await
        .expect("insert version");
    id
}

fn object_ref(id: &str) -> Option<pb::ResourceRef> {
    Some(pb::ResourceRef {
        kind: pb::ResourceKind::Object as i32,
        id: id.to_string(),
    })
}

async fn policy_crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let created = create_policy(
        &mut retention,
        &token,
        pb::RetentionPolicy {
            name: "Standard (30 days)".into(),
            description: "restic-style".into(),
            keep_last: 3,
            keep_daily: 30,
            keep_monthly: 12,
            keep_within: Some(Duration {
                seconds: 86_400,
                nanos: 0,
            }),
            keep_tags: vec!["pinned".into(), "release=v1.2".into()],
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        },
    )
    .await
    .expect("create");
    assert_eq!(created.owner_id, alice.id);
    assert_eq!(created.keep_daily, 30);
    assert_eq!(created.keep_within.map(|d| d.seconds), Some(86_400));
    assert_eq!(created.keep_tags, vec!["pinned", "release=v1.2"]);
    assert_eq!(created.time_zone, "Europe/Berlin");

    assert_eq!(
        api.retention_policy_by_id(&created.id).await.expect("get"),
        created
    );

    let updated = api
        .update_retention_policy(pb::UpdateRetentionPolicyRequest {
            retention_policy: Some(pb::RetentionPolicy {
                id: created.id.clone(),
                keep_daily: 14,
                keep_tags: vec![],
                name: "ignored".into(),
                ..Default::default()
            }),
            update_mask: mask(&["keep_daily", "keep_tags"]),
        })
        .await
        .expect("update");
    assert_eq!(updated.keep_daily, 14);
    assert!(updated.keep_tags.is_empty());
    assert_eq!(updated.name, "Standard (30 days)");
    assert_eq!(updated.keep_last, 3);

    // Removing every rule through an update is refused.
    let status = api
        .update_retention_policy(pb::UpdateRetentionPolicyRequest {
            retention_policy: Some(pb::RetentionPolicy {
                id: created.id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["keep_last", "keep_daily", "keep_monthly", "keep_within"]),
        })
        .await
        .expect_err("keeps nothing");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a policy that keeps nothing"));

    api.delete_retention_policy(&created.id)
        .await
        .expect("delete");
    let gone = api.retention_policy_by_id(&created.id).await;
    assert_code(gone, Code::NotFound, "deleted");
}

async fn invalid_policy_reports_every_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let status = create_policy(
        &mut retention,
        &token,
        pb::RetentionPolicy {
            name: String::new(),
            keep_last: -1,
            keep_weekly: 2,
            keep_within: Some(Duration {
                seconds: -5,
                nanos: 0,
            }),
            keep_tags: vec!["ok".into(), "1bad".into(), "has space=x".into()],
            time_zone: "not a zone".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("invalid");
    let fields = assert_violations(
        &status,
        &[
            "retention_policy.name",
            "retention_policy.keep_last",
            "retention_policy.keep_within",
            "retention_policy.keep_tags[1]",
            "retention_policy.keep_tags[2]",
            "retention_policy.time_zone",
        ],
    );
    assert!(!fields.contains(&"retention_policy.keep_tags[0]".to_string()));

    let status = create_policy(
        &mut retention,
        &token,
        pb::RetentionPolicy {
            name: "nothing".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("keeps nothing");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("a policy that keeps nothing"),
        "{}",
        status.message()
    );

    for zone in ["UTC", "America/Argentina/Buenos_Aires", "Etc/GMT+5"] {
        create_policy(
            &mut retention,
            &token,
            pb::RetentionPolicy {
                time_zone: zone.into(),
                ..policy(&format!("tz {zone}"))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{zone} is plausible: {e}"));
    }
}

async fn policies_are_owned(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (bob, bob_token) = server.create_user("bob").await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let alices = create_policy(&mut retention, &alice_token, policy("daily"))
        .await
        .expect("create");
    assert_code(
        create_policy(&mut retention, &alice_token, policy("daily")).await,
        Code::AlreadyExists,
        "duplicate",
    );
    create_policy(&mut retention, &bob_token, policy("daily"))
        .await
        .expect("same name, other owner");

    assert_code(
        server
            .as_user(&bob_token)
            .retention_policy_by_id(&alices.id)
            .await,
        Code::NotFound,
        "foreign policy",
    );
    assert_code(
        server
            .as_user(&bob_token)
            .delete_retention_policy(&alices.id)
            .await,
        Code::NotFound,
        "foreign delete",
    );

    assert_code(
        create_policy(
            &mut retention,
            &bob_token,
            pb::RetentionPolicy {
                owner_id: alice.id.clone(),
                ..policy("for alice")
            },
        )
        .await,
        Code::PermissionDenied,
        "non-admin for another owner",
    );
    let for_bob = create_policy(
        &mut retention,
        &server.admin_token,
        pb::RetentionPolicy {
            owner_id: bob.id.clone(),
            ..policy("weekly")
        },
    )
    .await
    .expect("admin for bob");
    assert_eq!(for_bob.owner_id, bob.id);

    // Lists: own only for users, paged; admins may filter by owner.
    for i in 0..4 {
        create_policy(&mut retention, &alice_token, policy(&format!("p{i}")))
            .await
            .expect("create");
    }
    let request = pb::ListRetentionPoliciesRequest {
        page_size: 2,
        owner_id: bob.id.clone(),
        ..Default::default()
    };
    let all = server
        .as_user(&alice_token)
        .all_retention_policies(request)
        .await;
    let seen: Vec<_> = all.into_iter().map(|p| p.name).collect();
    assert_eq!(seen, vec!["daily", "p0", "p1", "p2", "p3"]);
    let bobs = server
        .admin()
        .retention
        .list_retention_policies(pb::ListRetentionPoliciesRequest {
            owner_id: bob.id.clone(),
            ..Default::default()
        })
        .await
        .expect("admin list")
        .into_inner();
    let names: Vec<_> = bobs
        .retention_policies
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["daily", "weekly"]);
}

async fn delete_refused_while_a_bucket_uses_the_policy(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let used = create_policy(&mut retention, &token, policy("used"))
        .await
        .expect("policy");
    let bucket = server
        .as_user(&token)
        .create_bucket(pb::Bucket {
            name: "main".into(),
            location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
                path: "/srv/backups".into(),
            })),
            retention_policy_id: used.id.clone(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    let status = server
        .as_user(&token)
        .delete_retention_policy(&used.id)
        .await
        .expect_err("referenced policy");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("bucket"), "{}", status.message());

    server
        .as_user(&token)
        .buckets
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(pb::Bucket {
                id: bucket.id,
                ..Default::default()
            }),
            update_mask: mask(&["retention_policy_id"]),
        })
        .await
        .expect("detach policy");
    server
        .as_user(&token)
        .delete_retention_policy(&used.id)
        .await
        .expect("unreferenced policy deletes");
}

async fn object_retention_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let object = insert_object(&server, backend, &alice.id, "/etc/hosts").await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let pol = create_policy(&mut retention, &token, policy("objects"))
        .await
        .expect("policy");

    let until = days_from_now(30);
    let created = create_retention(
        &mut retention,
        &token,
        pb::ObjectRetention {
            resource: object_ref(&object),
            policy_id: pol.id.clone(),
            retain_until_time: Some(until),
            ..Default::default()
        },
    )
    .await
    .expect("create");
    assert_eq!(created.owner_id, alice.id);
    assert_eq!(created.resource, object_ref(&object));
    assert_eq!(created.retain_until_time, Some(until));
    assert!(!created.legal_hold);

    let fetched = server
        .as_user(&token)
        .get_object_retention(pb::GetObjectRetentionRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get");
    assert_eq!(fetched, created);

    // Later is fine; earlier or removed is refused.
    let later = days_from_now(60);
    let moved = update_retention(
        &mut retention,
        &token,
        pb::ObjectRetention {
            id: created.id.clone(),
            retain_until_time: Some(later),
            ..Default::default()
        },
        &["retain_until_time"],
    )
    .await
    .expect("move later");
    assert_eq!(moved.retain_until_time, Some(later));
    assert_eq!(moved.policy_id, pol.id);
    for earlier in [Some(days_from_now(10)), None] {
        let status = update_retention(
            &mut retention,
            &token,
            pb::ObjectRetention {
                id: created.id.clone(),
                retain_until_time: earlier,
                ..Default::default()
            },
            &["retain_until_time"],
        )
        .await
        .expect_err("move earlier");
        assert_eq!(status.code(), Code::FailedPrecondition, "{earlier:?}");
    }

    // The policy is in use, and the retention is still active.
    assert_code(
        server
            .as_user(&token)
            .delete_retention_policy(&pol.id)
            .await,
        Code::FailedPrecondition,
        "policy used by an object retention",
    );
    assert_code(
        server
            .as_user(&token)
            .delete_object_retention(&created.id)
            .await,
        Code::FailedPrecondition,
        "retain-until in the future",
    );

    // A legal hold blocks deletion until it is lifted.
    let held = create_retention(
        &mut retention,
        &token,
        pb::ObjectRetention {
            resource: object_ref(&object),
            legal_hold: true,
            ..Default::default()
        },
    )
    .await
    .expect("legal hold");
    assert_code(
        server
            .as_user(&token)
            .delete_object_retention(&held.id)
            .await,
        Code::FailedPrecondition,
        "legal hold",
    );
    let lifted = update_retention(
        &mut retention,
        &token,
        pb::ObjectRetention {
            id: held.id.clone(),
            legal_hold: false,
            ..Default::default()
        },
        &["legal_hold"],
    )
    .await
    .expect("lift hold");
    assert!(!lifted.legal_hold);
    server
        .as_user(&token)
        .delete_object_retention(&held.id)
        .await
        .expect("delete lifted hold");

    let listed = server
        .as_user(&token)
        .retention
        .list_object_retentions(pb::ListObjectRetentionsRequest {
            resource: object_ref(&object),
            policy_id: pol.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = listed.object_retentions.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![created.id.clone()]);
}

async fn object_version_retention_and_access(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let object = insert_object(&server, backend, &alice.id, "/home/alice/notes").await;
    let version = insert_version(&server, backend, &alice.id, &object).await;
    let mut retention = RetentionServiceClient::new(server.channel().await);

    let version_ref = Some(pb::ResourceRef {
        kind: pb::ResourceKind::ObjectVersion as i32,
        id: version.clone(),
    });
    let created = create_retention(
        &mut retention,
        &alice_token,
        pb::ObjectRetention {
            resource: version_ref.clone(),
            legal_hold: true,
            ..Default::default()
        },
    )
    .await
    .expect("version retention");
    assert_eq!(created.resource, version_ref);
    assert_eq!(created.owner_id, alice.id);

    // Bob can neither hold Alice's object or version nor see Alice's retention.
    for resource in [object_ref(&object), version_ref.clone()] {
        assert_code(
            create_retention(
                &mut retention,
                &bob_token,
                pb::ObjectRetention {
                    resource,
                    legal_hold: true,
                    ..Default::default()
                },
            )
            .await,
            Code::NotFound,
            "foreign object",
        );
    }
    assert_code(
        server
            .as_user(&bob_token)
            .get_object_retention(pb::GetObjectRetentionRequest {
                id: created.id.clone(),
            })
            .await,
        Code::NotFound,
        "foreign retention",
    );
    let listed = server
        .as_user(&bob_token)
        .retention
        .list_object_retentions(pb::ListObjectRetentionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.object_retentions.is_empty());

    // A missing object is not found; a wrong kind or an empty hold is invalid.
    assert_code(
        create_retention(
            &mut retention,
            &alice_token,
            pb::ObjectRetention {
                resource: object_ref(&uuid::Uuid::now_v7().to_string()),
                legal_hold: true,
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
        "missing object",
    );
    let status = create_retention(
        &mut retention,
        &alice_token,
        pb::ObjectRetention {
            resource: Some(pb::ResourceRef {
                kind: pb::ResourceKind::Run as i32,
                id: object.clone(),
            }),
            ..Default::default()
        },
    )
    .await
    .expect_err("wrong kind");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    assert!(
        fields.contains(&"object_retention.resource.kind".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"object_retention".to_string()),
        "{fields:?}"
    );

    // A policy must belong to the object's owner.
    let mut bobs_policies = RetentionServiceClient::new(server.channel().await);
    let bobs = create_policy(&mut bobs_policies, &bob_token, policy("bobs"))
        .await
        .expect("bob's policy");
    assert_violated(
        create_retention(
            &mut retention,
            &alice_token,
            pb::ObjectRetention {
                resource: object_ref(&object),
                policy_id: bobs.id,
                ..Default::default()
            },
        )
        .await,
        &["object_retention.policy_id"],
        "foreign policy",
    );
}

// --- PlanRetention ------------------------------------------------------------

/// A user with a bucket, for the plan tests.
struct PlanFixture {
    server: TestServer,
    backend: Backend,
    owner: pb::User,
    token: String,
    retention: Client,
}

impl PlanFixture {
    async fn start(backend: Backend) -> PlanFixture {
        let server = TestServer::start(backend).await;
        let (owner, token) = server.create_user("alice").await;
        let retention = RetentionServiceClient::new(server.channel().await);
        PlanFixture {
            server,
            backend,
            owner,
            token,
            retention,
        }
    }

    async fn policy(&mut self, policy: pb::RetentionPolicy) -> String {
        create_policy(&mut self.retention, &self.token, policy)
            .await
            .expect("policy")
            .id
    }

    async fn bucket(&self, name: &str, policy_id: &str) -> String {
        self.server
            .as_user(&self.token)
            .create_bucket(pb::Bucket {
                name: name.into(),
                location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
                    path: format!("/srv/{name}"),
                })),
                retention_policy_id: policy_id.into(),
                ..Default::default()
            })
            .await
            .expect("bucket")
            .id
    }

    async fn job(&self, name: &str, bucket_id: &str, policy_id: &str) -> String {
        self.server
            .as_user(&self.token)
            .create_job(pb::Job {
                name: name.into(),
                source_path: "/data".into(),
                target: Some(pb::Target {
                    destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                        bucket_id: bucket_id.into(),
                        prefix: name.into(),
                    })),
                }),
                retention_policy_id: policy_id.into(),
                ..Default::default()
            })
            .await
            .expect("job")
            .id
    }

    /// Records a run of `kind` in `state` finished at `finished` (RFC 3339),
    /// as the lease protocol would; returns its id. Call in time order: run
    /// ids are UUIDv7, and version ranges follow them.
    async fn run(
        &self,
        kind: &str,
        state: &str,
        job_id: Option<&str>,
        bucket_id: &str,
        finished: &str,
    ) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let backend = self.backend;
        let job = job_id.map_or("NULL".to_string(), |job| uuid_literal(backend, job));
        let time = format!("'{finished}'");
        let repository_id =
            ensure_repository(&self.server, &repository(bucket_id, job_id), &self.owner.id).await;
        self.server
            .catalog()
            .execute_raw(&format!(
                "INSERT INTO runs (id, owner_id, job_id, kind, state, spec, target_bucket_id, \
                 max_attempts, not_before_time, create_time, update_time, finish_time, repository_id) \
                 VALUES ({}, {}, {job}, '{kind}', '{state}', '{{}}', {}, 1, {time}, {time}, {time}, \
                 {time}, {})",
                uuid_literal(backend, &id),
                uuid_literal(backend, &self.owner.id),
                uuid_literal(backend, bucket_id),
                uuid_literal(backend, &repository_id.to_string()),
            ))
            .await
            .expect("insert run");
        id
    }

    /// A succeeded backup of `job_id` (or an ad-hoc one) into `bucket_id`.
    async fn snapshot(&self, job_id: Option<&str>, bucket_id: &str, finished: &str) -> String {
        self.run("backup", "succeeded", job_id, bucket_id, finished)
            .await
    }

    /// A snapshot of `job_id` holding `files` (`(path, content hash)`),
    /// committed as a worker's completion would.
    async fn snapshot_with_files(
        &self,
        job_id: &str,
        bucket_id: &str,
        finished: &str,
        files: &[(&str, &str)],
    ) -> String {
        let run_id = self.snapshot(Some(job_id), bucket_id, finished).await;
        let id = |text: &str| uuid::Uuid::parse_str(text).expect("uuid");
        let repository_id = ensure_repository(
            &self.server,
            &repository(bucket_id, Some(job_id)),
            &self.owner.id,
        )
        .await;
        self.server
            .catalog()
            .apply_snapshot(&SnapshotCommit {
                run_id: id(&run_id),
                owner_id: id(&self.owner.id),
                bucket_id: Some(id(bucket_id)),
                repository_id,
                job_id: Some(id(job_id)),
                entries: files
                    .iter()
                    .map(|(path, hash)| one_byte_file(path, hash))
                    .collect(),
                removed: None,
            })
            .await
            .expect("apply snapshot");
        run_id
    }

    async fn tag(&self, kind: pb::ResourceKind, id: &str, key: &str, value: &str) {
        self.server
            .as_user(&self.token)
            .tags
            .create_tag(pb::CreateTagRequest {
                tag: Some(pb::Tag {
                    resource: Some(pb::ResourceRef {
                        kind: kind as i32,
                        id: id.into(),
                    }),
                    key: key.into(),
                    value: value.into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("tag");
    }

    /// The versions of the object at `path` in the job, newest first.
    async fn versions(&self, job_id: &str, path: &str) -> (String, Vec<pb::ObjectVersion>) {
        let object = self
            .server
            .as_user(&self.token)
            .objects
            .list_objects(pb::ListObjectsRequest {
                job_id: job_id.into(),
                path_prefix: path.into(),
                ..Default::default()
            })
            .await
            .expect("objects")
            .into_inner()
            .objects
            .into_iter()
            .find(|o| o.path == path)
            .expect("object");
        let versions = self
            .server
            .as_user(&self.token)
            .objects
            .list_object_versions(pb::ListObjectVersionsRequest {
                object_id: object.id.clone(),
                ..Default::default()
            })
            .await
            .expect("versions")
            .into_inner()
            .versions;
        (object.id, versions)
    }

    async fn hold(&mut self, resource: pb::ResourceRef, hold: pb::ObjectRetention) {
        create_retention(
            &mut self.retention,
            &self.token,
            pb::ObjectRetention {
                resource: Some(resource),
                ..hold
            },
        )
        .await
        .expect("object retention");
    }

    async fn plan(
        &mut self,
        token: &str,
        request: pb::PlanRetentionRequest,
    ) -> Result<pb::PlanRetentionResponse, tonic::Status> {
        self.server
            .as_user(token)
            .retention
            .plan_retention(request)
            .await
            .map(|r| r.into_inner())
    }

    async fn plan_job(&mut self, job_id: &str) -> pb::PlanRetentionResponse {
        let token = self.token.clone();
        self.plan(
            &token,
            pb::PlanRetentionRequest {
                job_id: job_id.into(),
                ..Default::default()
            },
        )
        .await
        .expect("plan")
    }
}

/// The id of the repository at `location`, owned by `owner_id` when new.
async fn ensure_repository(server: &TestServer, location: &str, owner_id: &str) -> uuid::Uuid {
    let owner_id = uuid::Uuid::parse_str(owner_id).expect("owner id");
    server
        .catalog()
        .ensure_repository(location, owner_id, |_| {
            Ok(NewRepositoryFormat::unencrypted())
        })
        .await
        .expect("repository")
        .id
}

/// The repository a job's (or an ad-hoc) backup into a bucket writes to.
fn repository(bucket_id: &str, job_id: Option<&str>) -> String {
    format!("bucket:{bucket_id}/{}", job_id.unwrap_or("adhoc"))
}

/// `(run id, reasons)` of every decision, in the plan's order.
fn decisions(plan: &pb::PlanRetentionResponse) -> Vec<(String, Vec<String>)> {
    plan.decisions
        .iter()
        .map(|d| {
            assert_eq!(d.keep, !d.reasons.is_empty(), "{d:?}");
            (d.run_id.clone(), d.reasons.clone())
        })
        .collect()
}

fn expect(entries: &[(&String, &[&str])]) -> Vec<(String, Vec<String>)> {
    entries
        .iter()
        .map(|(run, reasons)| {
            (
                (*run).clone(),
                reasons.iter().map(|r| (*r).to_string()).collect(),
            )
        })
        .collect()
}

fn version_ref(id: &str) -> pb::ResourceRef {
    pb::ResourceRef {
        kind: pb::ResourceKind::ObjectVersion as i32,
        id: id.into(),
    }
}

async fn plan_lists_what_a_job_policy_keeps_and_why(backend: Backend) {
    let mut fx = PlanFixture::start(backend).await;
    // Days in Tokyo: 23:30 UTC on 4 March is already 5 March there.
    let policy = fx
        .policy(pb::RetentionPolicy {
            name: "two tokyo days".into(),
            keep_daily: 2,
            keep_tags: vec!["release".into()],
            time_zone: "Asia/Tokyo".into(),
            ..Default::default()
        })
        .await;
    let bucket = fx.bucket("main", "").await;
    let job = fx.job("home", &bucket, &policy).await;
    let other = fx.job("other", &bucket, "").await;
    let r0 = fx
        .snapshot(Some(&job), &bucket, "2024-03-01T10:00:00Z")
        .await;
    let r1 = fx
        .snapshot(Some(&job), &bucket, "2024-03-02T10:00:00Z")
        .await;
    let r2 = fx
        .snapshot(Some(&job), &bucket, "2024-03-03T08:00:00Z")
        .await;
    let r3 = fx
        .snapshot(Some(&job), &bucket, "2024-03-03T20:00:00Z")
        .await;
    let r4 = fx
        .snapshot(Some(&job), &bucket, "2024-03-04T09:00:00Z")
        .await;
    let r5 = fx
        .snapshot(Some(&job), &bucket, "2024-03-04T23:30:00Z")
        .await;
    // Not snapshots of this job: ignored.
    fx.run(
        "backup",
        "failed",
        Some(&job),
        &bucket,
        "2024-03-05T01:00:00Z",
    )
    .await;
    fx.run(
        "restore",
        "succeeded",
        Some(&job),
        &bucket,
        "2024-03-05T02:00:00Z",
    )
    .await;
    fx.snapshot(Some(&other), &bucket, "2024-03-05T03:00:00Z")
        .await;
    fx.tag(pb::ResourceKind::Run, &r0, "release", "v1").await;

    let plan = fx.plan_job(&job).await;
    assert_eq!(
        decisions(&plan),
        expect(&[
            (&r5, &["newest", "keep_daily"]),
            (&r4, &["keep_daily"]),
            (&r3, &[]),
            (&r2, &[]),
            (&r1, &[]),
            (&r0, &["keep_tags"]),
        ])
    );
    assert_eq!((plan.keep_count, plan.remove_count), (3, 3));
    assert!(plan.plan_time.is_some());
    let newest = &plan.decisions[0];
    assert_eq!(newest.job_id, job);
    assert_eq!(newest.policy_id, policy);
    assert_eq!(newest.policy_source, pb::RetentionPolicySource::Job as i32);
    assert_eq!(
        newest.snapshot_time,
        Some(Timestamp {
            seconds: chrono::DateTime::parse_from_rfc3339("2024-03-04T23:30:00Z")
                .expect("time")
                .timestamp(),
            nanos: 0,
        })
    );

    // A dry run changes nothing: the same plan again, and the admin sees it too.
    let again = fx.plan_job(&job).await;
    assert_eq!(decisions(&again), decisions(&plan));
    let admin_token = fx.server.admin_token.clone();
    let by_admin = fx
        .plan(
            &admin_token,
            pb::PlanRetentionRequest {
                job_id: job.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("admin plan");
    assert_eq!(decisions(&by_admin), decisions(&plan));

    // Without a policy anywhere, everything is kept.
    let unmanaged = fx.plan_job(&other).await;
    assert_eq!(unmanaged.decisions.len(), 1);
    assert_eq!(unmanaged.decisions[0].reasons, vec!["newest", "no_policy"]);
    assert_eq!(
        unmanaged.decisions[0].policy_source,
        pb::RetentionPolicySource::None as i32
    );
}

async fn held_versions_keep_their_snapshots(backend: Backend) {
    let mut fx = PlanFixture::start(backend).await;
    // Keeps nothing but the newest snapshot (and that is always kept).
    let keep_last = fx
        .policy(pb::RetentionPolicy {
            name: "last".into(),
            keep_last: 1,
            ..Default::default()
        })
        .await;
    let audited = fx
        .policy(pb::RetentionPolicy {
            name: "audited versions".into(),
            keep_tags: vec!["audit".into()],
            ..Default::default()
        })
        .await;
    let bucket = fx.bucket("main", "").await;
    let job = fx.job("home", &bucket, &keep_last).await;
    // a.txt and c.txt change in every snapshot; b.txt in r2 only.
    let mut runs = Vec::new();
    for (day, a, b) in [
        (1, "a0", "b0"),
        (2, "a1", "b0"),
        (3, "a2", "b1"),
        (4, "a3", "b1"),
        (5, "a4", "b1"),
    ] {
        let c = format!("c{day}");
        runs.push(
            fx.snapshot_with_files(
                &job,
                &bucket,
                &format!("2024-05-0{day}T12:00:00Z"),
                &[("a.txt", a), ("b.txt", b), ("c.txt", &c)],
            )
            .await,
        );
    }
    let (_, a_versions) = fx.versions(&job, "a.txt").await;
    let (b_object, _) = fx.versions(&job, "b.txt").await;
    let (c_object, c_versions) = fx.versions(&job, "c.txt").await;
    let first_of = |versions: &[pb::ObjectVersion], run: &str| {
        versions
            .iter()
            .find(|v| v.first_run_id == run)
            .expect("version first seen in run")
            .id
            .clone()
    };

    // a's first version (only in r0) is under legal hold; its second (only
    // in r1) held until next year; its fourth (r3) was held until last year.
    fx.hold(
        version_ref(&first_of(&a_versions, &runs[0])),
        pb::ObjectRetention {
            legal_hold: true,
            ..Default::default()
        },
    )
    .await;
    fx.hold(
        version_ref(&first_of(&a_versions, &runs[1])),
        pb::ObjectRetention {
            retain_until_time: Some(days_from_now(365)),
            ..Default::default()
        },
    )
    .await;
    fx.hold(
        version_ref(&first_of(&a_versions, &runs[3])),
        pb::ObjectRetention {
            retain_until_time: Some(days_from_now(-365)),
            ..Default::default()
        },
    )
    .await;
    // The whole of b under legal hold: b0 (r0-r1) and b1 (r2-r4).
    fx.hold(
        object_ref(&b_object).expect("ref"),
        pb::ObjectRetention {
            legal_hold: true,
            ..Default::default()
        },
    )
    .await;
    // c's versions are kept by a policy when tagged `audit`: c3 (only in r2).
    fx.tag(
        pb::ResourceKind::ObjectVersion,
        &first_of(&c_versions, &runs[2]),
        "audit",
        "2024",
    )
    .await;
    fx.hold(
        object_ref(&c_object).expect("ref"),
        pb::ObjectRetention {
            policy_id: audited,
            ..Default::default()
        },
    )
    .await;

    let plan = fx.plan_job(&job).await;
    assert_eq!(
        decisions(&plan),
        expect(&[
            (&runs[4], &["newest", "keep_last", "legal_hold"]),
            (&runs[3], &[]),
            (&runs[2], &["object_policy"]),
            (&runs[1], &["legal_hold", "retain_until"]),
            (&runs[0], &["legal_hold"]),
        ])
    );
}

async fn bucket_plan_decides_each_job_on_its_own(backend: Backend) {
    let mut fx = PlanFixture::start(backend).await;
    let keep_one = fx
        .policy(pb::RetentionPolicy {
            name: "one".into(),
            keep_last: 1,
            ..Default::default()
        })
        .await;
    let keep_two = fx
        .policy(pb::RetentionPolicy {
            name: "two".into(),
            keep_last: 2,
            ..Default::default()
        })
        .await;
    let bucket = fx.bucket("main", &keep_one).await;
    let elsewhere = fx.bucket("elsewhere", "").await;
    let by_bucket = fx.job("by-bucket", &bucket, "").await;
    let own = fx.job("own-policy", &bucket, &keep_two).await;
    let other_bucket = fx.job("other-bucket", &elsewhere, "").await;
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut adhoc = Vec::new();
    for day in 1..=3 {
        let at = |hour: u32| format!("2024-06-0{day}T{hour:02}:00:00Z");
        a.push(fx.snapshot(Some(&by_bucket), &bucket, &at(1)).await);
        b.push(fx.snapshot(Some(&own), &bucket, &at(2)).await);
        adhoc.push(fx.snapshot(None, &bucket, &at(3)).await);
        fx.snapshot(Some(&other_bucket), &elsewhere, &at(4)).await;
    }
    let token = fx.token.clone();
    let plan = fx
        .plan(
            &token,
            pb::PlanRetentionRequest {
                bucket_id: bucket.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("bucket plan");
    assert_eq!(
        decisions(&plan),
        expect(&[
            (&adhoc[2], &["newest", "keep_last"]),
            (&b[2], &["newest", "keep_last"]),
            (&a[2], &["newest", "keep_last"]),
            (&adhoc[1], &[]),
            (&b[1], &["keep_last"]),
            (&a[1], &[]),
            (&adhoc[0], &[]),
            (&b[0], &[]),
            (&a[0], &[]),
        ])
    );
    let source_of = |run: &str| {
        plan.decisions
            .iter()
            .find(|d| d.run_id == run)
            .map(|d| (d.job_id.clone(), d.policy_source))
            .expect("decision")
    };
    assert_eq!(
        source_of(&a[0]),
        (by_bucket.clone(), pb::RetentionPolicySource::Bucket as i32)
    );
    assert_eq!(
        source_of(&b[0]),
        (own.clone(), pb::RetentionPolicySource::Job as i32)
    );
    assert_eq!(
        source_of(&adhoc[0]),
        (String::new(), pb::RetentionPolicySource::Bucket as i32)
    );

    // A job plan decides a job's snapshots exactly as the bucket plan does.
    let job_plan = fx.plan_job(&by_bucket).await;
    let in_bucket_plan: Vec<_> = decisions(&plan)
        .into_iter()
        .filter(|(run, _)| a.contains(run))
        .collect();
    assert_eq!(decisions(&job_plan), in_bucket_plan);

    // The default policy applies where neither job nor bucket names one.
    let unmanaged = fx.plan_job(&other_bucket).await;
    assert_eq!(unmanaged.remove_count, 0);
    fx.server
        .admin()
        .configurations
        .create_configuration(pb::CreateConfigurationRequest {
            configuration: Some(pb::Configuration {
                key: "default_retention_policy_id".into(),
                value: keep_two.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("default policy");
    let defaulted = fx.plan_job(&other_bucket).await;
    assert_eq!((defaulted.keep_count, defaulted.remove_count), (2, 1));
    assert!(defaulted.decisions.iter().all(|d| d.policy_source
        == pb::RetentionPolicySource::Default as i32
        && d.policy_id == keep_two));
}

async fn plan_requests_are_checked(backend: Backend) {
    let mut fx = PlanFixture::start(backend).await;
    let bucket = fx.bucket("main", "").await;
    let job = fx.job("home", &bucket, "").await;
    let token = fx.token.clone();
    let request = |job_id: &str, bucket_id: &str| pb::PlanRetentionRequest {
        job_id: job_id.into(),
        bucket_id: bucket_id.into(),
    };

    for (job_id, bucket_id, fields) in [
        ("", "", vec!["job_id", "bucket_id"]),
        (job.as_str(), bucket.as_str(), vec!["job_id", "bucket_id"]),
        ("not-a-uuid", "", vec!["job_id"]),
        ("", "not-a-uuid", vec!["bucket_id"]),
    ] {
        let status = fx
            .plan(&token, request(job_id, bucket_id))
            .await
            .expect_err("invalid request");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{job_id:?} {bucket_id:?}"
        );
        assert_eq!(violated_fields(&status), fields);
    }

    let missing = uuid::Uuid::now_v7().to_string();
    for req in [request(&missing, ""), request("", &missing)] {
        assert_code(fx.plan(&token, req).await, Code::NotFound, "missing");
    }

    // Another user's job and bucket are not found; a worker token is refused.
    let (_, bob_token) = fx.server.create_user("bob").await;
    for req in [request(&job, ""), request("", &bucket)] {
        assert_code(fx.plan(&bob_token, req).await, Code::NotFound, "foreign");
    }
    let worker_token = fx.server.worker_token.clone();
    assert_code(
        fx.plan(&worker_token, request(&job, "")).await,
        Code::PermissionDenied,
        "worker token",
    );

    // An empty job plans to nothing.
    let empty = fx.plan_job(&job).await;
    assert!(empty.decisions.is_empty());
}

async fn apply_queues_exactly_what_the_plan_removes(backend: Backend) {
    let mut fx = PlanFixture::start(backend).await;
    let policy = fx
        .policy(pb::RetentionPolicy {
            name: "last two".into(),
            keep_last: 2,
            ..Default::default()
        })
        .await;
    let bucket = fx.bucket("main", "").await;
    let job = fx.job("home", &bucket, &policy).await;
    let mut snapshots = Vec::new();
    for day in 1..=4 {
        let id = fx
            .snapshot(Some(&job), &bucket, &format!("2024-03-0{day}T10:00:00Z"))
            .await;
        // What a worker's completion records: the spec and the manifest.
        let spec = format!(
            r#"{{"kind":"backup","job_id":"{job}","source_path":"/data","target":{{"kind":"bucket","bucket_id":"{bucket}","prefix":""}}}}"#
        );
        fx.server
            .catalog()
            .execute_raw(&format!(
                "UPDATE runs SET spec = '{spec}', manifest_key = 'snapshots/{id}' WHERE id = {}",
                uuid_literal(backend, &id)
            ))
            .await
            .expect("complete snapshot");
        snapshots.push(id);
    }
    let plan = fx.plan_job(&job).await;
    let planned: Vec<String> = plan
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.run_id.clone())
        .collect();
    assert_eq!(planned, vec![snapshots[1].clone(), snapshots[0].clone()]);

    let token = fx.token.clone();
    let run_id = fx
        .server
        .as_user(&token)
        .retention
        .apply_retention(pb::ApplyRetentionRequest {
            job_id: job.clone(),
            ..Default::default()
        })
        .await
        .expect("apply")
        .into_inner()
        .run_id;
    let run = fx
        .server
        .as_user(&token)
        .runs
        .get_run(pb::GetRunRequest { id: run_id })
        .await
        .expect("retention run")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(run.kind, pb::RunKind::Retention as i32);
    assert_eq!(run.owner_id, fx.owner.id);
    let Some(pb::run::Spec::Retention(spec)) = run.spec else {
        panic!("a retention run carries its spec")
    };
    assert_eq!(
        spec.removed_run_ids, planned,
        "apply removes what the plan lists"
    );
    assert_eq!(spec.job_id, job);
    assert!(spec.plan_time.is_some());

    // The same checks as a plan: exactly one scope, and only the owner's.
    assert_code(
        fx.server
            .as_user(&token)
            .retention
            .apply_retention(pb::ApplyRetentionRequest::default())
            .await,
        Code::InvalidArgument,
        "no scope",
    );
    let (_, bob_token) = fx.server.create_user("bob").await;
    assert_code(
        fx.server
            .as_user(&bob_token)
            .retention
            .apply_retention(pb::ApplyRetentionRequest {
                job_id: job.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "foreign job",
    );
}

both_backends!(
    policy_crud_round_trip,
    invalid_policy_reports_every_field,
    policies_are_owned,
    delete_refused_while_a_bucket_uses_the_policy,
    object_retention_lifecycle,
    object_version_retention_and_access,
    plan_lists_what_a_job_policy_keeps_and_why,
    held_versions_keep_their_snapshots,
    bucket_plan_decides_each_job_on_its_own,
    plan_requests_are_checked,
    apply_queues_exactly_what_the_plan_removes,
);
