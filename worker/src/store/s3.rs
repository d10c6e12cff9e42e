//! A repository under a prefix of an S3 bucket (AWS, MinIO, Garage, …).
//!
//! Objects up to [`MULTIPART_THRESHOLD`] are written with one `PutObject`;
//! larger files with a multipart upload of [`PART_SIZE`] parts, at most
//! [`PART_PARALLELISM`] in flight, aborted when any part fails or the upload is
//! cancelled. Throttling and 5xx answers are retried by the SDK (standard
//! mode, [`MAX_ATTEMPTS`] attempts with exponential backoff).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, StorageClass};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use coffer_proto::v1::ResolvedBucket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::{cancellable, StoreError};
use super::lock::ObjectLock;

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// How long creating a multipart upload may take; it is the one request
/// that is not abandoned on cancellation.
const CREATE_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Size of each part of a multipart upload (the last one may be smaller).
pub const PART_SIZE: u64 = 16 << 20;
/// Parts of one upload in flight at once.
pub const PART_PARALLELISM: usize = 4;
/// Attempts per request, including the first, for retryable errors.
pub const MAX_ATTEMPTS: u32 = 5;

/// Region used when a bucket names none.
const DEFAULT_REGION: &str = "us-east-1";

/// Where a repository lives in S3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`; empty for AWS.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region; empty means `us-east-1`.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub force_path_style: bool,
    /// Key prefix of the repository inside the bucket, without slashes at
    /// either end; may be empty.
    pub prefix: String,
}

/// Static S3 credentials. `Debug` never shows the secret.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials, if any.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The credentials to use with a resolved bucket, as its lease says: the
/// ones the control plane delivered (from the bucket owner's secret), or,
/// only when the control plane allows it for an admin's bucket, the
/// worker's own ([`resolve_credentials`]). Never anything else: a tenant's
/// bucket cannot make the worker sign with keys of its environment.
pub async fn credentials_for(bucket: &ResolvedBucket) -> Result<S3Credentials, StoreError> {
    if let Some(leased) = &bucket.credentials {
        return Ok(S3Credentials {
            access_key_id: leased.access_key_id.clone(),
            secret_access_key: leased.secret_access_key.clone(),
            session_token: Some(leased.session_token.clone()).filter(|t| !t.is_empty()),
        });
    }
    if bucket.use_worker_credentials {
        return resolve_credentials(&bucket.credentials_ref).await;
    }
    Err(StoreError::Config(
        "the lease carries no credentials for this bucket and does not allow the worker's own"
            .into(),
    ))
}

