//! JobService over real gRPC on both catalog backends.

use crate::support;

use coffer_proto::v1 as pb;
use support::{
    assert_code, assert_hidden_from_stranger, assert_violated, assert_violations, violated_fields,
    Backend, TestServer,
};
use tonic::Code;
use uuid::Uuid;

/// A filesystem bucket owned by `owner_id`, created by the admin; returns its id.
async fn insert_bucket(server: &TestServer, owner_id: &str, name: &str) -> String {
    let bucket = pb::Bucket {
        owner_id: owner_id.into(),
        name: name.into(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: "/srv/buckets".into(),
        })),
        ..Default::default()
    };
    let created = server.admin().create_bucket(bucket).await;
    created.expect("create bucket").id
}

/// A keep-last-3 retention policy owned by `owner_id`, created by the admin;
/// returns its id.
async fn insert_policy(server: &TestServer, owner_id: &str, name: &str) -> String {
    let policy = pb::RetentionPolicy {
        owner_id: owner_id.into(),
        name: name.into(),
        keep_last: 3,
        ..Default::default()
    };
    let created = server.admin().create_retention_policy(policy).await;
    created.expect("create policy").id
}

fn fs_target(path: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.into())),
    }
}

fn bucket_target(bucket_id: &str, prefix: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
            bucket_id: bucket_id.into(),
            prefix: prefix.into(),
        })),
    }
}

fn job(name: &str, target: pb::Target) -> pb::Job {
    pb::Job {
        name: name.into(),
        description: "nightly".into(),
        source_path: "/data".into(),
        target: Some(target),
        options: Some(pb::JobOptions {
            exclude: vec!["**/*.tmp".into(), "cache/".into()],
            fail_on_file_errors: true,
            one_file_system: false,
            ..Default::default()
        }),
        schedule: Some(pb::Schedule {
            cron: "0 3 * * *".into(),
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        }),
        worker_selector: [("host".to_string(), "db1".to_string())].into(),
        max_attempts: 4,
        ..Default::default()
    }
}

