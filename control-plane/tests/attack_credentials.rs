//! Attacks on managed S3 credentials (issue 12, item 6), as a tenant with an
//! API token would make them, on both catalog backends: secret values never
//! leave the control plane (no response, no log line), a tenant cannot use
//! another tenant's secret or a worker's variables, files or ambient keys,
//! the endpoint policy keeps workers away from metadata and private
//! addresses, and the sealed rows in the catalog are bound to their owner.
//! Repository passphrases (issue 13) are secrets too: never returned or
//! logged, bounded, of one owner, never mixed up with S3 credentials, and
//! leased only to the runs that need them.

use crate::support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use coffer_control_plane::secrets::Keyring;
use coffer_proto::v1 as pb;
use coffer_proto::v1::lease_session_request::Message as Up;
use coffer_proto::v1::lease_session_response::Message as Down;
use prost::Message;
use support::{assert_code, assert_hidden_from_stranger, assert_violations, Backend, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Everything the process logged, at every level, since the first call.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .try_init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Distinct values per test, so a hit can only come from this test's secret.
fn fresh_values() -> pb::S3CredentialValues {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    pb::S3CredentialValues {
        access_key_id: format!("AKIA{}", &tag[..16].to_uppercase()),
        secret_access_key: format!("secret-{tag}"),
        session_token: format!("session-{tag}"),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts that none of the values appears in `bytes`.
fn assert_absent(bytes: &[u8], values: &pb::S3CredentialValues, what: &str) {
    for value in [
        &values.access_key_id,
        &values.secret_access_key,
        &values.session_token,
    ] {
        assert!(!contains(bytes, value), "a secret value leaked in {what}");
    }
}

async fn create_secret(
    api: &coffer_control_plane::testing::Api,
    name: &str,
    values: &pb::S3CredentialValues,
) -> Result<pb::CreateSecretResponse, tonic::Status> {
    api.secrets
        .clone()
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                name: name.into(),
                ..Default::default()
            }),
            s3: Some(values.clone()),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A new secret of the caller of `api`: its metadata.
async fn new_secret(
    api: &coffer_control_plane::testing::Api,
    name: &str,
    values: &pb::S3CredentialValues,
) -> pb::Secret {
    let created = create_secret(api, name, values).await;
    created.expect("create").secret.expect("secret")
}

fn s3_bucket(name: &str, endpoint: &str, secret_id: &str, credentials_ref: &str) -> pb::Bucket {
    pb::Bucket {
        name: name.into(),
        location: Some(pb::bucket::Location::S3(pb::S3Location {
            endpoint: endpoint.into(),
            bucket: "tenant-bucket".into(),
            force_path_style: true,
            secret_id: secret_id.into(),
            credentials_ref: credentials_ref.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn secret_values_never_leave_the_server(backend: Backend) {
    let logs = captured_logs();
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let values = fresh_values();
    let mut responses: Vec<Vec<u8>> = Vec::new();

    let created = create_secret(&alice, "prod", &values)
        .await
        .expect("create secret");
    responses.push(created.encode_to_vec());
    let secret = created.secret.expect("secret");
    assert_eq!(secret.access_key_id_hint, &values.access_key_id[..4]);
    assert!(secret.has_session_token);

    let mut secrets = alice.secrets.clone();
    let got = secrets
        .get_secret(pb::GetSecretRequest {
            id: secret.id.clone(),
        })
        .await
        .expect("get");
    responses.push(got.into_inner().encode_to_vec());
    let listed = secrets
        .list_secrets(pb::ListSecretsRequest::default())
        .await
        .expect("list");
    responses.push(listed.into_inner().encode_to_vec());
    let admin_list = server
        .admin()
        .secrets
        .list_secrets(pb::ListSecretsRequest::default())
        .await
        .expect("admin list");
    responses.push(admin_list.into_inner().encode_to_vec());

    let rotated_values = fresh_values();
    let rotated = secrets
        .rotate_secret(pb::RotateSecretRequest {
            id: secret.id.clone(),
            s3: Some(rotated_values.clone()),
            ..Default::default()
        })
        .await
        .expect("rotate");
    responses.push(rotated.into_inner().encode_to_vec());

    // A rejected value is not echoed either.
    let mut bad = fresh_values();
    bad.secret_access_key = format!("{} with a space", bad.secret_access_key);
    let refused = create_secret(&alice, "bad", &bad)
        .await
        .expect_err("invalid value");
    assert_violations(&refused, &["s3.secret_access_key"]);
    responses.push(refused.message().as_bytes().to_vec());
    responses.push(refused.details().to_vec());

    let bucket = alice
        .create_bucket(s3_bucket("b", "https://s3.example.com", &secret.id, ""))
        .await
        .expect("bucket on the secret");
    responses.push(bucket.encode_to_vec());

    // The sealed row holds neither the old nor the new values in clear.
    let id = secret.id.parse().expect("uuid");
    let (_, sealed) = server.catalog().sealed_secret(id).await.expect("row");
    for (what, bytes) in [
        ("the ciphertext", &sealed.ciphertext),
        ("the nonce", &sealed.nonce),
    ] {
        assert_absent(bytes, &values, what);
        assert_absent(bytes, &rotated_values, what);
    }
    assert_eq!(Some(sealed.key_id.as_str()), server.secrets().primary_id());

    for (i, response) in responses.iter().enumerate() {
        assert_absent(response, &values, &format!("response {i}"));
        assert_absent(response, &rotated_values, &format!("response {i}"));
        assert_absent(response, &bad, &format!("response {i}"));
    }
    let logged = logs.lock().expect("logs").clone();
    assert!(!logged.is_empty(), "the log capture works");
    assert_absent(&logged, &values, "the server's log");
    assert_absent(&logged, &rotated_values, "the server's log");
    assert_absent(&logged, &bad, "the server's log");
}

/// An e-mail channel's SMTP password goes in once and comes out nowhere:
/// not in a response (create, get, list, a failed test send), not in the
/// `Debug` of the request, not in the server's log.
async fn smtp_passwords_never_leave_the_server(backend: Backend) {
    let logs = captured_logs();
    let server = TestServer::start(backend).await;
    server
        .configure("notification_allowed_networks", "127.0.0.0/8")
        .await;
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let password = format!("smtp {} password", uuid::Uuid::new_v4().simple());
    // A port nothing listens on: the test send fails after the login was read.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let channel = pb::NotificationChannel {
        name: "mail".into(),
        kind: Some(pb::notification_channel::Kind::Email(pb::EmailChannel {
            host: "127.0.0.1".into(),
            port: u32::from(closed),
            security: pb::SmtpSecurity::ImplicitTls as i32,
            from: "coffer@example.com".into(),
            to: vec!["ops@example.com".into()],
            username: "alice-mail".into(),
            password: password.clone(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut shown = format!("{channel:?}");
    let mut notifications = alice.notifications.clone();
    let created = notifications
        .create_notification_channel(pb::CreateNotificationChannelRequest {
            channel: Some(channel),
        })
        .await
        .expect("create")
        .into_inner();
    let id = created.channel.as_ref().expect("channel").id.clone();
    let mut responses = vec![created.encode_to_vec()];
    let fetched = notifications
        .get_notification_channel(pb::GetNotificationChannelRequest { id: id.clone() })
        .await
        .expect("get")
        .into_inner();
    let Some(pb::notification_channel::Kind::Email(email)) =
        fetched.channel.as_ref().and_then(|c| c.kind.clone())
    else {
        panic!("an e-mail channel: {fetched:?}");
    };
    assert_eq!(email.username, "alice-mail");
    assert!(email.password.is_empty());
    responses.push(fetched.encode_to_vec());
    let listed = notifications
        .list_notification_channels(pb::ListNotificationChannelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    responses.push(listed.encode_to_vec());
    let tested = notifications
        .test_notification_channel(pb::TestNotificationChannelRequest { id })
        .await
        .expect("test")
        .into_inner();
    let delivery = tested.delivery.clone().expect("delivery");
    assert_eq!(
        delivery.state,
        pb::NotificationDeliveryState::Failed as i32,
        "{delivery:?}"
    );
    responses.push(tested.encode_to_vec());
    shown.push_str(&format!("{created:?} {fetched:?} {listed:?} {tested:?}"));
    assert!(!contains(shown.as_bytes(), &password), "{shown}");
    for (i, response) in responses.iter().enumerate() {
        assert!(!contains(response, &password), "response {i} leaked it");
    }
    let logged = logs.lock().expect("logs").clone();
    assert!(!logged.is_empty(), "the log capture works");
    assert!(!contains(&logged, &password), "the server's log leaked it");
}

async fn a_foreign_secret_is_indistinguishable_from_a_missing_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let (_, mallory_token) = server.create_user("mallory").await;
    let alice = server.as_user(&alice_token);
    let mallory = server.as_user(&mallory_token);
    let secret = new_secret(&alice, "prod", &fresh_values()).await;
    let missing = uuid::Uuid::now_v7().to_string();

    let endpoint = "https://s3.example.com";
    let foreign = mallory
        .create_bucket(s3_bucket("steal", endpoint, &secret.id, ""))
        .await
        .expect_err("foreign secret");
    let absent = mallory
        .create_bucket(s3_bucket("steal", endpoint, &missing, ""))
        .await
        .expect_err("missing secret");
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    assert_eq!(absent.code(), Code::PermissionDenied, "{absent:?}");
    assert_eq!(
        foreign.message().replace(&secret.id, "<id>"),
        absent.message().replace(&missing, "<id>"),
        "the answers must not tell an existing secret from a missing one"
    );
    assert!(foreign.message().contains("bucket.s3.secret_id"));

    // Nor can a bucket of mallory's own be pointed at it by an update.
    let own = new_secret(&mallory, "own", &fresh_values()).await;
    let bucket = mallory
        .create_bucket(s3_bucket("mine", endpoint, &own.id, ""))
        .await
        .expect("own bucket");
    let mut buckets = mallory.buckets.clone();
    let mut retargeted = s3_bucket("mine", endpoint, &secret.id, "");
    retargeted.id = bucket.id.clone();
    let refused = buckets
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(retargeted),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["s3".into()],
            }),
        })
        .await;
    assert_code(
        refused,
        Code::PermissionDenied,
        "retarget to a foreign secret",
    );

    let mut secrets = mallory.secrets.clone();
    assert_hidden_from_stranger(
        secrets
            .get_secret(pb::GetSecretRequest {
                id: secret.id.clone(),
            })
            .await,
        secrets
            .rotate_secret(pb::RotateSecretRequest {
                id: secret.id.clone(),
                s3: Some(fresh_values()),
                ..Default::default()
            })
            .await,
        secrets
            .delete_secret(pb::DeleteSecretRequest {
                id: secret.id.clone(),
            })
            .await,
    );
    let listed = secrets
        .list_secrets(pb::ListSecretsRequest {
            owner_id: secret.owner_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.secrets.iter().all(|s| s.id != secret.id));

    // Alice's secret and mallory's bucket are as they were.
    let after = alice
        .secrets
        .clone()
        .get_secret(pb::GetSecretRequest {
            id: secret.id.clone(),
        })
        .await
        .expect("still there")
        .into_inner()
        .secret
        .expect("secret");
    assert_eq!(after, secret, "nothing about the secret changed");
    let unchanged = buckets
        .get_bucket(pb::GetBucketRequest {
            id: bucket.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .bucket
        .expect("bucket");
    assert_eq!(unchanged, bucket);
}

async fn tenants_cannot_name_worker_credentials(backend: Backend) {
    // A variable that exists in this process (and so in an embedded worker).
    std::env::set_var("COFFER_ATTACK_PRESENT_ACCESS_KEY_ID", "AKIAPRESENT");
    std::env::set_var("COFFER_ATTACK_PRESENT_SECRET_ACCESS_KEY", "present-secret");
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("mallory").await;
    let mallory = server.as_user(&token);
    let endpoint = "https://s3.example.com";
    let mut messages = Vec::new();
    for reference in [
        "env:COFFER_ATTACK_PRESENT",
        "env:COFFER_ATTACK_ABSENT",
        "env:AWS",
        "env:MINIO",
        "file:/etc",
        "file:/nonexistent/dir",
    ] {
        let refused = mallory
            .create_bucket(s3_bucket("b", endpoint, "", reference))
            .await
            .expect_err(reference);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{reference}: {refused:?}"
        );
        assert!(
            refused.message().contains("bucket.s3.credentials_ref"),
            "{refused:?}"
        );
        assert!(!refused.message().contains(reference), "{refused:?}");
        messages.push(refused.message().to_string());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "one answer whatever exists: {messages:?}"
    );

    let ambient = mallory
        .create_bucket(s3_bucket("b", endpoint, "", ""))
        .await
        .expect_err("ambient credentials");
    assert_eq!(ambient.code(), Code::PermissionDenied, "{ambient:?}");
    assert!(
        ambient.message().contains("bucket.s3.secret_id"),
        "{ambient:?}"
    );

    // An admin creating a bucket *for* a tenant cannot hand it the worker's keys either.
    let (user, _) = server.create_user("bob").await;
    let mut for_bob = s3_bucket("b", endpoint, "", "env:MINIO");
    for_bob.owner_id = user.id;
    assert_code(
        server.admin().create_bucket(for_bob).await,
        Code::PermissionDenied,
        "admin giving a tenant's bucket worker credentials",
    );
    // Admins keep them for their own buckets.
    server
        .admin()
        .create_bucket(s3_bucket("admins", endpoint, "", "env:MINIO"))
        .await
        .expect("admin bucket with a credentials reference");

    let listed = mallory
        .buckets
        .clone()
        .list_buckets(pb::ListBucketsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.buckets.is_empty(), "no bucket was created");
}

async fn endpoint_policy_refuses_metadata_private_and_denied_hosts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("mallory").await;
    let mallory = server.as_user(&token);
    let secret = new_secret(&mallory, "k", &fresh_values()).await;
    for endpoint in [
        "http://169.254.169.254",
        "http://169.254.169.254:80/latest/meta-data/",
        "http://2852039166",
        "http://[::ffff:169.254.169.254]",
        "http://127.0.0.1:3900",
        "http://localhost:9000",
        "http://10.0.0.1",
        "http://[fd00::1]",
    ] {
        let refused = mallory
            .create_bucket(s3_bucket("b", endpoint, &secret.id, ""))
            .await
            .expect_err(endpoint);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{endpoint}: {refused:?}"
        );
        assert!(
            refused.message().contains("bucket.s3.endpoint"),
            "{refused:?}"
        );
    }
    for malformed in ["http://user:pass@s3.example.com", "ftp://s3.example.com"] {
        let refused = mallory
            .create_bucket(s3_bucket("b", malformed, &secret.id, ""))
            .await
            .expect_err(malformed);
        assert_violations(&refused, &["bucket.s3.endpoint"]);
    }

    server.configure("s3_endpoint_deny", "*.evil.example").await;
    assert_code(
        mallory
            .create_bucket(s3_bucket("b", "https://s3.evil.example", &secret.id, ""))
            .await,
        Code::PermissionDenied,
        "denied host",
    );
    server
        .configure("s3_endpoint_allow", "s3.example.com, 10.1.0.0/16")
        .await;
    assert_code(
        mallory
            .create_bucket(s3_bucket("b", "https://s3.other.example", &secret.id, ""))
            .await,
        Code::PermissionDenied,
        "host outside the allow list",
    );
    mallory
        .create_bucket(s3_bucket("ok", "https://s3.example.com", &secret.id, ""))
        .await
        .expect("allowed host");
    mallory
        .create_bucket(s3_bucket("lan", "http://10.1.2.3:9000", &secret.id, ""))
        .await
        .expect("explicitly allowed private network");
    let bad_pattern = server
        .admin()
        .create_configuration(pb::Configuration {
            key: "s3_endpoint_deny".into(),
            value: "http://x".into(),
            ..Default::default()
        })
        .await
        .expect_err("a URL is not a host pattern");
    assert_eq!(bad_pattern.code(), Code::InvalidArgument);
}

/// A worker session driven by the test: connects, offers one slot, and
/// returns what the control plane sends.
struct Session {
    _tx: mpsc::Sender<pb::LeaseSessionRequest>,
    rx: tonic::Streaming<pb::LeaseSessionResponse>,
}

impl Session {
    async fn open(server: &TestServer) -> Session {
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::WorkerHello {
            name: "scripted".into(),
            slots: 1,
            ..Default::default()
        };
        for message in [
            Up::Hello(hello),
            Up::Credit(pb::WorkerCredit { free_slots: 1 }),
        ] {
            tx.send(pb::LeaseSessionRequest {
                message: Some(message),
            })
            .await
            .expect("send");
        }
        let rx = server
            .as_worker()
            .workers
            .lease_session(ReceiverStream::new(rx))
            .await
            .expect("open session")
            .into_inner();
        Session { _tx: tx, rx }
    }

    /// The next assignment, if one comes within a few seconds.
    async fn assignment(&mut self) -> Option<pb::RunAssignment> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.message()).await;
            match next {
                Ok(Ok(Some(pb::LeaseSessionResponse {
                    message: Some(Down::Assignment(assignment)),
                }))) => return Some(assignment),
                Ok(Ok(Some(_))) => {}
                _ => return None,
            }
        }
    }
}

async fn queue_backup_to(server: &TestServer, token: &str, bucket_id: &str) -> String {
    server
        .as_user(token)
        .queue_run(pb::create_run_request::Spec::Backup(pb::BackupSpec {
            source_path: "/data/source".into(),
            target: Some(pb::Target {
                destination: Some(pb::target::Destination::Bucket(pb::BucketTarget {
                    bucket_id: bucket_id.into(),
                    prefix: String::new(),
                })),
            }),
            ..Default::default()
        }))
        .await
}

async fn leases_carry_only_the_owners_secret_and_recheck_the_policy(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let values = fresh_values();
    let secret = new_secret(&alice, "k", &values).await;
    let bucket = alice
        .create_bucket(s3_bucket("b", "https://s3.example.com", &secret.id, ""))
        .await
        .expect("bucket");

    let run = queue_backup_to(&server, &token, &bucket.id).await;
    let mut session = Session::open(&server).await;
    let assignment = session.assignment().await.expect("assignment");
    let resolved = assignment
        .target
        .and_then(|t| t.bucket)
        .expect("resolved bucket");
    let leased = resolved.credentials.clone().expect("leased credentials");
    assert_eq!(leased.access_key_id, values.access_key_id);
    assert_eq!(leased.secret_access_key, values.secret_access_key);
    assert!(!resolved.use_worker_credentials);
    assert!(resolved.credentials_ref.is_empty());
    let shown = format!("{resolved:?}");
    assert!(!shown.contains(&values.secret_access_key), "{shown}");
    let run_view = server.get_run(&run).await;
    assert_absent(&run_view.encode_to_vec(), &values, "the run");
    drop(session);

    // The policy changes after the bucket was written: the next lease is refused.
    server.configure("s3_endpoint_deny", "s3.example.com").await;
    let failed = refused_lease(&server, &token, &bucket.id).await;
    assert!(
        failed.error.contains("s3_endpoint_deny"),
        "{}",
        failed.error
    );
    assert_absent(failed.error.as_bytes(), &values, "the run's error");
}

async fn a_tenant_bucket_from_before_the_upgrade_stops_at_lease_time(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("mallory").await;
    let mallory = server.as_user(&token);
    let secret = new_secret(&mallory, "k", &fresh_values()).await;
    let bucket = mallory
        .create_bucket(s3_bucket("b", "https://s3.example.com", &secret.id, ""))
        .await
        .expect("bucket");
    // What an upgraded catalog holds: a tenant's bucket naming a worker variable.
    let id = bucket.id.parse::<uuid::Uuid>().expect("uuid");
    server
        .catalog()
        .execute_raw(&format!(
            "UPDATE buckets SET s3_secret_id = NULL, s3_credentials_ref = 'env:MINIO' \
             WHERE id = {}",
            uuid_literal(backend, id)
        ))
        .await
        .expect("simulate an old bucket");
    let failed = refused_lease(&server, &token, &bucket.id).await;
    assert!(failed.error.contains("credentials_ref"), "{}", failed.error);
    assert!(!failed.error.contains("MINIO"), "{}", failed.error);
}

/// Queues a backup to `bucket_id` as the holder of `token`, offers a worker
/// slot and asserts that no lease is handed out: the run fails instead.
async fn refused_lease(server: &TestServer, token: &str, bucket_id: &str) -> pb::Run {
    let run = queue_backup_to(server, token, bucket_id).await;
    let mut session = Session::open(server).await;
    assert!(
        session.assignment().await.is_none(),
        "no lease is handed out"
    );
    let failed = server.wait_until_final(&run, Duration::from_secs(30)).await;
    assert_eq!(failed.state, pb::RunState::Failed as i32);
    failed
}

fn uuid_literal(backend: Backend, id: uuid::Uuid) -> String {
    match backend {
        Backend::Postgres => format!("'{id}'"),
        Backend::Sqlite => format!("x'{}'", id.simple()),
    }
}

async fn a_sealed_row_moved_to_another_owner_fails_to_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let (mallory_user, mallory_token) = server.create_user("mallory").await;
    let alice = server.as_user(&alice_token);
    let mallory = server.as_user(&mallory_token);
    let values = fresh_values();
    let secret = new_secret(&alice, "k", &values).await;
    let id = secret.id.parse::<uuid::Uuid>().expect("uuid");
    let mallory_id = mallory_user.id.parse::<uuid::Uuid>().expect("uuid");
    // Someone with write access to the catalog moves alice's row to mallory.
    server
        .catalog()
        .execute_raw(&format!(
            "UPDATE secrets SET owner_id = {} WHERE id = {}",
            uuid_literal(backend, mallory_id),
            uuid_literal(backend, id)
        ))
        .await
        .expect("move the row");
    let (owner, sealed) = server.catalog().sealed_secret(id).await.expect("row");
    assert_eq!(owner, mallory_id);
    let error = server
        .secrets()
        .open(id, owner, &sealed)
        .expect_err("bound to its owner");
    assert!(error.to_string().contains("integrity"), "{error}");

    // Through the API: mallory's bucket on the moved row never gets a lease.
    let bucket = mallory
        .create_bucket(s3_bucket("b", "https://s3.example.com", &secret.id, ""))
        .await
        .expect("the catalog now says mallory owns it");
    let failed = refused_lease(&server, &mallory_token, &bucket.id).await;
    assert!(failed.error.contains("integrity"), "{}", failed.error);
    assert_absent(failed.error.as_bytes(), &values, "the run's error");
}

async fn without_a_key_secret_calls_fail_and_the_rest_works(backend: Backend) {
    let server = TestServer::start_with_secrets(backend, Keyring::disabled()).await;
    let refused = create_secret(&server.admin(), "k", &fresh_values())
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("COFFER_SECRETS_KEY_FILE"),
        "{refused:?}"
    );
    assert_code(
        server
            .admin()
            .secrets
            .list_secrets(pb::ListSecretsRequest::default())
            .await,
        Code::FailedPrecondition,
        "list without a key",
    );
    server
        .admin()
        .create_bucket(s3_bucket("admins", "https://s3.example.com", "", ""))
        .await
        .expect("the rest of the server works");
}

async fn replacing_the_key_reseals_every_secret(backend: Backend) {
    use coffer_control_plane::secrets::SecretKey;
    let (catalog, _guard) = support::fresh_catalog(backend).await;
    let owner = coffer_control_plane::auth::ensure_admin_user(&catalog)
        .await
        .expect("user")
        .id;
    let old_key = SecretKey::generate();
    let old = Keyring::new(old_key.clone(), Vec::new());
    let id = uuid::Uuid::now_v7();
    let values = coffer_control_plane::model::secret::S3CredentialValues {
        access_key_id: "AKIAROTATION".into(),
        secret_access_key: "rotation-secret".into(),
        session_token: String::new(),
    };
    let spec = coffer_control_plane::model::secret::SecretSpec {
        owner_id: owner,
        name: "k".into(),
        description: String::new(),
    };
    let sealed = coffer_control_plane::catalog::secrets::SealedValues {
        kind: coffer_control_plane::model::secret::SecretKind::S3,
        sealed: old.seal(id, owner, &values).expect("seal"),
        access_key_id_hint: values.hint(),
        has_session_token: false,
    };
    catalog
        .create_secret(id, &spec, &sealed)
        .await
        .expect("create");

    let new_key = SecretKey::generate();
    let error = Keyring::new(new_key.clone(), Vec::new())
        .open(id, owner, &catalog.sealed_secret(id).await.expect("row").1)
        .expect_err("a key the row was not sealed with");
    assert!(error.to_string().contains(old_key.id()), "{error}");

    let rotated = Keyring::new(new_key.clone(), vec![old_key]);
    assert_eq!(catalog.reseal_secrets(&rotated).await.expect("reseal"), 1);
    assert_eq!(catalog.reseal_secrets(&rotated).await.expect("again"), 0);
    let (_, row) = catalog.sealed_secret(id).await.expect("row");
    assert_eq!(row.key_id, new_key.id());
    let retired = Keyring::new(new_key, Vec::new());
    assert_eq!(retired.open(id, owner, &row).expect("open"), values);
    assert!(old.open(id, owner, &row).is_err(), "the old key is retired");
}

async fn replacing_the_key_reseals_every_catalog_key(backend: Backend) {
    use coffer_control_plane::catalog::repositories::NewRepositoryFormat;
    use coffer_control_plane::model::bucket::RepositoryEncryption;
    use coffer_control_plane::secrets::SecretKey;
    let (catalog, _guard) = support::fresh_catalog(backend).await;
    let owner = coffer_control_plane::auth::ensure_admin_user(&catalog)
        .await
        .expect("user")
        .id;
    let old_key = SecretKey::generate();
    let old = Keyring::new(old_key.clone(), Vec::new());
    let catalog_key = [7u8; 32];
    let repository = catalog
        .ensure_repository("fs:/srv/reseal", owner, |id| {
            Ok(NewRepositoryFormat {
                encryption: RepositoryEncryption::Aes256Gcm,
                catalog_key: Some(old.seal_catalog_key(id, &catalog_key)?),
            })
        })
        .await
        .expect("repository");
    let sealed = |repository: &coffer_control_plane::catalog::repositories::Repository| {
        repository
            .sealed_catalog_key()
            .expect("a sealed catalog key")
    };
    assert_eq!(sealed(&repository).key_id, old_key.id());

    let new_key = SecretKey::generate();
    let rotated = Keyring::new(new_key.clone(), vec![old_key]);
    assert_eq!(
        catalog.reseal_catalog_keys(&rotated).await.expect("reseal"),
        1
    );
    assert_eq!(
        catalog.reseal_catalog_keys(&rotated).await.expect("again"),
        0
    );
    let after = catalog
        .find_repository("fs:/srv/reseal")
        .await
        .expect("find")
        .expect("the repository");
    assert_eq!(sealed(&after).key_id, new_key.id());
    let retired = Keyring::new(new_key, Vec::new());
    let opened = retired
        .open_catalog_key(repository.id, &sealed(&after))
        .expect("the new key alone opens it");
    assert_eq!(opened.as_slice(), &catalog_key);
    assert!(
        old.open_catalog_key(repository.id, &sealed(&after))
            .is_err(),
        "the old key is retired"
    );
}

/// A fresh passphrase per test, so a hit can only come from this test.
fn fresh_passphrase() -> String {
    format!("pass {} phrase", uuid::Uuid::new_v4().simple())
}

async fn create_passphrase(
    api: &coffer_control_plane::testing::Api,
    name: &str,
    passphrase: &str,
) -> Result<pb::CreateSecretResponse, tonic::Status> {
    api.secrets
        .clone()
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                name: name.into(),
                ..Default::default()
            }),
            passphrase: Some(pb::PassphraseValue {
                passphrase: passphrase.into(),
            }),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn filesystem_bucket(name: &str, passphrase_secret_id: &str) -> pb::Bucket {
    pb::Bucket {
        name: name.into(),
        location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
            path: format!("/data/{name}"),
        })),
        passphrase_secret_id: passphrase_secret_id.into(),
        ..Default::default()
    }
}