/// The endpoint of a resolved bucket: its own, or for an admin's bucket
/// using the worker's credentials with no endpoint, the seeds'
/// `MINIO_ENDPOINT` (`host:port` or a URL; `MINIO_SECURE=true` makes a bare
/// `host:port` https) when the worker has it; empty means AWS.
pub fn endpoint_for(bucket: &ResolvedBucket) -> String {
    if !bucket.endpoint.is_empty() || !bucket.use_worker_credentials {
        return bucket.endpoint.clone();
    }
    let Some(endpoint) = std::env::var("MINIO_ENDPOINT")
        .ok()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
    else {
        return String::new();
    };
    if endpoint.contains("://") {
        return endpoint;
    }
    let secure = std::env::var("MINIO_SECURE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let scheme = if secure { "https" } else { "http" };
    format!("{scheme}://{endpoint}")
}

/// Looks up the credentials a bucket's `credentials_ref` names:
///
/// * `env:NAME` — environment variables `NAME_ACCESS_KEY_ID` and
///   `NAME_SECRET_ACCESS_KEY` (and optionally `NAME_SESSION_TOKEN`);
/// * `file:/dir` — files `access_key_id` and `secret_access_key` (and
///   optionally `session_token`) in that directory, e.g. a mounted Kubernetes
///   secret;
/// * empty — `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
///   (`AWS_SESSION_TOKEN`), then `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY`.
pub async fn resolve_credentials(credentials_ref: &str) -> Result<S3Credentials, StoreError> {
    if let Some(name) = credentials_ref.strip_prefix("env:") {
        return credentials_from_env(
            &format!("{name}_ACCESS_KEY_ID"),
            &format!("{name}_SECRET_ACCESS_KEY"),
            Some(&format!("{name}_SESSION_TOKEN")),
        )
        .ok_or_else(|| {
            StoreError::Config(format!(
                "credentials {credentials_ref:?}: {name}_ACCESS_KEY_ID and \
                 {name}_SECRET_ACCESS_KEY must both be set"
            ))
        });
    }
    if let Some(dir) = credentials_ref.strip_prefix("file:") {
        return credentials_from_dir(Path::new(dir)).await;
    }
    if !credentials_ref.is_empty() {
        return Err(StoreError::Config(format!(
            "credentials reference {credentials_ref:?} is neither env:NAME nor file:/dir"
        )));
    }
    credentials_from_env(
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        Some("AWS_SESSION_TOKEN"),
    )
    .or_else(|| credentials_from_env("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", None))
    .ok_or_else(|| {
        StoreError::Config(
            "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or \
             MINIO_ACCESS_KEY/MINIO_SECRET_KEY), or give the bucket a credentials_ref"
                .into(),
        )
    })
}

fn credentials_from_env(id: &str, secret: &str, token: Option<&str>) -> Option<S3Credentials> {
    let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Some(S3Credentials {
        access_key_id: non_empty(id)?,
        secret_access_key: non_empty(secret)?,
        session_token: token.and_then(non_empty),
    })
}

async fn credentials_from_dir(dir: &Path) -> Result<S3Credentials, StoreError> {
    async fn read(dir: &Path, name: &str) -> Result<Option<String>, StoreError> {
        let path = dir.join(name);
        match tokio::fs::read_to_string(&path).await {
            Ok(value) => Ok(Some(value.trim().to_owned()).filter(|v| !v.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }
    let missing = |name: &str| {
        StoreError::Config(format!(
            "credentials directory {} has no {name} file",
            dir.display()
        ))
    };
    Ok(S3Credentials {
        access_key_id: read(dir, "access_key_id")
            .await?
            .ok_or_else(|| missing("access_key_id"))?,
        secret_access_key: read(dir, "secret_access_key")
            .await?
            .ok_or_else(|| missing("secret_access_key"))?,
        session_token: read(dir, "session_token").await?,
    })
}

/// A repository in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    location: S3Location,
    /// The Object Lock every object is written with, when the bucket requires one.
    lock: Option<ObjectLock>,
    /// Append-only: every deletion is refused (a backup-class worker).
    pub(super) deletes_refused: bool,
    /// The bandwidth limits its transfers pay into (none by default).
    pub(super) throttle: std::sync::Arc<crate::bandwidth::Throttle>,
    /// The storage class packs are written in; `None`: the bucket's default.
    pack_storage_class: Option<StorageClass>,
}

impl S3Store {
    /// A client for `location` signing with `credentials`.
    ///
    /// An `http://` endpoint gets a plain-HTTP client (no TLS configuration
    /// is loaded at all, so CA-bundle variables cannot break it); any other
    /// endpoint gets rustls with the system roots plus the certificates of
    /// `AWS_CA_BUNDLE`, when that names a readable PEM file.
    pub async fn new(location: S3Location, credentials: S3Credentials) -> Result<Self, StoreError> {
        if location.bucket.is_empty() {
            return Err(StoreError::Config("S3 bucket name is empty".into()));
        }
        let http_client = if location.endpoint.starts_with("http://") {
            aws_smithy_http_client::Builder::new().build_http()
        } else {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .tls_context(tls_context().await?)
                .build_https()
        };
        let region = if location.region.is_empty() {
            DEFAULT_REGION.to_owned()
        } else {
            location.region.clone()
        };
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(region))
            .credentials_provider(Credentials::new(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
                None,
                "coffer",
            ))
            .force_path_style(location.force_path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .interceptor(super::s3_metrics::RetryCounter)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            )
            // S3-compatible servers differ in their support of the newer
            // flexible checksums; send them only where an operation needs them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !location.endpoint.is_empty() {
            config = config.endpoint_url(location.endpoint.clone());
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            location,
            lock: None,
            deletes_refused: false,
            throttle: crate::bandwidth::Throttle::unlimited(),
            pack_storage_class: None,
        })
    }

    /// The same store writing data packs in storage class `class`
    /// (`STANDARD_IA`, `GLACIER_IR`, ...; empty: the bucket's default), when
    /// written through [`Store::put_data_pack`](super::Store::put_data_pack).
    /// Everything a run reads to plan its work (tree packs, index files,
    /// manifests, config, key slots) stays in the default class, which reads
    /// instantly.
    pub fn with_pack_storage_class(mut self, class: &str) -> Result<Self, StoreError> {
        if class.is_empty() {
            self.pack_storage_class = None;
            return Ok(self);
        }
        let known = StorageClass::values().contains(&class);
        if !known {
            return Err(StoreError::Config(format!(
                "unknown S3 storage class {class:?}"
            )));
        }
        self.pack_storage_class = Some(StorageClass::from(class));
        Ok(self)
    }

    /// The storage class data packs are written in, if not the default.
    pub fn pack_storage_class(&self) -> Option<&StorageClass> {
        self.pack_storage_class.as_ref()
    }

    /// The same store writing every object with `lock` (the bucket must
    /// have Object Lock enabled: [`S3Store::check_object_lock`]), and
    /// deleting by version.
    pub fn with_object_lock(mut self, lock: ObjectLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// The Object Lock objects are written with, if any.
    pub fn object_lock(&self) -> Option<&ObjectLock> {
        self.lock.as_ref()
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Where this store writes, e.g. `s3 http://host:3900 bucket/prefix`.
    pub fn describe(&self) -> String {
        let endpoint = if self.location.endpoint.is_empty() {
            "aws"
        } else {
            &self.location.endpoint
        };
        format!(
            "s3 {endpoint} {}/{}",
            self.location.bucket, self.location.prefix
        )
    }

    /// The location this store writes to.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Creates the bucket (with Object Lock enabled when the store writes
    /// with a lock); a bucket that already exists and is ours is fine.
    pub async fn ensure_bucket(&self, cancel: &CancellationToken) -> Result<(), StoreError> {
        let bucket = &self.location.bucket;
        let request = self
            .client
            .create_bucket()
            .bucket(bucket)
            .set_object_lock_enabled_for_bucket(self.lock.map(|_| true))
            .send();
        match cancellable(cancel, async { Ok(request.await) }).await? {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(s3_error("CreateBucket", bucket, e)),
        }
    }

    /// Keys (relative to the repository) of multipart uploads that were
    /// started and neither completed nor aborted, for cleaning up after
    /// crashed workers.
    pub async fn pending_multipart_uploads(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, StoreError> {
        let full_prefix = self.full_key("");
        let mut keys = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let request = self
                .client
                .list_multipart_uploads()
                .bucket(&self.location.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send();
            let page = send(cancel, "ListMultipartUploads", &full_prefix, request).await?;
            keys.extend(
                page.uploads()
                    .iter()
                    .filter_map(|u| u.key())
                    .filter_map(|k| k.get(full_prefix.len()..))
                    .map(str::to_owned),
            );
            if !page.is_truncated().unwrap_or(false) {
                return Ok(keys);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_id_marker.is_none() {
                return Ok(keys);
            }
        }
    }

    /// `prefix/key`, or `key` when the repository has no prefix; with an
    /// empty key, the prefix with its trailing slash.
    pub(super) fn full_key(&self, key: &str) -> String {
        if self.location.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.location.prefix)
        }
    }

    pub(super) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        self.upload_file(key, path, false, cancel).await
    }

    /// A create-only `put_file`: refused with [`StoreError::AlreadyExists`]
    /// when the key exists. The existence check catches what servers
    /// without conditional writes would overwrite; `If-None-Match: *` on
    /// the `PutObject` closes the race between check and write on servers
    /// that honour it (a `412` answer). Objects above the multipart
    /// threshold rely on the check alone.
    pub(super) async fn put_file_new(
        &self,
        key: &str,
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        if cancellable(cancel, self.exists(key)).await? {
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        self.upload_file(key, path, true, cancel).await
    }

    /// Uploads the file at `path` under `key`, with `If-None-Match: *` when
    /// `create_only`; returns its size.
    async fn upload_file(
        &self,
        key: &str,
        path: &Path,
        create_only: bool,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
            .len();
        let full_key = self.full_key(key);
        if size > MULTIPART_THRESHOLD {
            let wanted = self.lock.map(|lock| lock.retain_until(chrono::Utc::now()));
            self.put_multipart(&full_key, path, size, cancel).await?;
            if let Some(wanted) = wanted {
                self.confirm_lock(key, wanted, cancel).await?;
            }
            return Ok(size);
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e.into()))?;
        let (lock_mode, retain_until) = self.lock_for_write().unzip();
        let request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&full_key)
            .content_length(to_i64(size))
            .set_if_none_match(create_only.then(|| "*".to_owned()))
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(retain_until)
            // S3 requires an integrity checksum on writes with a lock.
            .set_checksum_algorithm(self.lock.map(|_| ChecksumAlgorithm::Crc32C))
            .body(body)
            .send();
        let sent = cancellable(cancel, async {
            match request.await {
                Ok(_) => Ok(()),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                    Err(StoreError::AlreadyExists { key: key.into() })
                }
                Err(e) => Err(s3_error("PutObject", &full_key, e)),
            }
        });
        sent.await?;
        Ok(size)
    }

    /// Locks `key` until `wanted` if the server left it unlocked: some
    /// S3-compatible servers drop the lock headers of CreateMultipartUpload,
    /// and data that must be immutable is never left without its lock.
    async fn confirm_lock(
        &self,
        key: &str,
        wanted: chrono::DateTime<chrono::Utc>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        if cancellable(cancel, self.retain_until(key)).await?.is_none() {
            tracing::debug!(
                key,
                "the server did not lock a multipart upload: locking it now"
            );
            self.extend_lock(key, wanted, cancel).await?;
        }
        Ok(())
    }

    async fn put_multipart(
        &self,
        full_key: &str,
        path: &Path,
        size: u64,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let (lock_mode, retain_until) = self.lock_for_write().unzip();
        let request = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(full_key)
            // S3 requires an integrity checksum on every part under a lock.
            .set_checksum_algorithm(self.lock.map(|_| ChecksumAlgorithm::Crc32C))
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(retain_until)
            .send();
        // Not cancellable: an upload the server created but whose id we
        // never read could not be aborted, and would hold its parts until a
        // lifecycle rule removed them. Cancellation is honoured right after.
        let created = match tokio::time::timeout(CREATE_UPLOAD_TIMEOUT, request).await {
            Ok(created) => created.map_err(|e| s3_error("CreateMultipartUpload", full_key, e))?,
            Err(_) => {
                return Err(StoreError::S3 {
                    operation: "CreateMultipartUpload",
                    key: full_key.to_owned(),
                    message: "the S3 endpoint did not answer in time".into(),
                })
            }
        };
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(StoreError::S3 {
                operation: "CreateMultipartUpload",
                key: full_key.to_owned(),
                message: "the response carries no upload id".into(),
            });
        };
        let result = if cancel.is_cancelled() {
            Err(StoreError::Cancelled)
        } else {
            self.upload_parts_and_complete(full_key, &upload_id, path, size, cancel)
                .await
        };
        if result.is_err() {
            // Not tied to `cancel`: the abort must run precisely when we were cancelled.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.location.bucket)
                .key(full_key)
                .upload_id(&upload_id)
                .send();
            match tokio::time::timeout(Duration::from_secs(30), abort).await {
                Err(e) => {
                    tracing::warn!(key = full_key, error = %e, "aborting multipart upload timed out");
                }
                Ok(Err(e)) => {
                    tracing::warn!(key = full_key, error = %DisplayErrorContext(e), "aborting multipart upload failed");
                }
                Ok(Ok(_)) => tracing::debug!(key = full_key, "aborted multipart upload"),
            }
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        full_key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let part_count = size.div_ceil(PART_SIZE);
        let mut tasks = JoinSet::new();
        let mut completed = Vec::with_capacity(usize::try_from(part_count).unwrap_or(0));
        let mut next_part = 0u64;
        while next_part < part_count || !tasks.is_empty() {
            while next_part < part_count && tasks.len() < PART_PARALLELISM {
                let offset = next_part * PART_SIZE;
                let part = PartUpload {
                    client: self.client.clone(),
                    bucket: self.location.bucket.clone(),
                    key: full_key.to_owned(),
                    upload_id: upload_id.to_owned(),
                    path: path.to_path_buf(),
                    // Part numbers start at 1.
                    number: i32::try_from(next_part + 1).map_err(|_| StoreError::S3 {
                        operation: "UploadPart",
                        key: full_key.to_owned(),
                        message: "too many parts".into(),
                    })?,
                    offset,
                    length: PART_SIZE.min(size - offset),
                    checksum: self.lock.map(|_| ChecksumAlgorithm::Crc32C),
                };
                tasks.spawn(part.send());
                next_part += 1;
            }
            let joined = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Parts still in flight are stopped and waited for, so
                    // that none lands after the upload is aborted.
                    tasks.shutdown().await;
                    return Err(StoreError::Cancelled);
                }
                joined = tasks.join_next() => joined,
            };
            let Some(joined) = joined else { break };
            let part = joined.map_err(|e| StoreError::S3 {
                operation: "UploadPart",
                key: full_key.to_owned(),
                message: format!("upload task failed: {e}"),
            })??;
            completed.push(part);
        }
        completed.sort_by_key(|p| p.part_number());
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.location.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send();
        send(cancel, "CompleteMultipartUpload", full_key, request).await?;
        Ok(())
    }

    pub(super) async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        storage_class: Option<StorageClass>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let full_key = self.full_key(key);
        let (lock_mode, retain_until) = self.lock_for_write().unzip();
        let request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&full_key)
            .set_storage_class(storage_class)
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(retain_until)
            .body(ByteStream::from(bytes))
            // Packs and index files are most of what a backup uploads. SigV4
            // would SHA-256 every body here and again on the server; instead
            // the payload is sent unsigned with a CRC32C the server checks, so
            // a body damaged in transit is still refused. Tampering is not
            // what the payload hash guards against over TLS, and over plain
            // HTTP nothing else is protected either; integrity at rest rests
            // on our own hashes: a pack is named by its BLAKE3 and readers
            // verify its trailer checksum and every chunk's keyed id.
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .customize()
            .disable_payload_signing()
            .send();
        send(cancel, "PutObject", &full_key, request).await?;
        Ok(())
    }

    /// GetObject of `key`, whole or `length` bytes from `offset` (a `range`),
    /// read into memory. Reads, existence checks and deletions give way to
    /// cancellation in `Store`, which wraps each of them whole.
    pub(super) async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>, StoreError> {
        let header = range.map(|(offset, length)| {
            let last = offset + length.max(1) - 1;
            format!("bytes={offset}-{last}")
        });
        let full_key = self.full_key(key);
        let request = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(&full_key)
            .set_range(header)
            .send();
        let output = match request.await {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StoreError::NotFound { key: key.into() })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_object_state()) =>
            {
                let class = e
                    .as_service_error()
                    .and_then(|s| match s {
                        GetObjectError::InvalidObjectState(state) => state.storage_class(),
                        _ => None,
                    })
                    .map_or_else(|| "an archive class".to_owned(), |c| c.as_str().to_owned());
                return Err(StoreError::Archived {
                    key: full_key,
                    class,
                });
            }
            Err(e) => return Err(s3_error("GetObject", &full_key, e)),
        };
        // Read the body straight into one buffer of the announced size:
        // collecting it first and then flattening it would hold a pack two
        // or three times over, and a restore reads several at once.
        let announced = output
            .content_length()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let expected = range.map_or(announced, |(_, length)| {
            announced.min(usize::try_from(length).unwrap_or(usize::MAX))
        });
        let mut data = Vec::with_capacity(expected);
        let mut body = output.body;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| StoreError::S3 {
                operation: "GetObject",
                key: full_key.clone(),
                message: DisplayErrorContext(e).to_string(),
            })?;
            if range.is_some_and(|(_, length)| (data.len() + piece.len()) as u64 > length.max(1)) {
                return Err(StoreError::S3 {
                    operation: "GetObject",
                    key: full_key,
                    message: "the server sent more bytes than the range asked for".into(),
                });
            }
            data.extend_from_slice(&piece);
        }
        Ok(data)
    }

    /// The storage class object `key` is stored in, as the server names
    /// it; `None` for the default class (S3 leaves the header out for it).
    pub async fn storage_class(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<String>, StoreError> {
        let head = cancellable(cancel, self.head(key))
            .await?
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        Ok(head.storage_class().map(|class| class.as_str().to_owned()))
    }

    pub(super) async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.head(key).await?.is_some())
    }

    /// HeadObject of `key`; `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<HeadObjectOutput>, StoreError> {
        let full_key = self.full_key(key);
        let request = self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(&full_key)
            .send();
        match request.await {
            Ok(head) => Ok(Some(head)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_error("HeadObject", &full_key, e)),
        }
    }

    pub(super) async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let strip = full_prefix.len() - prefix.len();
        let mut keys = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.location.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(continuation.take())
                .send();
            let page = send(cancel, "ListObjectsV2", &full_prefix, request).await?;
            keys.extend(page.contents().iter().filter_map(|object| {
                let key = object.key()?.get(strip..)?;
                let size = object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0);
                Some((key.to_owned(), size))
            }));
            match page.next_continuation_token() {
                Some(token) if page.is_truncated().unwrap_or(false) => {
                    continuation = Some(token.to_owned());
                }
                _ => return Ok(keys),
            }
        }
    }

    /// Deletes `key`: in a bucket with Object Lock every version of it
    /// ([`S3Store::delete_versions`]), elsewhere the object.
    pub(super) async fn delete(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        if self.lock.is_some() {
            return self.delete_versions(key, cancel).await;
        }
        let full_key = self.full_key(key);
        let request = self
            .client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(&full_key)
            .send();
        request
            .await
            .map_err(|e| s3_error("DeleteObject", &full_key, e))?;
        Ok(())
    }
}

