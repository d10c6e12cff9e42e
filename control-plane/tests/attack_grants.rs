//! Attacks on data-plane grants and repository ownership, as a tenant with
//! nothing but an API token would make them, over real gRPC on both catalog
//! backends. Each asserts the refusal (code, field) and that nothing was
//! created: no job, no run, no grant.

use crate::support;

use coffer_control_plane::testing::{Api, ALL_USES};
use coffer_proto::v1 as pb;
use pb::create_run_request::Spec;
use support::{assert_code, assert_violations, Backend, TestServer};
use tonic::Code;

/// A server whose admin has no grant, with a user `name` holding no grant.
async fn server_and_user(backend: Backend, name: &str) -> (TestServer, pb::User, Api) {
    let server = TestServer::start(backend).await;
    server.revoke_admin_grants().await;
    let (user, token) = server.admin().create_user_without_grants(name).await;
    let api = server.as_user(&token);
    (server, user, api)
}

fn job(source: &str, repository: &str) -> pb::Job {
    pb::Job {
        name: "attack".to_string(),
        source_path: source.to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                repository.to_string(),
            )),
        }),
        ..Default::default()
    }
}

fn ad_hoc(source: &str, repository: &str) -> Spec {
    Spec::Backup(pb::BackupSpec {
        source_path: source.to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                repository.to_string(),
            )),
        }),
        ..Default::default()
    })
}

/// Asserts PERMISSION_DENIED whose message starts with `field`.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) -> String {
    match result {
        Ok(answer) => panic!("{field}: expected PERMISSION_DENIED, got {answer:?}"),
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().starts_with(field),
                "{field} not named: {status:?}"
            );
            status.message().to_string()
        }
    }
}

async fn runs_of(api: &Api) -> Vec<pb::Run> {
    api.runs
        .clone()
        .list_runs(pb::ListRunsRequest::default())
        .await
        .expect("list runs")
        .into_inner()
        .runs
}

async fn assert_nothing_created(api: &Api) {
    assert!(api
        .all_jobs(pb::ListJobsRequest::default())
        .await
        .is_empty());
    assert!(runs_of(api).await.is_empty());
}

async fn grant(
    server: &TestServer,
    user: &pb::User,
    root: &str,
    uses: &[pb::GrantUse],
) -> pb::Grant {
    server
        .admin()
        .grant(&user.id, root, uses)
        .await
        .expect("admin creates grant")
}

/// A user without grants can read nothing: not the control plane's data
/// directory (where admin.token lives), not `/`.
async fn a_user_without_grants_backs_up_nothing(backend: Backend) {
    let (_server, _user, api) = server_and_user(backend, "mallory").await;
    for source in ["/var/lib/coffer", "/", "/etc"] {
        assert_denied(
            api.create_job(job(source, "/srv/mallory/repo")).await,
            "job.source_path",
        );
        assert_denied(
            api.create_run(ad_hoc(source, "/srv/mallory/repo")).await,
            "backup.source_path",
        );
    }
    assert_nothing_created(&api).await;
}

/// Another user's root is out of reach, and the refusal says nothing about
/// that user's grant.
async fn another_users_grant_root_is_out_of_reach(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    let (alice, _) = server.admin().create_user_without_grants("alice").await;
    let alices = grant(&server, &alice, "/srv/alice", ALL_USES).await;
    grant(&server, &mallory, "/srv/mallory", ALL_USES).await;
    let message = assert_denied(
        api.create_job(job("/srv/alice/documents", "/srv/mallory/repo"))
            .await,
        "job.source_path",
    );
    assert!(!message.contains(&alices.id) && !message.contains(&alice.id));
    assert_denied(
        api.create_job(job("/srv/mallory/src", "/srv/alice/repo"))
            .await,
        "job.target.filesystem_path",
    );
    assert_nothing_created(&api).await;
    // Grants are the admin's to give, and each user sees only their own.
    let own = pb::Grant {
        grantee_id: mallory.id.clone(),
        root: "/".to_string(),
        uses: vec![pb::GrantUse::BackupSource as i32],
        ..Default::default()
    };
    assert_code(
        api.create_grant(own).await,
        Code::PermissionDenied,
        "self-grant",
    );
    assert_code(
        api.delete_grant(&alices.id).await,
        Code::PermissionDenied,
        "delete",
    );
    assert_code(
        api.get_grant(pb::GetGrantRequest {
            id: alices.id.clone(),
        })
        .await,
        Code::NotFound,
        "foreign grant",
    );
    let visible = api.all_grants(pb::ListGrantsRequest::default()).await;
    assert!(
        visible.iter().all(|g| g.grantee_id == mallory.id),
        "{visible:?}"
    );
    assert_eq!(
        server
            .admin()
            .all_grants(pb::ListGrantsRequest::default())
            .await
            .len(),
        2
    );
}