async fn passphrases_never_leave_the_server(backend: Backend) {
    let logs = captured_logs();
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let passphrase = fresh_passphrase();
    let rotated_passphrase = fresh_passphrase();
    let mut responses: Vec<Vec<u8>> = Vec::new();

    let created = create_passphrase(&alice, "recovery", &passphrase)
        .await
        .expect("create a passphrase secret");
    responses.push(created.encode_to_vec());
    let secret = created.secret.expect("secret");
    assert_eq!(secret.kind, pb::SecretKind::Passphrase as i32);
    assert!(secret.access_key_id_hint.is_empty());

    let mut secrets = alice.secrets.clone();
    let got = secrets
        .get_secret(pb::GetSecretRequest {
            id: secret.id.clone(),
        })
        .await
        .expect("get");
    responses.push(got.into_inner().encode_to_vec());
    let listed = secrets
        .list_secrets(pb::ListSecretsRequest::default())
        .await
        .expect("list");
    responses.push(listed.into_inner().encode_to_vec());
    let rotated = secrets
        .rotate_secret(pb::RotateSecretRequest {
            id: secret.id.clone(),
            passphrase: Some(pb::PassphraseValue {
                passphrase: rotated_passphrase.clone(),
            }),
            ..Default::default()
        })
        .await
        .expect("rotate");
    responses.push(rotated.into_inner().encode_to_vec());
    let refused = create_passphrase(&alice, "short", "short")
        .await
        .expect_err("too short");
    assert_violations(&refused, &["passphrase.passphrase"]);
    responses.push(refused.message().as_bytes().to_vec());
    let bucket = alice
        .create_bucket(filesystem_bucket("b", &secret.id))
        .await
        .expect("a bucket naming the passphrase");
    assert_eq!(bucket.passphrase_secret_id, secret.id);
    responses.push(bucket.encode_to_vec());

    let id = secret.id.parse().expect("uuid");
    let (_, sealed) = server
        .catalog()
        .sealed_secret_of(
            id,
            coffer_control_plane::model::secret::SecretKind::Passphrase,
        )
        .await
        .expect("row");
    for bytes in [&sealed.ciphertext, &sealed.nonce] {
        assert!(!contains(bytes, &passphrase) && !contains(bytes, &rotated_passphrase));
    }
    // The row opens only as a passphrase: as S3 credentials it is not found.
    assert!(server.catalog().sealed_secret(id).await.is_err());

    for (i, response) in responses.iter().enumerate() {
        for value in [&passphrase, &rotated_passphrase] {
            assert!(
                !contains(response, value),
                "response {i} shows a passphrase"
            );
        }
    }
    let logged = logs.lock().expect("logs").clone();
    assert!(!logged.is_empty(), "the log capture works");
    for value in [&passphrase, &rotated_passphrase] {
        assert!(
            !contains(&logged, value),
            "the server's log shows a passphrase"
        );
    }
}

