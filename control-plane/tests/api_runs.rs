//! RunService over real gRPC on both catalog backends.

use crate::support;

use std::time::Duration;

use coffer_control_plane::catalog::Backend as CatalogBackend;
use coffer_proto::v1 as pb;
use support::{assert_code, assert_violated, violated_fields, Backend, TestServer};
use tonic::Code;
use uuid::Uuid;

/// A SQL literal for an id column (UUID on PostgreSQL, a 16-byte BLOB on SQLite).
fn id_literal(server: &TestServer, id: &str) -> String {
    let id = Uuid::parse_str(id).expect("uuid");
    match server.catalog().backend() {
        CatalogBackend::Postgres => format!("'{id}'"),
        CatalogBackend::Sqlite => format!("X'{}'", id.simple()),
    }
}

const TIME: &str = "'2024-01-01T00:00:00+00:00'";

fn fs_target(path: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::FilesystemPath(path.into())),
    }
}

fn nfs_target(path: &str) -> pb::Target {
    pb::Target {
        destination: Some(pb::target::Destination::NfsPath(path.into())),
    }
}

async fn create_job(server: &TestServer, token: &str, name: &str, max_attempts: i32) -> pb::Job {
    let job = pb::Job {
        name: name.into(),
        source_path: "/data/home".into(),
        target: Some(fs_target("/backups/home")),
        options: Some(pb::JobOptions {
            exclude: vec!["**/*.tmp".into()],
            ..Default::default()
        }),
        worker_selector: [("host".to_string(), "db1".to_string())].into(),
        max_attempts,
        ..Default::default()
    };
    let created = server.as_user(token).create_job(job).await;
    created.expect("create job")
}

fn job_run_request(job_id: &str) -> pb::CreateRunRequest {
    pb::CreateRunRequest {
        spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            job_id: job_id.into(),
            ..Default::default()
        })),
        request_id: String::new(),
    }
}

fn ad_hoc_request(target: pb::Target) -> pb::CreateRunRequest {
    pb::CreateRunRequest {
        spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/srv/www".into(),
            target: Some(target),
            ..Default::default()
        })),
        request_id: String::new(),
    }
}

async fn create_run(server: &TestServer, token: &str, request: pb::CreateRunRequest) -> pb::Run {
    let mut runs = server.as_user(token).runs;
    let created = runs.create_run(request).await.expect("create run");
    created.into_inner().run.expect("run")
}

async fn get_run(server: &TestServer, token: &str, id: &str) -> Result<pb::Run, tonic::Status> {
    server.as_user(token).get_run(id).await
}

async fn cancel(server: &TestServer, token: &str, id: &str) -> Result<pb::Run, tonic::Status> {
    server.as_user(token).cancel_run(id).await
}

async fn job_run_is_queued_with_a_copy_of_the_job(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("alice").await;
    let job = create_job(&server, &token, "home", 0).await;
    let run = create_run(&server, &token, job_run_request(&job.id)).await;
    let fetched = get_run(&server, &token, &run.id).await.expect("get run");
    assert_eq!(fetched.state, pb::RunState::Queued as i32);
    assert_eq!(fetched.kind, pb::RunKind::Backup as i32);
    assert_eq!(fetched.owner_id, user.id);
    assert_eq!(fetched.job_id, job.id);
    assert_eq!(fetched.max_attempts, 3, "default without configuration");
    assert_eq!(fetched.attempt, 0);
    assert!(fetched.not_before_time.is_some());
    assert_eq!(
        fetched.worker_selector.get("host").map(String::as_str),
        Some("db1")
    );
    let Some(pb::run::Spec::Backup(spec)) = fetched.spec else {
        panic!("backup spec expected");
    };
    assert_eq!(spec.source_path, "/data/home");
    assert_eq!(spec.target, Some(fs_target("/backups/home")));
    assert_eq!(spec.options.expect("options").exclude, vec!["**/*.tmp"]);

    // The job's own max_attempts wins; else the configuration's default.
    let limited = create_job(&server, &token, "limited", 5).await;
    let run = create_run(&server, &token, job_run_request(&limited.id)).await;
    assert_eq!(run.max_attempts, 5);
    server.configure("default_max_attempts", "7").await;
    let run = create_run(&server, &token, job_run_request(&job.id)).await;
    assert_eq!(run.max_attempts, 7);
}