async fn create(server: &TestServer, token: &str, job: pb::Job) -> Result<pb::Job, tonic::Status> {
    server
        .as_user(token)
        .jobs
        .create_job(pb::CreateJobRequest { job: Some(job) })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn get(server: &TestServer, token: &str, id: &str) -> Result<pb::Job, tonic::Status> {
    server
        .as_user(token)
        .jobs
        .get_job(pb::GetJobRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn job_crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("alice").await;
    let api = server.as_user(&token);
    let created = create(&server, &token, job("home", fs_target("/backups")))
        .await
        .expect("create");
    assert_eq!(created.owner_id, user.id);
    let fetched = get(&server, &token, &created.id).await.expect("get");
    assert_eq!(fetched.name, "home");
    assert_eq!(fetched.source_path, "/data");
    assert_eq!(fetched.target, Some(fs_target("/backups")));
    let options = fetched.options.clone().expect("options");
    assert_eq!(options.exclude, vec!["**/*.tmp", "cache/"]);
    assert!(options.fail_on_file_errors);
    let schedule = fetched.schedule.clone().expect("schedule");
    assert_eq!(schedule.cron, "0 3 * * *");
    assert_eq!(schedule.time_zone, "Europe/Berlin");
    assert_eq!(
        fetched.worker_selector.get("host").map(String::as_str),
        Some("db1")
    );
    assert_eq!(fetched.max_attempts, 4);
    assert!(fetched.last_run.is_none());

    let updated = api
        .update_job(pb::UpdateJobRequest {
            job: Some(pb::Job {
                id: created.id.clone(),
                name: "home-renamed".into(),
                source_path: "ignored: not in mask".into(),
                schedule: Some(pb::Schedule {
                    cron: "*/15 8-18 * * 1-5".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "schedule".into()],
            }),
        })
        .await
        .expect("update");
    assert_eq!(updated.name, "home-renamed");
    assert_eq!(updated.source_path, "/data");
    assert_eq!(
        updated.schedule.expect("schedule").cron,
        "*/15 8-18 * * 1-5"
    );
    assert_eq!(updated.max_attempts, 4);

    assert_code(
        api.update_job(pb::UpdateJobRequest {
            job: Some(pb::Job {
                id: created.id.clone(),
                owner_id: Uuid::new_v4().to_string(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner_id".into()],
            }),
        })
        .await,
        Code::PermissionDenied,
        "non-admin changing the owner",
    );

    api.delete_job(&created.id).await.expect("delete");
    assert_code(
        get(&server, &token, &created.id).await,
        Code::NotFound,
        "deleted",
    );
}

async fn invalid_job_reports_every_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("bob").await;
    let bad = pb::Job {
        name: String::new(),
        source_path: "relative/path".into(),
        target: None,
        options: Some(pb::JobOptions {
            exclude: vec![String::new()],
            ..Default::default()
        }),
        schedule: Some(pb::Schedule {
            cron: "61 * * * *".into(),
            time_zone: "Berlin".into(),
            missed_run_policy: 7,
            overlap_policy: -1,
            ..Default::default()
        }),
        retention_policy_id: "nope".into(),
        worker_selector: [("host".to_string(), String::new())].into(),
        max_attempts: 101,
        ..Default::default()
    };
    let status = create(&server, &token, bad).await.expect_err("invalid");
    assert_violations(
        &status,
        &[
            "job.name",
            "job.source_path",
            "job.target",
            "job.options.exclude[0]",
            "job.schedule.cron",
            "job.schedule.time_zone",
            "job.schedule.missed_run_policy",
            "job.schedule.overlap_policy",
            "job.retention_policy_id",
            "job.worker_selector",
            "job.max_attempts",
        ],
    );

    assert_code(
        create(&server, &token, job("x", fs_target("/b")))
            .await
            .map(|_| ())
            .and(
                create(&server, &token, job("x", fs_target("/c")))
                    .await
                    .map(|_| ()),
            ),
        Code::AlreadyExists,
        "duplicate name",
    );
}

async fn bucket_and_policy_must_belong_to_the_owner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let bucket = insert_bucket(&server, &alice.id, "main").await;
    let policy = insert_policy(&server, &alice.id, "short").await;

    let mut with_policy = job("s3", bucket_target(&bucket, "hosts/db1"));
    with_policy.retention_policy_id = policy.clone();
    let created = create(&server, &alice_token, with_policy.clone())
        .await
        .expect("own bucket and policy");
    assert_eq!(created.target, Some(bucket_target(&bucket, "hosts/db1")));
    assert_eq!(created.retention_policy_id, policy);

    let status = create(&server, &bob_token, with_policy)
        .await
        .expect_err("foreign bucket and policy");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    assert!(
        fields.contains(&"job.target.bucket.bucket_id".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"job.retention_policy_id".to_string()),
        "{fields:?}"
    );

    assert_violated(
        create(
            &server,
            &alice_token,
            job("abs", bucket_target(&bucket, "/abs")),
        )
        .await,
        &["job.target.bucket.prefix"],
        "absolute prefix",
    );

    // ListJobs filters by bucket.
    create(&server, &alice_token, job("local", fs_target("/b")))
        .await
        .expect("local job");
    let listed = server
        .as_user(&alice_token)
        .jobs
        .list_jobs(pb::ListJobsRequest {
            bucket_id: bucket.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed.jobs.into_iter().map(|j| j.name).collect();
    assert_eq!(names, vec!["s3"]);
}

async fn foreign_jobs_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (_, bob_token) = server.create_user("bob").await;
    let mut bob_api = server.as_user(&bob_token);
    let created = create(&server, &alice_token, job("home", fs_target("/b")))
        .await
        .expect("create");
    let takeover = pb::UpdateJobRequest {
        job: Some(pb::Job {
            id: created.id.clone(),
            name: "stolen".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        }),
    };
    assert_hidden_from_stranger(
        get(&server, &bob_token, &created.id).await,
        bob_api.update_job(takeover).await,
        bob_api.delete_job(&created.id).await,
    );
    let bobs = bob_api
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.jobs.is_empty());
    // Asking for another owner's jobs still lists only one's own.
    let filtered = bob_api
        .jobs
        .list_jobs(pb::ListJobsRequest {
            owner_id: alice.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list with a foreign owner filter")
        .into_inner();
    assert!(filtered.jobs.is_empty());

    // Admins see every job and may create jobs for others.
    let all = server
        .admin()
        .jobs
        .list_jobs(pb::ListJobsRequest {
            owner_id: alice.id.clone(),
            ..Default::default()
        })
        .await
        .expect("admin list")
        .into_inner();
    assert_eq!(all.jobs.len(), 1);
    let mut for_alice = job("by-admin", fs_target("/b"));
    for_alice.owner_id = alice.id.clone();
    let made = create(&server, &server.admin_token, for_alice)
        .await
        .expect("admin creates for alice");
    assert_eq!(made.owner_id, alice.id);
    let mut for_alice = job("by-bob", fs_target("/b"));
    for_alice.owner_id = alice.id.clone();
    assert_code(
        create(&server, &bob_token, for_alice).await,
        Code::PermissionDenied,
        "non-admin creating for another user",
    );
}

async fn last_run_and_delete_refused_while_queued(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("carol").await;
    let mut api = server.as_user(&token);
    let created = create(&server, &token, job("home", fs_target("/b")))
        .await
        .expect("create");
    let run = api
        .runs
        .create_run(pb::CreateRunRequest {
            spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
                job_id: created.id.clone(),
                ..Default::default()
            })),
            request_id: String::new(),
        })
        .await
        .expect("run")
        .into_inner()
        .run
        .expect("run");
    let fetched = get(&server, &token, &created.id).await.expect("get");
    let last = fetched.last_run.expect("last run");
    assert_eq!(last.run_id, run.id);
    assert_eq!(last.state, "RUN_STATE_QUEUED");

    assert_code(
        api.delete_job(&created.id).await,
        Code::FailedPrecondition,
        "queued run blocks delete",
    );

    api.runs
        .cancel_run(pb::CancelRunRequest { id: run.id.clone() })
        .await
        .expect("cancel");
    let fetched = get(&server, &token, &created.id).await.expect("get");
    assert_eq!(
        fetched.last_run.expect("last run").state,
        "RUN_STATE_CANCELLED"
    );
    api.delete_job(&created.id)
        .await
        .expect("delete after cancel");
    // The finished run stays, detached from the job.
    let kept = api
        .runs
        .get_run(pb::GetRunRequest { id: run.id.clone() })
        .await
        .expect("run kept")
        .into_inner()
        .run
        .expect("run");
    assert!(kept.job_id.is_empty());
}

async fn jobs_page_by_name_prefix(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("dave").await;
    for name in ["db-1", "db-2", "db-3", "web-1"] {
        create(&server, &token, job(name, fs_target("/b")))
            .await
            .expect("create");
    }
    let request = pb::ListJobsRequest {
        page_size: 2,
        name_prefix: "db-".into(),
        ..Default::default()
    };
    let all = server.as_user(&token).all_jobs(request).await;
    let names: Vec<_> = all.into_iter().map(|j| j.name).collect();
    assert_eq!(names, vec!["db-1", "db-2", "db-3"]);
}

both_backends!(
    job_crud_round_trip,
    invalid_job_reports_every_field,
    bucket_and_policy_must_belong_to_the_owner,
    foreign_jobs_are_not_found,
    last_run_and_delete_refused_while_queued,
    jobs_page_by_name_prefix,
);
