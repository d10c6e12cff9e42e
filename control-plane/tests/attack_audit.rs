//! Attacks on the audit log: every mutating call is recorded with its actor,
//! peer and outcome, refusals included; runs are recorded when created and
//! when they finish; no secret sent in a request or returned in a response
//! ever reaches a row; only admins read it; its filters and paging work.

use crate::support;

use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::audit_service_client::AuditServiceClient;
use support::{authed, Backend, TestServer};

async fn list(
    server: &TestServer,
    token: &str,
    request: pb::ListAuditEventsRequest,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    AuditServiceClient::new(server.channel().await)
        .list_audit_events(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

/// Every event matching `request`, all pages.
async fn all_events(
    server: &TestServer,
    mut request: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let mut events = Vec::new();
    loop {
        let page = list(server, &server.admin_token, request.clone())
            .await
            .expect("list audit events");
        events.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            return events;
        }
        request.page_token = page.next_page_token;
    }
}

fn by_action(action: &str) -> pb::ListAuditEventsRequest {
    pb::ListAuditEventsRequest {
        action: action.to_string(),
        ..Default::default()
    }
}

async fn mutating_and_denied_calls_are_recorded_with_actor_peer_and_result(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;

    let created = all_events(&server, by_action("coffer.v1.UserService/CreateUser")).await;
    assert_eq!(created.len(), 1, "{created:?}");
    let event = &created[0];
    assert_eq!(event.result, "OK");
    assert!(!event.actor_user_id.is_empty() && !event.actor_token_id.is_empty());
    assert_ne!(event.actor_user_id, alice.id, "the admin acted");
    assert!(event.peer.starts_with("127.0.0.1:"), "{event:?}");
    assert!(
        event.target_ids.contains(&alice.id),
        "the created user is the target: {event:?}"
    );

    // Alice tries to make herself a colleague: refused, and recorded.
    let refused = server
        .as_user(&alice_token)
        .users
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                username: "mallory".into(),
                email: "mallory@example.com".into(),
                admin: true,
                ..Default::default()
            }),
        })
        .await
        .expect_err("non-admins cannot create users");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let denied = all_events(
        &server,
        pb::ListAuditEventsRequest {
            actor_user_id: alice.id.clone(),
            result: "PERMISSION_DENIED".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].action, "coffer.v1.UserService/CreateUser");

    // A forged token: no actor, UNAUTHENTICATED.
    let forged = server
        .as_user("coffer_forged")
        .runs
        .cancel_run(pb::CancelRunRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("forged token");
    assert_eq!(forged.code(), tonic::Code::Unauthenticated);
    let anonymous = all_events(&server, by_action("coffer.v1.RunService/CancelRun")).await;
    assert_eq!(anonymous.len(), 1);
    assert_eq!(anonymous[0].result, "UNAUTHENTICATED");
    assert!(anonymous[0].actor_user_id.is_empty() && anonymous[0].actor_token_id.is_empty());

    // Reads are not recorded.
    server
        .admin()
        .users
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("list");
    assert!(
        all_events(&server, by_action("coffer.v1.UserService/ListUsers"))
            .await
            .is_empty()
    );
}

async fn runs_are_recorded_when_created_and_when_they_finish(backend: Backend) {
    let server = TestServer::start(backend).await;
    let run = server
        .admin()
        .create_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/srv/www".into(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::FilesystemPath(
                    "/backups/www".into(),
                )),
            }),
            ..Default::default()
        }))
        .await
        .expect("queue a run");
    server.admin().cancel_run(&run.id).await.expect("cancel");
    let about_run = pb::ListAuditEventsRequest {
        target_id: run.id.clone(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let events = loop {
        let events = all_events(&server, about_run.clone()).await;
        if events.iter().any(|e| e.action == "run.finished") {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run.finished: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.result.as_str()))
        .collect();
    for expected in [
        ("coffer.v1.RunService/CreateRun", "OK"),
        ("coffer.v1.RunService/CancelRun", "OK"),
        ("run.created", "QUEUED"),
        ("run.finished", "CANCELLED"),
    ] {
        assert!(
            actions.contains(&expected),
            "{expected:?} missing in {actions:?}"
        );
    }
    let finished = events.iter().filter(|e| e.action == "run.finished").count();
    assert_eq!(finished, 1, "recorded once");
    assert!(events
        .iter()
        .all(|e| e.action != "run.finished" || e.detail == "backup"));
}

async fn secrets_never_reach_the_audit_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    // Secrets in the places a careless log would copy: a field value, a
    // configuration value, a bad id, and the new token in a response.
    let planted = "coffer_planted_secret_value_0123456789";
    let minted = server
        .admin()
        .users
        .create_api_token(pb::CreateApiTokenRequest {
            user_id: alice.id.clone(),
            display_name: planted.into(),
            ..Default::default()
        })
        .await
        .expect("create token")
        .into_inner();
    let _ = server
        .admin()
        .create_configuration(pb::Configuration {
            key: "default_retention_policy_id".into(),
            value: planted.into(),
            ..Default::default()
        })
        .await;
    let _ = server
        .admin()
        .runs
        .cancel_run(pb::CancelRunRequest { id: planted.into() })
        .await;
    let events = all_events(&server, pb::ListAuditEventsRequest::default()).await;
    assert!(events.len() >= 5, "{events:?}");
    let text = format!("{events:?}");
    for secret in [
        planted,
        minted.secret.as_str(),
        alice_token.as_str(),
        server.admin_token.as_str(),
        server.worker_token.as_str(),
    ] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
    assert!(
        !text.contains("coffer_"),
        "no token-shaped value at all: {text}"
    );
}

