//! TagService over real gRPC on both catalog backends.

use crate::support;

use coffer_control_plane::catalog::repositories::NewRepositoryFormat;

use coffer_control_plane::model::object::SnapshotCommit;
use coffer_proto::v1 as pb;
use coffer_proto::v1::tag_service_client::TagServiceClient;
use prost_types::FieldMask;
use support::{
    assert_code, assert_violated, authed, one_byte_file, violated_fields, Backend, TestServer,
};
use tonic::transport::Channel;
use tonic::Code;
use uuid::Uuid;

fn run_ref(id: Uuid) -> Option<pb::ResourceRef> {
    Some(pb::ResourceRef {
        kind: pb::ResourceKind::Run as i32,
        id: id.to_string(),
    })
}

fn tag(resource: Option<pb::ResourceRef>, key: &str, value: &str) -> pb::CreateTagRequest {
    pb::CreateTagRequest {
        tag: Some(pb::Tag {
            resource,
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
    }
}

async fn user_run(server: &TestServer, user: &pb::User) -> Uuid {
    let owner = Uuid::parse_str(&user.id).expect("user id");
    server
        .catalog()
        .insert_test_run(owner, None, None)
        .await
        .expect("insert run")
}

/// One object in a fresh repository of `user`, committed by a new run.
async fn user_object(server: &TestServer, user: &pb::User) -> (Uuid, Uuid) {
    let run_id = user_run(server, user).await;
    let owner = Uuid::parse_str(&user.id).expect("user id");
    let repository = server
        .catalog()
        .ensure_repository(&format!("/backups/{}", user.username), owner, |_| {
            Ok(NewRepositoryFormat::unencrypted())
        })
        .await
        .expect("repository");
    server
        .catalog()
        .apply_snapshot(&SnapshotCommit {
            run_id,
            owner_id: owner,
            bucket_id: None,
            repository_id: repository.id,
            removed: None,
            job_id: None,
            entries: vec![one_byte_file("file.txt", "aa")],
        })
        .await
        .expect("snapshot");
    let object = server
        .admin()
        .objects
        .list_objects(pb::ListObjectsRequest::default())
        .await
        .expect("list objects")
        .into_inner()
        .objects
        .into_iter()
        .find(|o| o.owner_id == user.id)
        .expect("object");
    (Uuid::parse_str(&object.id).expect("object id"), run_id)
}

async fn list(
    tags: &mut TagServiceClient<Channel>,
    token: &str,
    request: pb::ListTagsRequest,
) -> Vec<pb::Tag> {
    tags.list_tags(authed(token, request))
        .await
        .expect("list tags")
        .into_inner()
        .tags
}

async fn tag_lifecycle_on_a_run(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let mut api = server.as_user(&token);
    let run_id = user_run(&server, &alice).await;
    let mut tags = TagServiceClient::new(server.channel().await);

    let created = api
        .tags
        .create_tag(tag(run_ref(run_id), "env", "prod"))
        .await
        .expect("create")
        .into_inner()
        .tag
        .expect("tag");
    assert_eq!(created.owner_id, alice.id);
    assert_eq!(created.key, "env");
    assert_eq!(created.resource, run_ref(run_id));

    assert_code(
        api.tags
            .create_tag(tag(run_ref(run_id), "env", "dev"))
            .await,
        Code::AlreadyExists,
        "same key twice",
    );

    assert_eq!(api.tag_by_id(&created.id).await.expect("get"), created);

    let updated = api
        .update_tag(pb::UpdateTagRequest {
            tag: Some(pb::Tag {
                id: created.id.clone(),
                value: "staging".into(),
                key: "ignored".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["value".into()],
            }),
        })
        .await
        .expect("update");
    assert_eq!(updated.value, "staging");
    assert_eq!(updated.key, "env");

    assert_violated(
        api.update_tag(pb::UpdateTagRequest {
            tag: Some(pb::Tag {
                id: created.id.clone(),
                key: "other".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["key".into()],
            }),
        })
        .await,
        &["update_mask"],
        "key is immutable",
    );

    let listed = list(
        &mut tags,
        &token,
        pb::ListTagsRequest {
            resource: run_ref(run_id),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed, vec![updated]);

    api.delete_tag(&created.id).await.expect("delete");
    let gone = api.tag_by_id(&created.id).await;
    assert_code(gone, Code::NotFound, "deleted");
}

async fn tag_validation_reports_field_paths(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let run_id = user_run(&server, &alice).await;

    let status = server
        .as_user(&token)
        .tags
        .create_tag(tag(
            Some(pb::ResourceRef {
                kind: pb::ResourceKind::Unspecified as i32,
                id: run_id.to_string(),
            }),
            "1bad key",
            &"v".repeat(257),
        ))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = violated_fields(&status);
    for field in ["tag.resource.kind", "tag.key", "tag.value"] {
        assert!(fields.contains(&field.to_string()), "{field} in {fields:?}");
    }

    assert_violated(
        server
            .as_user(&token)
            .tags
            .create_tag(tag(
                Some(pb::ResourceRef {
                    kind: pb::ResourceKind::Run as i32,
                    id: "not-a-uuid".into(),
                }),
                "ok",
                "",
            ))
            .await,
        &["tag.resource.id"],
        "bad id",
    );

    assert_violated(
        server
            .as_user(&token)
            .tags
            .create_tag(tag(None, "ok", ""))
            .await,
        &["tag.resource"],
        "no resource",
    );

    // Keys may use the whole documented alphabet.
    server
        .as_user(&token)
        .tags
        .create_tag(tag(run_ref(run_id), "Team/app:tier-1_x.y", ""))
        .await
        .expect("valid key");

    assert_violated(
        server
            .as_user(&token)
            .tags
            .list_tags(pb::ListTagsRequest {
                value: "x".into(),
                ..Default::default()
            })
            .await,
        &["value"],
        "value without key",
    );

    assert_violated(
        server
            .as_user(&token)
            .update_tag(pb::UpdateTagRequest {
                tag: Some(pb::Tag {
                    id: Uuid::now_v7().to_string(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
        &["update_mask"],
        "no mask",
    );
}

async fn tag_limit_is_64_per_resource(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, token) = server.create_user("alice").await;
    let run_id = user_run(&server, &alice).await;
    let other_run = user_run(&server, &alice).await;
    for n in 0..64 {
        server
            .as_user(&token)
            .tags
            .create_tag(tag(run_ref(run_id), &format!("k{n}"), ""))
            .await
            .expect("within limit");
    }
    assert_code(
        server
            .as_user(&token)
            .tags
            .create_tag(tag(run_ref(run_id), "k64", ""))
            .await,
        Code::FailedPrecondition,
        "65th tag",
    );
    // The limit is per resource.
    server
        .as_user(&token)
        .tags
        .create_tag(tag(run_ref(other_run), "k64", ""))
        .await
        .expect("other resource");

    // Pages of the full list cover every tag once.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .as_user(&token)
            .tags
            .list_tags(pb::ListTagsRequest {
                page_size: 20,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.tags.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), 65);
    assert_eq!(unique.len(), 65);
}

async fn tags_are_owner_scoped_and_filtered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (alice, alice_token) = server.create_user("alice").await;
    let (bob, bob_token) = server.create_user("bob").await;
    let (object_id, run_id) = user_object(&server, &alice).await;
    let bob_run = user_run(&server, &bob).await;
    let mut tags = TagServiceClient::new(server.channel().await);

    // Bob can neither tag Alice's run nor a resource that does not exist.
    assert_code(
        server
            .as_user(&bob_token)
            .tags
            .create_tag(tag(run_ref(run_id), "env", "x"))
            .await,
        Code::NotFound,
        "foreign run",
    );
    let status = server
        .as_user(&bob_token)
        .tags
        .create_tag(tag(run_ref(Uuid::now_v7()), "env", "x"))
        .await
        .expect_err("missing run");
    assert_eq!(status.code(), Code::NotFound);

    let object_ref = Some(pb::ResourceRef {
        kind: pb::ResourceKind::Object as i32,
        id: object_id.to_string(),
    });
    let on_object = server
        .as_user(&alice_token)
        .tags
        .create_tag(tag(object_ref.clone(), "env", "prod"))
        .await
        .expect("object tag")
        .into_inner()
        .tag
        .expect("tag");
    let on_run = server
        .as_user(&alice_token)
        .tags
        .create_tag(tag(run_ref(run_id), "env", "dev"))
        .await
        .expect("run tag")
        .into_inner()
        .tag
        .expect("tag");
    // An admin tags Bob's run: the tag belongs to Bob, the resource's owner.
    let on_bob_run = server
        .admin()
        .tags
        .create_tag(tag(run_ref(bob_run), "env", "prod"))
        .await
        .expect("admin tags bob's run")
        .into_inner()
        .tag
        .expect("tag");
    assert_eq!(on_bob_run.owner_id, bob.id);

    let by_kind = list(
        &mut tags,
        &alice_token,
        pb::ListTagsRequest {
            resource: Some(pb::ResourceRef {
                kind: pb::ResourceKind::Object as i32,
                id: String::new(),
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_kind, vec![on_object.clone()]);

    let prod = list(
        &mut tags,
        &alice_token,
        pb::ListTagsRequest {
            key: "env".into(),
            value: "prod".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        prod,
        vec![on_object.clone()],
        "alice sees only her own tags"
    );

    let all_env = list(
        &mut tags,
        &server.admin_token,
        pb::ListTagsRequest {
            key: "env".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(all_env.len(), 3, "admin sees every tag");

    let bobs = list(&mut tags, &bob_token, pb::ListTagsRequest::default()).await;
    assert_eq!(bobs, vec![on_bob_run]);

    for status in [
        server
            .as_user(&bob_token)
            .tag_by_id(&on_run.id)
            .await
            .expect_err("foreign get"),
        server
            .as_user(&bob_token)
            .delete_tag(&on_run.id)
            .await
            .expect_err("foreign delete"),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
}

both_backends!(
    tag_lifecycle_on_a_run,
    tag_validation_reports_field_paths,
    tag_limit_is_64_per_resource,
    tags_are_owner_scoped_and_filtered,
);