async fn ad_hoc_runs_to_filesystem_and_nfs(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("bob").await;
    let run = create_run(&server, &token, ad_hoc_request(fs_target("/backups/www"))).await;
    assert_eq!(run.state, pb::RunState::Queued as i32);
    assert_eq!(run.owner_id, user.id);
    assert!(run.job_id.is_empty());

    let status = server
        .as_user(&token)
        .runs
        .create_run(ad_hoc_request(nfs_target("www")))
        .await
        .expect_err("nfs without mount configuration");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("nfs_mount_path"),
        "{}",
        status.message()
    );

    server.configure("nfs_mount_path", "/mnt/nfs").await;
    let run = create_run(&server, &token, ad_hoc_request(nfs_target("www"))).await;
    let Some(pb::run::Spec::Backup(spec)) = run.spec else {
        panic!("backup spec expected");
    };
    assert_eq!(spec.target, Some(nfs_target("www")));
}

async fn invalid_run_requests_are_rejected(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("carol").await;
    let job = create_job(&server, &token, "home", 0).await;

    let mut request = job_run_request(&job.id);
    if let Some(pb::create_run_request::Spec::Backup(spec)) = &mut request.spec {
        spec.source_path = "/other".into();
        spec.target = Some(fs_target("/elsewhere"));
    }
    let status = server
        .as_user(&token)
        .runs
        .create_run(request)
        .await
        .expect_err("inline fields with job_id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    assert!(
        fields.contains(&"backup.source_path".to_string()),
        "{fields:?}"
    );
    assert!(fields.contains(&"backup.target".to_string()), "{fields:?}");

    assert_code(
        server
            .as_user(&token)
            .runs
            .create_run(pb::CreateRunRequest {
                spec: Some(pb::create_run_request::Spec::Backup(pb::BackupSpec {
                    source_path: "relative".into(),
                    target: Some(fs_target("also/relative")),
                    ..Default::default()
                })),
                request_id: "not-a-uuid".into(),
            })
            .await,
        Code::InvalidArgument,
        "bad ad-hoc run",
    );

    assert_violated(
        server
            .as_user(&token)
            .runs
            .create_run(ad_hoc_request(fs_target("relative")))
            .await,
        &["backup.target.filesystem_path"],
        "relative filesystem target",
    );

    assert_code(
        server
            .as_user(&token)
            .runs
            .create_run(pb::CreateRunRequest::default())
            .await,
        Code::InvalidArgument,
        "missing spec",
    );

    let restore = |spec: pb::RestoreSpec| pb::CreateRunRequest {
        spec: Some(pb::create_run_request::Spec::Restore(spec)),
        request_id: String::new(),
    };
    assert_violated(
        server
            .as_user(&token)
            .runs
            .create_run(restore(pb::RestoreSpec::default()))
            .await,
        &["restore.snapshot_run_id"],
        "restore without a snapshot",
    );
    let status = server
        .as_user(&token)
        .runs
        .create_run(restore(pb::RestoreSpec {
            snapshot_run_id: uuid::Uuid::now_v7().to_string(),
            paths: vec!["../etc".into()],
            destination_path: "relative/dir".into(),
            download_limit_bytes_per_second: 512,
            ..Default::default()
        }))
        .await
        .expect_err("bad restore paths");
    let fields = violated_fields(&status);
    assert!(
        fields.contains(&"restore.download_limit_bytes_per_second".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"restore.paths[0]".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"restore.destination_path".to_string()),
        "{fields:?}"
    );
    assert_code(
        server
            .as_user(&token)
            .runs
            .create_run(restore(pb::RestoreSpec {
                snapshot_run_id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            }))
            .await,
        Code::NotFound,
        "unknown snapshot",
    );

    // A backup still in progress is no snapshot yet: restoring or verifying
    // it is refused cleanly.
    let queued = create_run(&server, &token, job_run_request(&job.id)).await;
    let status = server
        .as_user(&token)
        .runs
        .create_run(restore(pb::RestoreSpec {
            snapshot_run_id: queued.id.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("restore of a queued run");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("queued"), "{status:?}");
    assert_violated(
        server
            .as_user(&token)
            .runs
            .create_run(pb::CreateRunRequest {
                spec: Some(pb::create_run_request::Spec::Verify(pb::VerifySpec {
                    snapshot_run_id: queued.id.clone(),
                    read_data_percent: 150.0,
                })),
                request_id: String::new(),
            })
            .await,
        &["verify.read_data_percent"],
        "verify with a bad percentage",
    );
}

async fn foreign_runs_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice) = server.create_user("alice").await;
    let (_, bob) = server.create_user("bob").await;
    let job = create_job(&server, &alice, "home", 0).await;
    let run = create_run(&server, &alice, job_run_request(&job.id)).await;

    assert_code(
        get_run(&server, &bob, &run.id).await,
        Code::NotFound,
        "foreign run",
    );
    assert_code(
        cancel(&server, &bob, &run.id).await,
        Code::NotFound,
        "foreign cancel",
    );
    assert_code(
        server
            .as_user(&bob)
            .runs
            .create_run(job_run_request(&job.id))
            .await,
        Code::NotFound,
        "run of a foreign job",
    );
    assert_code(
        server
            .as_user(&bob)
            .runs
            .watch_run(pb::WatchRunRequest { id: run.id.clone() })
            .await,
        Code::NotFound,
        "watch foreign run",
    );
    let listed = server
        .as_user(&bob)
        .runs
        .list_runs(pb::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.runs.is_empty());

    // The admin sees everything; the run is still queued.
    let admin_view = get_run(&server, &server.admin_token, &run.id)
        .await
        .expect("admin sees run");
    assert_eq!(admin_view.state, pb::RunState::Queued as i32);
}