async fn passphrases_are_bounded_and_never_taken_for_credentials(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, alice_token) = server.create_user("alice").await;
    let (_, mallory_token) = server.create_user("mallory").await;
    let alice = server.as_user(&alice_token);
    let mallory = server.as_user(&mallory_token);

    let long = "x".repeat(1025);
    let refused = create_passphrase(&alice, "long", &long)
        .await
        .expect_err("too long");
    assert_violations(&refused, &["passphrase.passphrase"]);
    let refused = create_passphrase(&alice, "ctl", "line\nbreak-secret")
        .await
        .expect_err("control character");
    assert_violations(&refused, &["passphrase.passphrase"]);
    assert!(!refused.message().contains("break-secret"));
    let both = alice
        .secrets
        .clone()
        .create_secret(pb::CreateSecretRequest {
            secret: Some(pb::Secret {
                name: "both".into(),
                ..Default::default()
            }),
            s3: Some(fresh_values()),
            passphrase: Some(pb::PassphraseValue {
                passphrase: fresh_passphrase(),
            }),
        })
        .await
        .expect_err("two kinds at once");
    assert_violations(&both, &["passphrase"]);

    let phrase = create_passphrase(&alice, "phrase", &fresh_passphrase())
        .await
        .expect("passphrase")
        .secret
        .expect("secret");
    let keys = new_secret(&alice, "keys", &fresh_values()).await;
    // A rotation keeps the kind.
    let mixed = alice
        .secrets
        .clone()
        .rotate_secret(pb::RotateSecretRequest {
            id: phrase.id.clone(),
            s3: Some(fresh_values()),
            ..Default::default()
        })
        .await
        .expect_err("s3 values for a passphrase");
    assert_violations(&mixed, &["passphrase"]);
    // A passphrase is not S3 credentials, and S3 credentials no passphrase.
    let as_credentials = alice
        .create_bucket(s3_bucket("creds", "https://s3.example.com", &phrase.id, ""))
        .await
        .expect_err("a passphrase as credentials");
    assert_eq!(
        as_credentials.code(),
        Code::PermissionDenied,
        "{as_credentials:?}"
    );
    let as_passphrase = alice
        .create_bucket(filesystem_bucket("phrase", &keys.id))
        .await
        .expect_err("credentials as a passphrase");
    assert_violations(&as_passphrase, &["bucket.passphrase_secret_id"]);
    // An unencrypted bucket has no key slots to put a passphrase in.
    let mut plain = filesystem_bucket("plain", &phrase.id);
    plain.encryption = pb::RepositoryEncryption::None as i32;
    let unencrypted = alice.create_bucket(plain).await.expect_err("no slots");
    assert_violations(&unencrypted, &["bucket.passphrase_secret_id"]);
    // Another tenant's passphrase cannot be named, on create or update.
    let foreign = mallory
        .create_bucket(filesystem_bucket("steal", &phrase.id))
        .await
        .expect_err("a foreign passphrase");
    assert_violations(&foreign, &["bucket.passphrase_secret_id"]);
    let own = mallory
        .create_bucket(filesystem_bucket("mine", ""))
        .await
        .expect("a bucket of her own");
    let mut update = own.clone();
    update.passphrase_secret_id = phrase.id.clone();
    let updated = mallory
        .buckets
        .clone()
        .update_bucket(pb::UpdateBucketRequest {
            bucket: Some(update),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["passphrase_secret_id".into()],
            }),
        })
        .await
        .expect_err("a foreign passphrase by update");
    assert_violations(&updated, &["bucket.passphrase_secret_id"]);
    // A passphrase in use cannot be deleted from under its bucket.
    alice
        .create_bucket(filesystem_bucket("in-use", &phrase.id))
        .await
        .expect("alice's own bucket");
    let in_use = alice
        .secrets
        .clone()
        .delete_secret(pb::DeleteSecretRequest {
            id: phrase.id.clone(),
        })
        .await
        .expect_err("in use");
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");
}