/// One part of a multipart upload, owned so that it can run on its own task.
struct PartUpload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: std::path::PathBuf,
    number: i32,
    offset: u64,
    length: u64,
    /// The checksum the part carries: S3 requires one on every part of an
    /// upload under Object Lock.
    checksum: Option<ChecksumAlgorithm>,
}

impl PartUpload {
    async fn send(self) -> Result<CompletedPart, StoreError> {
        let body = ByteStream::read_from()
            .path(&self.path)
            .offset(self.offset)
            .length(Length::Exact(self.length))
            .build()
            .await
            .map_err(|e| StoreError::io(format!("reading {}", self.path.display()), e.into()))?;
        let output = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(self.number)
            .content_length(to_i64(self.length))
            .set_checksum_algorithm(self.checksum)
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error("UploadPart", &self.key, e))?;
        Ok(CompletedPart::builder()
            .part_number(self.number)
            .set_e_tag(output.e_tag().map(str::to_owned))
            .set_checksum_crc32_c(output.checksum_crc32_c().map(str::to_owned))
            .build())
    }
}

/// The TLS settings for https endpoints: system roots plus `AWS_CA_BUNDLE`.
async fn tls_context() -> Result<TlsContext, StoreError> {
    let mut trust_store = TrustStore::default();
    if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()) {
        match tokio::fs::read(&bundle).await {
            Ok(pem) => trust_store.add_pem_certificate(pem),
            Err(e) => {
                tracing::warn!(path = ?bundle, error = %e, "ignoring unreadable AWS_CA_BUNDLE");
                &mut trust_store
            }
        };
    }
    TlsContext::builder()
        .with_trust_store(trust_store)
        .build()
        .map_err(|e| StoreError::Config(format!("TLS configuration: {e}")))
}