async fn cancel_queued_run_then_again_fails(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("dave").await;
    let run = create_run(&server, &token, ad_hoc_request(fs_target("/b"))).await;
    let cancelled = cancel(&server, &token, &run.id).await.expect("cancel");
    assert_eq!(cancelled.state, pb::RunState::Cancelled as i32);
    assert_eq!(cancelled.error, "cancelled by dave");
    assert!(cancelled.finish_time.is_some());
    assert_code(
        cancel(&server, &token, &run.id).await,
        Code::FailedPrecondition,
        "cancel twice",
    );
}

async fn cancel_running_run_requests_cancellation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("erin").await;
    let run = create_run(&server, &token, ad_hoc_request(fs_target("/b"))).await;
    let id = id_literal(&server, &run.id);
    server
        .catalog()
        .execute_raw(&format!(
            "UPDATE runs SET state = 'running', attempt = 1 WHERE id = {id}"
        ))
        .await
        .expect("mark running");
    let after = cancel(&server, &token, &run.id).await.expect("cancel");
    assert_eq!(after.state, pb::RunState::Running as i32);
    assert!(after.cancel_requested);
}

async fn request_id_makes_create_idempotent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("frank").await;
    let key = Uuid::new_v4().to_string();
    let mut request = ad_hoc_request(fs_target("/b"));
    request.request_id = key.clone();
    let first = create_run(&server, &token, request.clone()).await;
    let second = create_run(&server, &token, request).await;
    assert_eq!(first.id, second.id);

    // Another user with the same key gets a run of its own.
    let (_, other) = server.create_user("grace").await;
    let mut request = ad_hoc_request(fs_target("/c"));
    request.request_id = key;
    let third = create_run(&server, &other, request).await;
    assert_ne!(third.id, first.id);

    let listed = server
        .as_user(&token)
        .runs
        .list_runs(pb::ListRunsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.runs.len(), 1);
}