/// Aliased spellings are not normalised silently: they are refused, naming
/// the field, so one path has one spelling everywhere.
async fn aliased_spellings_are_refused(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    grant(&server, &mallory, "/srv/mallory", ALL_USES).await;
    for source in [
        "/srv/mallory/../alice",
        "/srv/mallory//x",
        "/srv/mallory/./x",
        "/srv/mallory/",
        "srv/mallory",
        "/srv/mallory/\0x",
    ] {
        let status = api
            .create_job(job(source, "/srv/mallory/repo"))
            .await
            .expect_err(source);
        assert_violations(&status, &["job.source_path"]);
        let status = api
            .create_run(ad_hoc("/srv/mallory/src", source))
            .await
            .expect_err(source);
        assert_violations(&status, &["backup.target.filesystem_path"]);
    }
    let status = api
        .create_grant(pb::Grant::default())
        .await
        .expect_err("empty grant");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "users cannot even try"
    );
    let status = server
        .admin()
        .grant(&mallory.id, "/srv//x/", ALL_USES)
        .await
        .expect_err("aliased root");
    assert_violations(&status, &["grant.root"]);
    let status = server
        .admin()
        .grant(&mallory.id, "/srv/x", &[])
        .await
        .expect_err("no uses");
    assert_violations(&status, &["grant.uses"]);
    assert_nothing_created(&api).await;
}

/// "Beneath" is by components: `/data/ab` is not beneath `/data/a`.
async fn a_sibling_with_a_common_prefix_is_not_beneath(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    grant(&server, &mallory, "/data/a", ALL_USES).await;
    assert_denied(
        api.create_job(job("/data/ab", "/data/a/repo")).await,
        "job.source_path",
    );
    assert_nothing_created(&api).await;
    api.create_job(job("/data/a/src", "/data/a/repo"))
        .await
        .expect("beneath the root");
}

/// A grant allows only its uses: a backup-source grant is no repository.
async fn a_grant_allows_only_its_uses(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    grant(&server, &mallory, "/data", &[pb::GrantUse::BackupSource]).await;
    assert_denied(
        api.create_job(job("/data/src", "/data/repo")).await,
        "job.target.filesystem_path",
    );
    let bucket = pb::Bucket {
        name: "local".to_string(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: "/data/repo".to_string(),
        })),
        ..Default::default()
    };
    assert_denied(api.create_bucket(bucket).await, "bucket.filesystem.path");
    assert!(api
        .all_buckets(pb::ListBucketsRequest::default())
        .await
        .is_empty());
    assert_nothing_created(&api).await;
}

/// Admins are exempt only by a grant of their own.
async fn an_admin_without_a_grant_is_refused(backend: Backend) {
    let (server, _mallory, _api) = server_and_user(backend, "mallory").await;
    let admin = server.admin();
    assert_denied(
        admin.create_job(job("/etc", "/srv/repo")).await,
        "job.source_path",
    );
    assert_denied(
        admin.create_run(ad_hoc("/etc", "/srv/repo")).await,
        "backup.source_path",
    );
    assert_nothing_created(&admin).await;
}

/// A job outlives its grant, but its runs are refused once the grant is gone.
async fn a_deleted_grant_refuses_runs_of_an_existing_job(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    let granted = grant(&server, &mallory, "/srv/mallory", ALL_USES).await;
    let created = api
        .create_job(job("/srv/mallory/src", "/srv/mallory/repo"))
        .await
        .expect("granted job");
    server
        .admin()
        .delete_grant(&granted.id)
        .await
        .expect("delete grant");
    let run = Spec::Backup(pb::BackupSpec {
        job_id: created.id.clone(),
        ..Default::default()
    });
    assert_denied(api.create_run(run).await, "job.source_path");
    assert!(runs_of(&api).await.is_empty());
    assert_eq!(api.all_jobs(pb::ListJobsRequest::default()).await.len(), 1);
}