async fn only_admins_read_the_audit_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let request = pb::ListAuditEventsRequest::default();
    let status = list(&server, &alice_token, request.clone())
        .await
        .expect_err("alice");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = list(&server, &server.worker_token, request.clone())
        .await
        .expect_err("worker");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = AuditServiceClient::new(server.channel().await)
        .list_audit_events(request.clone())
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Bad filters are named.
    let status = list(
        &server,
        &server.admin_token,
        pb::ListAuditEventsRequest {
            actor_user_id: "alice".into(),
            target_id: "../x".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("bad filters");
    support::assert_violations(&status, &["actor_user_id", "target_id"]);
}

async fn filters_and_paging_work(backend: Backend) {
    let server = TestServer::start(backend).await;
    let start = prost_types::Timestamp::from(std::time::SystemTime::now() - Duration::from_secs(1));
    let mut users = Vec::new();
    // Users without the harness's set-up grants, so only their creation
    // and their tokens are audited.
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        users.push(server.admin().create_user_without_grants(name).await.0);
    }
    let every = all_events(&server, pb::ListAuditEventsRequest::default()).await;
    // Five users and five tokens.
    assert_eq!(every.len(), 10, "{every:?}");

    let mut paged = Vec::new();
    let mut request = pb::ListAuditEventsRequest {
        page_size: 3,
        ..Default::default()
    };
    loop {
        let page = list(&server, &server.admin_token, request.clone())
            .await
            .expect("page");
        assert!(page.audit_events.len() <= 3);
        paged.extend(page.audit_events);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(paged, every, "pages cover the list once, newest first");
    assert!(every.windows(2).all(|w| w[0].id > w[1].id));

    let prefix = all_events(&server, by_action("coffer.v1.UserService/")).await;
    assert_eq!(prefix.len(), 10);
    let tokens = all_events(&server, by_action("coffer.v1.UserService/CreateApiToken")).await;
    assert_eq!(tokens.len(), 5);
    let about_u3 = all_events(
        &server,
        pb::ListAuditEventsRequest {
            target_id: users[2].id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        about_u3.len(),
        2,
        "its creation and its token: {about_u3:?}"
    );
    let in_range = all_events(
        &server,
        pb::ListAuditEventsRequest {
            start_time: Some(start),
            end_time: Some(prost_types::Timestamp::from(
                std::time::SystemTime::now() + Duration::from_secs(60),
            )),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(in_range.len(), 10);
    let future = all_events(
        &server,
        pb::ListAuditEventsRequest {
            start_time: Some(prost_types::Timestamp::from(
                std::time::SystemTime::now() + Duration::from_secs(60),
            )),
            ..Default::default()
        },
    )
    .await;
    assert!(future.is_empty());
    let failed = all_events(
        &server,
        pb::ListAuditEventsRequest {
            result: "PERMISSION_DENIED".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(failed.is_empty());
}

/// The usernames the admin sees.
async fn usernames(server: &TestServer) -> Vec<String> {
    let mut users = server.admin().users;
    let users = users.list_users(pb::ListUsersRequest::default());
    let users = users.await.expect("list users").into_inner().users;
    users.into_iter().map(|u| u.username).collect()
}

/// Renames the audit table, making the log unwritable or writable again.
async fn rename_audit_table(server: &TestServer, from: &str, to: &str) {
    let sql = format!("ALTER TABLE {from} RENAME TO {to}");
    server
        .catalog()
        .execute_raw(&sql)
        .await
        .expect("rename the audit table");
}

async fn a_call_that_cannot_be_audited_is_not_carried_out(backend: Backend) {
    let server = TestServer::start(backend).await;
    let before = usernames(&server).await;
    // The audit log becomes unwritable (a full disk, a revoked grant).
    rename_audit_table(&server, "audit_events", "audit_events_away").await;
    let status = server
        .admin()
        .users
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                username: "unaudited".into(),
                email: "unaudited@example.com".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("refused when it cannot be recorded");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    rename_audit_table(&server, "audit_events_away", "audit_events").await;
    assert_eq!(usernames(&server).await, before, "nothing was created");
}

both_backends!(
    a_call_that_cannot_be_audited_is_not_carried_out,
    mutating_and_denied_calls_are_recorded_with_actor_peer_and_result,
    runs_are_recorded_when_created_and_when_they_finish,
    secrets_never_reach_the_audit_log,
    only_admins_read_the_audit_log,
    filters_and_paging_work,
);