async fn watch_streams_queued_then_cancelled(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("heidi").await;
    let run = create_run(&server, &token, ad_hoc_request(fs_target("/b"))).await;
    let mut stream = server
        .as_user(&token)
        .runs
        .watch_run(pb::WatchRunRequest { id: run.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, stream.message())
        .await
        .expect("first update in time")
        .expect("stream ok")
        .expect("an update");
    assert_eq!(first.run.expect("run").state, pb::RunState::Queued as i32);

    cancel(&server, &token, &run.id).await.expect("cancel");
    let second = tokio::time::timeout(wait, stream.message())
        .await
        .expect("second update in time")
        .expect("stream ok")
        .expect("an update");
    assert_eq!(
        second.run.expect("run").state,
        pb::RunState::Cancelled as i32
    );
    let end = tokio::time::timeout(wait, stream.message())
        .await
        .expect("end in time")
        .expect("stream ok");
    assert!(end.is_none(), "stream ends after a final state");
}

async fn list_runs_newest_first_with_filters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("ivan").await;
    let job = create_job(&server, &token, "home", 0).await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(
            create_run(&server, &token, job_run_request(&job.id))
                .await
                .id,
        );
    }
    let ad_hoc = create_run(&server, &token, ad_hoc_request(fs_target("/b"))).await;
    created.push(ad_hoc.id.clone());
    cancel(&server, &token, &created[0]).await.expect("cancel");

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .as_user(&token)
            .runs
            .list_runs(pb::ListRunsRequest {
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.runs.len() <= 3);
        seen.extend(page.runs.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let api = server.as_user(&token);
    let list = |request: pb::ListRunsRequest| {
        let mut runs = api.runs.clone();
        async move {
            runs.list_runs(request)
                .await
                .expect("list")
                .into_inner()
                .runs
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let of_job = list(pb::ListRunsRequest {
        job_id: job.id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        of_job,
        vec![created[2].clone(), created[1].clone(), created[0].clone()]
    );
    let cancelled = list(pb::ListRunsRequest {
        state: pb::RunState::Cancelled as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(cancelled, vec![created[0].clone()]);

    // Tag filter: tag the second run.
    let env_prod = pb::Tag {
        resource: Some(pb::ResourceRef {
            kind: pb::ResourceKind::Run as i32,
            id: created[1].clone(),
        }),
        key: "env".into(),
        value: "prod".into(),
        ..Default::default()
    };
    let tagged = server.as_user(&token).create_tag(env_prod).await;
    tagged.expect("tag the run");
    let tagged = list(pb::ListRunsRequest {
        tag_key: "env".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(tagged, vec![created[1].clone()]);
    let tagged = list(pb::ListRunsRequest {
        tag_key: "env".into(),
        tag_value: "dev".into(),
        ..Default::default()
    })
    .await;
    assert!(tagged.is_empty());
}

async fn run_errors_are_paginated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("judy").await;
    let run = create_run(&server, &token, ad_hoc_request(fs_target("/b"))).await;
    let run_id = id_literal(&server, &run.id);
    for i in 0..5 {
        server
            .catalog()
            .execute_raw(&format!(
                "INSERT INTO run_errors (run_id, attempt, path, message, create_time) \
                 VALUES ({run_id}, 1, 'file{i}', 'permission denied', {TIME})"
            ))
            .await
            .expect("insert run error");
    }
    let mut paths = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .as_user(&token)
            .runs
            .list_run_errors(pb::ListRunErrorsRequest {
                run_id: run.id.clone(),
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .expect("list errors")
            .into_inner();
        paths.extend(page.errors.into_iter().map(|e| e.path));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paths, vec!["file0", "file1", "file2", "file3", "file4"]);
    assert_code(
        server
            .as_user(&token)
            .runs
            .list_run_errors(pb::ListRunErrorsRequest {
                run_id: run.id.clone(),
                page_size: 2,
                page_token: "garbage".into(),
            })
            .await,
        Code::InvalidArgument,
        "bad token",
    );
}

both_backends!(
    job_run_is_queued_with_a_copy_of_the_job,
    ad_hoc_runs_to_filesystem_and_nfs,
    invalid_run_requests_are_rejected,
    foreign_runs_are_not_found,
    cancel_queued_run_then_again_fails,
    cancel_running_run_requests_cancellation,
    request_id_makes_create_idempotent,
    watch_streams_queued_then_cancelled,
    list_runs_newest_first_with_filters,
    run_errors_are_paginated,
);