/// Awaits one S3 request unless `cancel` fires first; its error names
/// `operation` and `key`. Its duration (retries included) and its failure
/// are counted by `operation`.
pub(super) async fn send<T, E, R>(
    cancel: &CancellationToken,
    operation: &'static str,
    key: &str,
    request: impl std::future::Future<Output = Result<T, SdkError<E, R>>>,
) -> Result<T, StoreError>
where
    E: std::error::Error + 'static,
    R: fmt::Debug + 'static,
{
    let started = std::time::Instant::now();
    let result = cancellable(cancel, async {
        request.await.map_err(|e| s3_error(operation, key, e))
    })
    .await;
    let failed = matches!(result, Err(StoreError::S3 { .. }));
    super::s3_metrics::request_done(operation, started, failed);
    result
}

pub(super) fn s3_error<E, R>(
    operation: &'static str,
    key: &str,
    error: SdkError<E, R>,
) -> StoreError
where
    E: std::error::Error + 'static,
    R: fmt::Debug + 'static,
{
    let message = match &error {
        // The SDK's own rendering of these is a nest of debug output; what an
        // operator needs is "could not reach it" and the innermost cause.
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            format!("cannot reach the S3 endpoint: {}", innermost_cause(&error))
        }
        SdkError::TimeoutError(_) => "the S3 endpoint did not answer in time".to_owned(),
        _ => DisplayErrorContext(error).to_string(),
    };
    StoreError::S3 {
        operation,
        key: key.to_owned(),
        message,
    }
}

fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret() {
        let credentials = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("very-secret"));
        assert!(!shown.contains("token-secret"));
    }

    #[tokio::test]
    async fn credentials_come_from_a_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("access_key_id"), "AKID\n").expect("write");
        std::fs::write(dir.path().join("secret_access_key"), "SECRET\n").expect("write");
        let reference = format!("file:{}", dir.path().display());
        let credentials = resolve_credentials(&reference).await.expect("credentials");
        assert_eq!(credentials.access_key_id, "AKID");
        assert_eq!(credentials.secret_access_key, "SECRET");
        assert_eq!(credentials.session_token, None);
    }

    #[tokio::test]
    async fn unknown_credential_references_are_rejected() {
        assert!(matches!(
            resolve_credentials("vault:x").await,
            Err(StoreError::Config(_))
        ));
        assert!(matches!(
            resolve_credentials("env:COFFER_SURELY_UNSET_VARIABLE").await,
            Err(StoreError::Config(_))
        ));
    }
}
