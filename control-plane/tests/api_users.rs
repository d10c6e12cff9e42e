//! UserService over real gRPC on both catalog backends.

use crate::support;

use coffer_proto::v1 as pb;
use coffer_proto::v1::user_service_client::UserServiceClient;
use support::{assert_code, violated_fields, Backend, TestServer};
use tonic::Code;

async fn call_without_token_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut users = UserServiceClient::new(server.channel().await);
    assert_code(
        users.get_current_user(pb::GetCurrentUserRequest {}).await,
        Code::Unauthenticated,
        "no token must be refused",
    );
    assert_code(
        server
            .as_user("coffer_not-a-real-token")
            .users
            .get_current_user(pb::GetCurrentUserRequest {})
            .await,
        Code::Unauthenticated,
        "bad token must be refused",
    );
}

async fn admin_creates_user_and_user_token_works(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (user, token) = server.create_user("alice").await;
    let me = server
        .as_user(&token)
        .users
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect("token works")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.id, user.id);
    assert_eq!(me.username, "alice");
    assert!(!me.admin);

    // A non-admin may not create or list users, and cannot see other users.
    assert_code(
        server
            .as_user(&token)
            .users
            .list_users(pb::ListUsersRequest::default())
            .await,
        Code::PermissionDenied,
        "non-admin listing users",
    );
    let (bob, _) = server.create_user("bob").await;
    assert_code(
        server
            .as_user(&token)
            .get_user(pb::GetUserRequest { id: bob.id.clone() })
            .await,
        Code::NotFound,
        "foreign user",
    );
}

async fn duplicate_username_is_already_exists(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.create_user("carol").await;
    assert_code(
        server
            .admin()
            .users
            .create_user(pb::CreateUserRequest {
                user: Some(pb::User {
                    username: "carol".into(),
                    email: "other@example.com".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::AlreadyExists,
        "duplicate",
    );
}

async fn invalid_user_reports_each_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let status = server
        .admin()
        .users
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                username: "Not Valid".into(),
                email: "nope".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    assert!(fields.contains(&"user.username".to_string()), "{fields:?}");
    assert!(fields.contains(&"user.email".to_string()), "{fields:?}");
}

async fn users_page_and_update_with_field_mask(backend: Backend) {
    let server = TestServer::start(backend).await;
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        server.create_user(name).await;
    }
    let mut users = server.admin().users;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListUsersRequest {
            page_size: 2,
            page_token: page_token.clone(),
            username_prefix: "u".into(),
        };
        let page = users.list_users(request).await.expect("list").into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, vec!["u1", "u2", "u3", "u4", "u5"]);

    let (dave, _) = server.create_user("dave").await;
    let updated = server
        .admin()
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: dave.id.clone(),
                email: "dave@new.example.com".into(),
                username: "ignored-because-not-in-mask".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email".into()],
            }),
        })
        .await
        .expect("update");
    assert_eq!(updated.email, "dave@new.example.com");
    assert_eq!(updated.username, "dave");

    assert_code(
        server
            .admin()
            .update_user(pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: dave.id.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["create_time".into()],
                }),
            })
            .await,
        Code::InvalidArgument,
        "immutable field",
    );
}

async fn revoked_token_stops_working(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("erin").await;
    let tokens = server
        .as_user(&token)
        .users
        .list_api_tokens(pb::ListApiTokensRequest::default())
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert_eq!(tokens.len(), 1);
    server
        .as_user(&token)
        .users
        .delete_api_token(pb::DeleteApiTokenRequest {
            id: tokens[0].id.clone(),
        })
        .await
        .expect("revoke");
    assert_code(
        server
            .as_user(&token)
            .users
            .get_current_user(pb::GetCurrentUserRequest {})
            .await,
        Code::Unauthenticated,
        "revoked",
    );
}

async fn worker_token_cannot_call_user_services(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert_code(
        server
            .as_user(&server.worker_token)
            .users
            .get_current_user(pb::GetCurrentUserRequest {})
            .await,
        Code::PermissionDenied,
        "worker token on user service",
    );
}

both_backends!(
    call_without_token_is_unauthenticated,
    admin_creates_user_and_user_token_works,
    duplicate_username_is_already_exists,
    invalid_user_reports_each_field,
    users_page_and_update_with_field_mask,
    revoked_token_stops_working,
    worker_token_cannot_call_user_services,
);
