//! JobService over real gRPC on both catalog backends.

mod support;

use coffer_control_plane::catalog::Backend as CatalogBackend;
use coffer_proto::v1 as pb;
use coffer_proto::v1::job_service_client::JobServiceClient;
use coffer_proto::v1::run_service_client::RunServiceClient;
use support::{authed, violated_fields, Backend, TestServer};
use tonic::Code;
use uuid::Uuid;

/// A SQL literal for an id column (UUID on PostgreSQL, a 16-byte BLOB on SQLite).
fn id_literal(server: &TestServer, id: &str) -> String {
    let id = Uuid::parse_str(id).expect("uuid");
    match server.state.catalog.backend() {
        CatalogBackend::Postgres => format!("'{id}'"),
        CatalogBackend::Sqlite => format!("X'{}'", id.simple()),
    }
}

const TIME: &str = "'2024-01-01T00:00:00+00:00'";

/// Inserts a filesystem bucket owned by `owner_id` and returns its id.
async fn insert_bucket(server: &TestServer, owner_id: &str, name: &str) -> String {
    let id = Uuid::now_v7().to_string();
    let (id_sql, owner_sql) = (id_literal(server, &id), id_literal(server, owner_id));
    server
        .state
        .catalog
        .execute_raw(&format!(
            "INSERT INTO buckets (id, owner_id, name, kind, filesystem_path, create_time, update_time) \
             VALUES ({id_sql}, {owner_sql}, '{name}', 'filesystem', '/srv/buckets', {TIME}, {TIME})"
        ))
        .await
        .expect("insert bucket");
    id
}