/// Two users granted the same directory still cannot share a repository:
/// the first to use it owns it, the second is refused.
async fn two_users_cannot_share_a_filesystem_repository(backend: Backend) {
    let (server, alice, alice_api) = server_and_user(backend, "alice").await;
    let (bob, bob_token) = server.admin().create_user_without_grants("bob").await;
    let bob_api = server.as_user(&bob_token);
    for user in [&alice, &bob] {
        grant(&server, user, "/srv/shared", ALL_USES).await;
    }
    alice_api
        .create_job(job("/srv/shared/alice", "/srv/shared/repo"))
        .await
        .expect("alice claims the repository");
    assert_denied(
        bob_api
            .create_job(job("/srv/shared/bob", "/srv/shared/repo"))
            .await,
        "job.target",
    );
    assert_denied(
        bob_api
            .create_run(ad_hoc("/srv/shared/bob", "/srv/shared/repo"))
            .await,
        "backup.target",
    );
    let gc = Spec::GarbageCollection(pb::GarbageCollectionSpec {
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/srv/shared/repo".to_string(),
            )),
        }),
        grace_period: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        ..Default::default()
    });
    assert_denied(bob_api.create_run(gc).await, "garbage_collection.target");
    assert_nothing_created(&bob_api).await;
}

/// Users may not collect with less than the minimum grace; admins may.
async fn a_short_grace_is_for_admins_only(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    grant(&server, &mallory, "/srv/mallory", ALL_USES).await;
    let gc = |seconds| {
        Spec::GarbageCollection(pb::GarbageCollectionSpec {
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(
                    "/srv/mallory/repo".to_string(),
                )),
            }),
            grace_period: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
    };
    assert_denied(
        api.create_run(gc(0)).await,
        "garbage_collection.grace_period",
    );
    assert_denied(
        api.create_run(gc(3599)).await,
        "garbage_collection.grace_period",
    );
    assert!(runs_of(&api).await.is_empty());
    api.create_run(gc(3600))
        .await
        .expect("the minimum is allowed");
}

/// RebuildCatalog reads untrusted storage into the catalog: admins only.
async fn rebuild_catalog_is_admin_only(backend: Backend) {
    let (_server, _mallory, api) = server_and_user(backend, "mallory").await;
    let secret = api
        .secrets
        .clone()
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                name: "mallory-keys".to_string(),
                ..Default::default()
            }),
            s3: Some(pb::S3CredentialValues {
                access_key_id: "mallory-access-key".to_string(),
                secret_access_key: "mallory-secret-key".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a secret of her own")
        .into_inner()
        .secret
        .expect("secret in response");
    let bucket = api
        .create_bucket(pb::Bucket {
            name: "s3".to_string(),
            location: Some(pb::bucket::Location::S3(pb::S3Location {
                endpoint: "https://s3.example.com".to_string(),
                bucket: "mallory-bucket".to_string(),
                secret_id: secret.id,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("an S3 bucket needs no grant");
    let refused = api
        .objects
        .clone()
        .rebuild_catalog(pb::RebuildCatalogRequest {
            bucket_id: bucket.id,
            prefix: String::new(),
        })
        .await;
    assert_code(refused, Code::PermissionDenied, "rebuild by a user");
    assert!(runs_of(&api).await.is_empty());
}

/// A grant's worker selector travels into the run, and a run asking for
/// other labels is not covered by it.
async fn a_grants_worker_selector_is_added_to_the_run(backend: Backend) {
    let (server, mallory, api) = server_and_user(backend, "mallory").await;
    server
        .admin()
        .create_grant(pb::Grant {
            grantee_id: mallory.id.clone(),
            root: "/srv/mallory".to_string(),
            uses: ALL_USES.iter().map(|u| *u as i32).collect(),
            worker_selector: [("host".to_string(), "db1".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("grant on db1");
    let run = api
        .create_run(ad_hoc("/srv/mallory/src", "/srv/mallory/repo"))
        .await
        .expect("granted run");
    assert_eq!(
        run.worker_selector.get("host").map(String::as_str),
        Some("db1")
    );
    let elsewhere = Spec::Backup(pb::BackupSpec {
        source_path: "/srv/mallory/src".to_string(),
        target: Some(pb::Target {
            destination: Some(pb::target::Destination::FilesystemPath(
                "/srv/mallory/repo".to_string(),
            )),
        }),
        worker_selector: [("host".to_string(), "web1".to_string())].into(),
        ..Default::default()
    });
    assert_denied(api.create_run(elsewhere).await, "backup.source_path");
    assert_eq!(runs_of(&api).await.len(), 1);
}

both_backends!(
    a_user_without_grants_backs_up_nothing,
    another_users_grant_root_is_out_of_reach,
    aliased_spellings_are_refused,
    a_sibling_with_a_common_prefix_is_not_beneath,
    a_grant_allows_only_its_uses,
    an_admin_without_a_grant_is_refused,
    a_deleted_grant_refuses_runs_of_an_existing_job,
    two_users_cannot_share_a_filesystem_repository,
    a_short_grace_is_for_admins_only,
    rebuild_catalog_is_admin_only,
    a_grants_worker_selector_is_added_to_the_run,
);