async fn leases_carry_the_passphrase_only_to_the_backup_that_creates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = server.create_user("alice").await;
    let alice = server.as_user(&token);
    let passphrase = fresh_passphrase();
    let phrase = create_passphrase(&alice, "phrase", &passphrase)
        .await
        .expect("passphrase")
        .secret
        .expect("secret");
    let secret = new_secret(&alice, "k", &fresh_values()).await;
    let mut bucket = s3_bucket("b", "https://s3.example.com", &secret.id, "");
    bucket.passphrase_secret_id = phrase.id.clone();
    let bucket = alice.create_bucket(bucket).await.expect("bucket");

    let run = queue_backup_to(&server, &token, &bucket.id).await;
    let mut session = Session::open(&server).await;
    let assignment = session.assignment().await.expect("assignment");
    assert_eq!(
        assignment.passphrase, passphrase,
        "the backup may create the repository"
    );
    assert!(!format!("{:?}", server.get_run(&run).await).contains(&passphrase));
    drop(session);

    // The same bucket without a passphrase secret: the lease carries none.
    let (_, bob_token) = server.create_user("bob").await;
    let bob = server.as_user(&bob_token);
    let bob_secret = new_secret(&bob, "k", &fresh_values()).await;
    let bare = bob
        .create_bucket(s3_bucket(
            "bare",
            "https://s3.example.com",
            &bob_secret.id,
            "",
        ))
        .await
        .expect("bucket");
    queue_backup_to(&server, &bob_token, &bare.id).await;
    let mut session = Session::open(&server).await;
    let assignment = session.assignment().await.expect("assignment");
    assert!(assignment.passphrase.is_empty());
}

both_backends!(
    smtp_passwords_never_leave_the_server,
    passphrases_never_leave_the_server,
    passphrases_are_bounded_and_never_taken_for_credentials,
    leases_carry_the_passphrase_only_to_the_backup_that_creates,
    replacing_the_key_reseals_every_catalog_key,
    replacing_the_key_reseals_every_secret,
    secret_values_never_leave_the_server,
    a_foreign_secret_is_indistinguishable_from_a_missing_one,
    tenants_cannot_name_worker_credentials,
    endpoint_policy_refuses_metadata_private_and_denied_hosts,
    leases_carry_only_the_owners_secret_and_recheck_the_policy,
    a_tenant_bucket_from_before_the_upgrade_stops_at_lease_time,
    a_sealed_row_moved_to_another_owner_fails_to_open,
    without_a_key_secret_calls_fail_and_the_rest_works,
);
