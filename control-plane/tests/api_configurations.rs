//! ConfigurationService over real gRPC on both catalog backends.

use crate::support;

use coffer_proto::v1 as pb;
use prost_types::FieldMask;
use support::{assert_code, assert_violated, violated_fields, Backend, TestServer};
use tonic::Code;

fn entry(key: &str, value: &str) -> pb::Configuration {
    pb::Configuration {
        key: key.to_string(),
        value: value.to_string(),
        description: format!("set by the {key} test"),
        ..Default::default()
    }
}

/// An update of `configuration`'s value alone.
fn value_update(configuration: pb::Configuration) -> pb::UpdateConfigurationRequest {
    pb::UpdateConfigurationRequest {
        configuration: Some(configuration),
        update_mask: Some(FieldMask {
            paths: vec!["value".into()],
        }),
    }
}

/// The `nfs_mount_path` value as the catalog holds it.
async fn stored_nfs_mount_path(server: &TestServer) -> Option<String> {
    server
        .catalog()
        .configuration_value("nfs_mount_path")
        .await
        .expect("value")
}

async fn configuration_crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let created = server
        .admin()
        .create_configuration(entry("nfs_mount_path", "/mnt/nfs"))
        .await
        .expect("create");
    assert_eq!(created.key, "nfs_mount_path");
    assert_eq!(created.value, "/mnt/nfs");

    let by_id = pb::GetConfigurationRequest {
        id: created.id.clone(),
        ..Default::default()
    };
    let by_key = pb::GetConfigurationRequest {
        key: "nfs_mount_path".into(),
        ..Default::default()
    };
    for request in [by_id, by_key] {
        let fetched = server.admin().get_configuration(request.clone()).await;
        assert_eq!(fetched.expect("get"), created, "{request:?}");
    }

    let updated = server
        .admin()
        .update_configuration(value_update(pb::Configuration {
            id: created.id.clone(),
            value: "/srv/nfs".into(),
            description: "not in the mask".into(),
            ..Default::default()
        }))
        .await
        .expect("update");
    assert_eq!(updated.value, "/srv/nfs");
    assert_eq!(updated.description, created.description);
    assert_eq!(
        stored_nfs_mount_path(&server).await,
        Some("/srv/nfs".to_string())
    );

    server
        .admin()
        .delete_configuration(&created.id)
        .await
        .expect("delete");
    assert_code(
        server
            .admin()
            .get_configuration(pb::GetConfigurationRequest {
                key: "nfs_mount_path".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "deleted",
    );
    assert_eq!(stored_nfs_mount_path(&server).await, None);
}

async fn writes_are_admin_only_but_everyone_reads(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let mut alice = server.as_user(&token);
    assert_code(
        alice
            .create_configuration(entry("lease_ttl_seconds", "30"))
            .await,
        Code::PermissionDenied,
        "non-admin create",
    );

    let created = server
        .admin()
        .create_configuration(entry("lease_ttl_seconds", "30"))
        .await
        .expect("admin create");
    let read = alice
        .get_configuration(pb::GetConfigurationRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await
        .expect("user reads");
    assert_eq!(read.value, "30");
    let listed = alice
        .configurations
        .list_configurations(pb::ListConfigurationsRequest::default())
        .await
        .expect("user lists")
        .into_inner();
    assert_eq!(listed.configurations.len(), 1);

    assert_code(
        alice
            .update_configuration(value_update(pb::Configuration {
                id: created.id.clone(),
                value: "60".into(),
                ..Default::default()
            }))
            .await,
        Code::PermissionDenied,
        "non-admin update",
    );
    assert_code(
        alice.delete_configuration(&created.id).await,
        Code::PermissionDenied,
        "non-admin delete",
    );
}

async fn keys_and_values_are_validated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin();

    let status = admin
        .create_configuration(entry("colour", "blue"))
        .await
        .expect_err("unknown key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        vec!["configuration.key".to_string()]
    );
    assert!(
        status.message().contains("nfs_mount_path")
            && status.message().contains("default_retention_policy_id"),
        "lists the known keys: {}",
        status.message()
    );

    for (key, bad) in [
        ("nfs_mount_path", "relative/path"),
        ("default_max_attempts", "0"),
        ("default_max_attempts", "101"),
        ("lease_ttl_seconds", "4"),
        ("retry_backoff_seconds", "ten"),
        ("run_deadline_seconds", "59"),
        ("run_deadline_seconds", "604801"),
        ("default_retention_policy_id", "not-a-uuid"),
        (
            "default_retention_policy_id",
            "0190a5a0-0000-7000-8000-000000000000",
        ),
    ] {
        let status = admin
            .create_configuration(entry(key, bad))
            .await
            .expect_err("invalid value");
        assert_eq!(status.code(), Code::InvalidArgument, "{key}={bad}");
        assert_eq!(
            violated_fields(&status),
            vec!["configuration.value".to_string()],
            "{key}={bad}"
        );
    }
    for (key, good) in [
        ("default_max_attempts", "100"),
        ("lease_ttl_seconds", "5"),
        ("retry_backoff_seconds", "3600"),
        ("run_deadline_seconds", "60"),
    ] {
        admin
            .create_configuration(entry(key, good))
            .await
            .unwrap_or_else(|e| panic!("{key}={good} is valid: {e}"));
    }

    // An existing policy is a valid default.
    let policy = admin
        .create_retention_policy(pb::RetentionPolicy {
            name: "default".into(),
            keep_last: 10,
            ..Default::default()
        })
        .await
        .expect("policy");
    admin
        .create_configuration(entry("default_retention_policy_id", &policy.id))
        .await
        .expect("existing policy");
    // …and while it is the default, the policy cannot be deleted.
    assert_code(
        admin.delete_retention_policy(&policy.id).await,
        Code::FailedPrecondition,
        "default policy",
    );

    // An update's value is checked against the entry's key.
    let lease = admin
        .get_configuration(pb::GetConfigurationRequest {
            key: "lease_ttl_seconds".into(),
            ..Default::default()
        })
        .await
        .expect("get");
    assert_violated(
        admin
            .update_configuration(value_update(pb::Configuration {
                id: lease.id,
                value: "7200".into(),
                ..Default::default()
            }))
            .await,
        &["configuration.value"],
        "out of range update",
    );
}

async fn duplicate_key_is_already_exists(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .admin()
        .create_configuration(entry("default_max_attempts", "3"))
        .await
        .expect("first");
    assert_code(
        server
            .admin()
            .create_configuration(entry("default_max_attempts", "5"))
            .await,
        Code::AlreadyExists,
        "duplicate",
    );
}

async fn list_is_ordered_by_key_and_pages(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Created out of key order, so id order differs from key order.
    for (key, value) in [
        ("run_deadline_seconds", "3600"),
        ("default_max_attempts", "3"),
        ("retry_backoff_seconds", "10"),
        ("lease_ttl_seconds", "30"),
        ("nfs_mount_path", "/mnt"),
    ] {
        server
            .admin()
            .create_configuration(entry(key, value))
            .await
            .expect("create");
    }
    let request = pb::ListConfigurationsRequest {
        page_size: 2,
        ..Default::default()
    };
    let all = server.admin().all_configurations(request).await;
    let seen: Vec<_> = all.into_iter().map(|c| c.key).collect();
    assert_eq!(
        seen,
        vec![
            "default_max_attempts",
            "lease_ttl_seconds",
            "nfs_mount_path",
            "retry_backoff_seconds",
            "run_deadline_seconds",
        ]
    );

    let filtered = server
        .admin()
        .configurations
        .list_configurations(pb::ListConfigurationsRequest {
            key_prefix: "r".into(),
            ..Default::default()
        })
        .await
        .expect("list by prefix")
        .into_inner();
    let keys: Vec<_> = filtered.configurations.into_iter().map(|c| c.key).collect();
    assert_eq!(keys, vec!["retry_backoff_seconds", "run_deadline_seconds"]);
    assert!(filtered.next_page_token.is_empty());

    assert_violated(
        server
            .admin()
            .configurations
            .list_configurations(pb::ListConfigurationsRequest {
                page_token: "%%%".into(),
                ..Default::default()
            })
            .await,
        &["page_token"],
        "bad token",
    );
}

both_backends!(
    configuration_crud_round_trip,
    writes_are_admin_only_but_everyone_reads,
    keys_and_values_are_validated,
    duplicate_key_is_already_exists,
    list_is_ordered_by_key_and_pages,
);
