//! Test harness: re-exports the library's test support and adds the
//! `both_backends!` macro and error-detail helpers.

pub mod fair_lease;
pub mod lease_session;
pub mod readme_blocks;
pub mod webhook;

use coffer_control_plane::model::object::{EntryKind, FileAttributes, SnapshotEntry};
pub use coffer_control_plane::testing::{authed, fresh_catalog, Backend, TestServer};

/// Generates one `#[tokio::test]` per backend for each named async test function
/// taking a `Backend`: `both_backends!(creates_a_bucket);` gives
/// `creates_a_bucket_postgres` and `creates_a_bucket_sqlite`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            pub mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::Backend::Postgres).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            }
        )*
    };
}

/// The field paths of a status's `google.rpc.BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts that `status` is INVALID_ARGUMENT and that its `google.rpc.BadRequest`
/// details name every one of `fields`; returns all the fields it names.
pub fn assert_violations(status: &tonic::Status, fields: &[&str]) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let named = violated_fields(status);
    for field in fields {
        assert!(
            named.iter().any(|n| n == field),
            "{field} missing in {named:?}"
        );
    }
    named
}

/// Asserts that `result` failed with `code`; `what` says what was refused.
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) {
    match result {
        Ok(answer) => panic!("{what}: expected {code:?}, got {answer:?}"),
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
    }
}

/// Asserts that a stranger's attempts to read, change and delete another
/// owner's resource (`get`, `update` and `delete`, made in that order) each
/// fail with NOT_FOUND, so that not even the resource's existence leaks.
pub fn assert_hidden_from_stranger<G, U, D>(
    get: Result<G, tonic::Status>,
    update: Result<U, tonic::Status>,
    delete: Result<D, tonic::Status>,
) where
    G: std::fmt::Debug,
    U: std::fmt::Debug,
    D: std::fmt::Debug,
{
    assert_code(get, tonic::Code::NotFound, "foreign get");
    assert_code(update, tonic::Code::NotFound, "foreign update");
    assert_code(delete, tonic::Code::NotFound, "foreign delete");
}

/// Asserts that `result` failed naming exactly `fields` in its
/// `google.rpc.BadRequest` details; `what` says what was refused.
pub fn assert_violated<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    fields: &[&str],
    what: &str,
) {
    match result {
        Ok(answer) => panic!("{what}: expected a refusal, got {answer:?}"),
        Err(status) => assert_eq!(violated_fields(&status), fields, "{what}"),
    }
}

/// A one-byte regular file at `path` with content `content_hash`, owned by
/// root, as a snapshot entry.
pub fn one_byte_file(path: &str, content_hash: &str) -> SnapshotEntry {
    SnapshotEntry {
        path: path.as_bytes().to_vec(),
        attributes: FileAttributes {
            kind: EntryKind::File,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            content_hash: Some(content_hash.to_string()),
            symlink_target: None,
        },
        storage_key: String::new(),
    }
}

/// An S3 secret of the caller of `api` named `name` holding
/// `access_key_id` (and a made-up secret key); returns its id.
pub async fn s3_secret(
    api: &coffer_control_plane::testing::Api,
    name: &str,
    access_key_id: &str,
) -> String {
    let request = coffer_proto::v1::CreateSecretRequest {
        secret: Some(coffer_proto::v1::Secret {
            name: name.into(),
            ..Default::default()
        }),
        s3: Some(coffer_proto::v1::S3CredentialValues {
            access_key_id: access_key_id.into(),
            secret_access_key: format!("{access_key_id}/secret/EXAMPLEKEY"),
            session_token: String::new(),
        }),
        ..Default::default()
    };
    let created = api.secrets.clone().create_secret(request).await;
    created
        .expect("secret")
        .into_inner()
        .secret
        .expect("secret")
        .id
}