/// Inserts a retention policy owned by `owner_id` and returns its id.
async fn insert_policy(server: &TestServer, owner_id: &str, name: &str) -> String {
    let id = Uuid::now_v7().to_string();
    let (id_sql, owner_sql) = (id_literal(server, &id), id_literal(server, owner_id));
    server
        .state
        .catalog
        .execute_raw(&format!(
            "INSERT INTO retention_policies (id, owner_id, name, keep_last, create_time, update_time) \
             VALUES ({id_sql}, {owner_sql}, '{name}', 3, {TIME}, {TIME})"
        ))
        .await
        .expect("insert policy");
    id
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
    let mut jobs = JobServiceClient::new(server.channel().await);
    jobs.create_job(authed(token, pb::CreateJobRequest { job: Some(job) }))
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn get(server: &TestServer, token: &str, id: &str) -> Result<pb::Job, tonic::Status> {
    let mut jobs = JobServiceClient::new(server.channel().await);
    jobs.get_job(authed(token, pb::GetJobRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn job_crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("alice").await;
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

    let mut jobs = JobServiceClient::new(server.channel().await);
    let updated = jobs
        .update_job(authed(
            &token,
            pb::UpdateJobRequest {
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
            },
        ))
        .await
        .expect("update")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(updated.name, "home-renamed");
    assert_eq!(updated.source_path, "/data");
    assert_eq!(
        updated.schedule.expect("schedule").cron,
        "*/15 8-18 * * 1-5"
    );
    assert_eq!(updated.max_attempts, 4);

    let status = jobs
        .update_job(authed(
            &token,
            pb::UpdateJobRequest {
                job: Some(pb::Job {
                    id: created.id.clone(),
                    owner_id: Uuid::new_v4().to_string(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["owner_id".into()],
                }),
            },
        ))
        .await
        .expect_err("non-admin changing the owner");
    assert_eq!(status.code(), Code::PermissionDenied);

    jobs.delete_job(authed(
        &token,
        pb::DeleteJobRequest {
            id: created.id.clone(),
        },
    ))
    .await
    .expect("delete");
    let status = get(&server, &token, &created.id)
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
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
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    for field in [
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
    ] {
        assert!(
            fields.contains(&field.to_string()),
            "{field} missing in {fields:?}"
        );
    }

    let status = create(&server, &token, job("x", fs_target("/b")))
        .await
        .map(|_| ())
        .and(
            create(&server, &token, job("x", fs_target("/c")))
                .await
                .map(|_| ()),
        )
        .expect_err("duplicate name");
    assert_eq!(status.code(), Code::AlreadyExists);
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

    let status = create(
        &server,
        &alice_token,
        job("abs", bucket_target(&bucket, "/abs")),
    )
    .await
    .expect_err("absolute prefix");
    assert_eq!(
        violated_fields(&status),
        vec!["job.target.bucket.prefix".to_string()]
    );

    // ListJobs filters by bucket.
    create(&server, &alice_token, job("local", fs_target("/b")))
        .await
        .expect("local job");
    let mut jobs = JobServiceClient::new(server.channel().await);
    let listed = jobs
        .list_jobs(authed(
            &alice_token,
            pb::ListJobsRequest {
                bucket_id: bucket.clone(),
                ..Default::default()
            },
        ))
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
    let created = create(&server, &alice_token, job("home", fs_target("/b")))
        .await
        .expect("create");
    let status = get(&server, &bob_token, &created.id)
        .await
        .expect_err("foreign");
    assert_eq!(status.code(), Code::NotFound);

    let mut jobs = JobServiceClient::new(server.channel().await);
    let status = jobs
        .update_job(authed(
            &bob_token,
            pb::UpdateJobRequest {
                job: Some(pb::Job {
                    id: created.id.clone(),
                    name: "stolen".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
            },
        ))
        .await
        .expect_err("foreign update");
    assert_eq!(status.code(), Code::NotFound);
    let status = jobs
        .delete_job(authed(
            &bob_token,
            pb::DeleteJobRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect_err("foreign delete");
    assert_eq!(status.code(), Code::NotFound);
    let bobs = jobs
        .list_jobs(authed(&bob_token, pb::ListJobsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.jobs.is_empty());
    // Asking for another owner's jobs still lists only one's own.
    let filtered = jobs
        .list_jobs(authed(
            &bob_token,
            pb::ListJobsRequest {
                owner_id: alice.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("list with a foreign owner filter")
        .into_inner();
    assert!(filtered.jobs.is_empty());

    // Admins see every job and may create jobs for others.
    let all = jobs
        .list_jobs(authed(
            &server.admin_token,
            pb::ListJobsRequest {
                owner_id: alice.id.clone(),
                ..Default::default()
            },
        ))
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
    let status = create(&server, &bob_token, for_alice)
        .await
        .expect_err("non-admin creating for another user");
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn last_run_and_delete_refused_while_queued(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("carol").await;
    let created = create(&server, &token, job("home", fs_target("/b")))
        .await
        .expect("create");
    let mut runs = RunServiceClient::new(server.channel().await);
    let run = runs
        .create_run(authed(
            &token,
            pb::CreateRunRequest {
                spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
                    job_id: created.id.clone(),
                    ..Default::default()
                })),
                request_id: String::new(),
            },
        ))
        .await
        .expect("run")
        .into_inner()
        .run
        .expect("run");
    let fetched = get(&server, &token, &created.id).await.expect("get");
    let last = fetched.last_run.expect("last run");
    assert_eq!(last.run_id, run.id);
    assert_eq!(last.state, "RUN_STATE_QUEUED");

    let mut jobs = JobServiceClient::new(server.channel().await);
    let status = jobs
        .delete_job(authed(
            &token,
            pb::DeleteJobRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect_err("queued run blocks delete");
    assert_eq!(status.code(), Code::FailedPrecondition);

    runs.cancel_run(authed(&token, pb::CancelRunRequest { id: run.id.clone() }))
        .await
        .expect("cancel");
    let fetched = get(&server, &token, &created.id).await.expect("get");
    assert_eq!(
        fetched.last_run.expect("last run").state,
        "RUN_STATE_CANCELLED"
    );
    jobs.delete_job(authed(
        &token,
        pb::DeleteJobRequest {
            id: created.id.clone(),
        },
    ))
    .await
    .expect("delete after cancel");
    // The finished run stays, detached from the job.
    let kept = runs
        .get_run(authed(&token, pb::GetRunRequest { id: run.id.clone() }))
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
    let mut jobs = JobServiceClient::new(server.channel().await);
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = jobs
            .list_jobs(authed(
                &token,
                pb::ListJobsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    name_prefix: "db-".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        names.extend(page.jobs.into_iter().map(|j| j.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
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
