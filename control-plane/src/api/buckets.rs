//! BucketService: storage targets, owned by users. A non-admin sees and
//! changes only its own buckets; anything else is reported as not found.

use std::time::Duration;

use coffer_proto::v1 as pb;
use coffer_proto::v1::bucket_service_server::BucketService;
use tonic::Request;

use super::convert::{duration, optional_id, required, timestamp, whole_seconds};
use super::{mask_paths, respond, RpcResult};
use crate::auth::Caller;
use crate::catalog::Page;
use crate::error::{DomainError, DomainResult, Violations};
use crate::model::bucket::{
    Bucket, BucketSpec, Location, LockMode, ObjectLockSettings, RepositoryEncryption, MAX_NAME_LEN,
};
use crate::model::grant::{match_grants, GrantUse, PathNeed};
use crate::model::key_slot::{KeySlotKind, KeySlotRecord};
use crate::model::run::Labels;
use crate::model::secret::SecretKind;
use crate::model::{check_name, parse_id, parse_optional_id};
use crate::secrets::access::check_s3_access;
use crate::state::AppState;

/// Fields UpdateBucket accepts in its mask.
const UPDATABLE: &[&str] = &[
    "name",
    "description",
    "s3",
    "filesystem",
    "prefix",
    "retention_policy_id",
    "owner_id",
    "object_lock",
    "maintenance_secret_id",
    "passphrase_secret_id",
];

/// Handler of `coffer.v1.BucketService`.
#[derive(Clone, Debug)]
pub struct BucketApi {
    state: AppState,
}

impl BucketApi {
    /// A handler over shared state.
    pub fn new(state: AppState) -> Self {
        BucketApi { state }
    }
}

impl From<Location> for pb::bucket::Location {
    fn from(location: Location) -> Self {
        match location {
            Location::S3(s3) => pb::bucket::Location::S3(pb::S3Location {
                endpoint: s3.endpoint,
                bucket: s3.bucket,
                region: s3.region,
                force_path_style: s3.force_path_style,
                credentials_ref: s3.credentials_ref,
                secret_id: s3.secret_id.map(|id| id.to_string()).unwrap_or_default(),
                pack_storage_class: s3.pack_storage_class,
            }),
            Location::Filesystem { path } => {
                pb::bucket::Location::Filesystem(pb::FilesystemLocation { path })
            }
        }
    }
}

impl TryFrom<pb::bucket::Location> for Location {
    type Error = DomainError;

    fn try_from(location: pb::bucket::Location) -> DomainResult<Self> {
        Ok(match location {
            pb::bucket::Location::S3(s3) => Location::S3(crate::model::bucket::S3Location {
                secret_id: parse_optional_id("bucket.s3.secret_id", &s3.secret_id)?,
                endpoint: s3.endpoint,
                bucket: s3.bucket,
                region: s3.region,
                force_path_style: s3.force_path_style,
                credentials_ref: s3.credentials_ref,
                pack_storage_class: s3.pack_storage_class,
            }),
            pb::bucket::Location::Filesystem(fs) => Location::Filesystem { path: fs.path },
        })
    }
}

impl From<Bucket> for pb::Bucket {
    fn from(bucket: Bucket) -> Self {
        let spec = bucket.spec;
        pb::Bucket {
            id: bucket.id.to_string(),
            owner_id: spec.owner_id.to_string(),
            name: spec.name,
            description: spec.description,
            location: Some(spec.location.into()),
            prefix: spec.prefix,
            retention_policy_id: spec
                .retention_policy_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            create_time: Some(timestamp(bucket.create_time)),
            update_time: Some(timestamp(bucket.update_time)),
            object_lock: spec.object_lock.map(object_lock_to_proto),
            maintenance_secret_id: optional_id(spec.maintenance_secret_id),
            encryption: encryption_to_proto(spec.encryption).into(),
            passphrase_secret_id: optional_id(spec.passphrase_secret_id),
            key_slots: Vec::new(),
        }
    }
}

/// The proto of a recorded key slot.
fn key_slot_to_proto(record: KeySlotRecord) -> pb::RepositoryKeySlot {
    pb::RepositoryKeySlot {
        repository_id: record.repository_id.to_string(),
        kind: match record.slot.kind {
            KeySlotKind::Passphrase => pb::KeySlotKind::Passphrase,
            KeySlotKind::Catalog => pb::KeySlotKind::Catalog,
        }
        .into(),
        slot_id: record.slot.slot_id,
        generations: record.slot.generations,
        create_time: Some(timestamp(record.slot.create_time)),
        report_time: Some(timestamp(record.report_time)),
    }
}

/// The proto of a bucket's Object Lock settings.
pub fn object_lock_to_proto(lock: ObjectLockSettings) -> pb::ObjectLockSettings {
    let mode = match lock.mode {
        LockMode::Governance => pb::ObjectLockMode::Governance,
        LockMode::Compliance => pb::ObjectLockMode::Compliance,
    };
    pb::ObjectLockSettings {
        mode: mode.into(),
        min_retention: Some(duration(lock.min_retention)),
    }
}

/// Object Lock settings from the API: `None` when unset; a mode and a
/// whole number of seconds are required once it is set.
fn object_lock_from_proto(
    lock: Option<&pb::ObjectLockSettings>,
) -> DomainResult<Option<ObjectLockSettings>> {
    let Some(lock) = lock else {
        return Ok(None);
    };
    let mode = match pb::ObjectLockMode::try_from(lock.mode) {
        Ok(pb::ObjectLockMode::Governance) => LockMode::Governance,
        Ok(pb::ObjectLockMode::Compliance) => LockMode::Compliance,
        _ => {
            return Err(DomainError::invalid(
                "bucket.object_lock.mode",
                "is required: OBJECT_LOCK_MODE_GOVERNANCE or OBJECT_LOCK_MODE_COMPLIANCE",
            ))
        }
    };
    let seconds = whole_seconds(
        "bucket.object_lock.min_retention",
        lock.min_retention.as_ref(),
    )?
    .ok_or_else(|| DomainError::invalid("bucket.object_lock.min_retention", "is required"))?;
    Ok(Some(ObjectLockSettings {
        mode,
        min_retention: Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
    }))
}

/// A repository encryption as the API spells it.
pub(crate) fn encryption_to_proto(encryption: RepositoryEncryption) -> pb::RepositoryEncryption {
    match encryption {
        RepositoryEncryption::Aes256Gcm => pb::RepositoryEncryption::Aes256Gcm,
        RepositoryEncryption::None => pb::RepositoryEncryption::None,
    }
}

/// A new bucket's encryption: unspecified means encrypted; `NONE` only
/// when asked for by name.
fn encryption_from_proto(value: i32) -> DomainResult<RepositoryEncryption> {
    match pb::RepositoryEncryption::try_from(value) {
        Ok(pb::RepositoryEncryption::Unspecified | pb::RepositoryEncryption::Aes256Gcm) => {
            Ok(RepositoryEncryption::Aes256Gcm)
        }
        Ok(pb::RepositoryEncryption::None) => Ok(RepositoryEncryption::None),
        Err(_) => Err(DomainError::invalid(
            "bucket.encryption",
            "is not a known RepositoryEncryption",
        )),
    }
}

/// Builds the spec of a new bucket, reporting every malformed field at once.
fn new_spec(caller: &Caller, bucket: pb::Bucket) -> DomainResult<BucketSpec> {
    let mut violations = Violations::new();
    let owner = violations
        .absorb(parse_optional_id("bucket.owner_id", &bucket.owner_id))
        .flatten();
    let policy = violations
        .absorb(parse_optional_id(
            "bucket.retention_policy_id",
            &bucket.retention_policy_id,
        ))
        .flatten();
    let object_lock = violations
        .absorb(object_lock_from_proto(bucket.object_lock.as_ref()))
        .flatten();
    let maintenance_secret_id = violations
        .absorb(parse_optional_id(
            "bucket.maintenance_secret_id",
            &bucket.maintenance_secret_id,
        ))
        .flatten();
    let encryption = violations
        .absorb(encryption_from_proto(bucket.encryption))
        .unwrap_or_default();
    let passphrase_secret_id = violations
        .absorb(parse_optional_id(
            "bucket.passphrase_secret_id",
            &bucket.passphrase_secret_id,
        ))
        .flatten();
    let location = match bucket.location.map(Location::try_from).transpose() {
        Ok(location) => location,
        Err(error) => {
            violations.absorb::<()>(Err(error));
            None
        }
    };
    let Some(location) = location else {
        violations.add(
            "bucket.location",
            "exactly one of s3 or filesystem is required",
        );
        violations.absorb(check_name("bucket.name", &bucket.name, MAX_NAME_LEN));
        // Always an error: the missing location was just recorded.
        return violations
            .finish()
            .and(Err(DomainError::invalid("bucket.location", "is required")));
    };
    let spec = BucketSpec {
        owner_id: caller.user.id,
        name: bucket.name,
        description: bucket.description,
        location,
        prefix: bucket.prefix,
        retention_policy_id: policy,
        object_lock,
        maintenance_secret_id,
        encryption,
        passphrase_secret_id,
    };
    violations.absorb(spec.validate("bucket."));
    violations.finish()?;
    Ok(BucketSpec {
        owner_id: caller.resolve_owner("bucket.owner_id", owner)?,
        ..spec
    })
}

/// Applies the masked fields of `bucket` to `spec`.
fn apply_mask(
    caller: &Caller,
    spec: &mut BucketSpec,
    bucket: &pb::Bucket,
    paths: &[String],
) -> DomainResult<()> {
    if paths.iter().any(|p| p == "s3") && paths.iter().any(|p| p == "filesystem") {
        return Err(DomainError::invalid(
            "update_mask",
            "s3 and filesystem are alternatives; name at most one",
        ));
    }
    for path in paths {
        match path.as_str() {
            "name" => spec.name.clone_from(&bucket.name),
            "description" => spec.description.clone_from(&bucket.description),
            "prefix" => spec.prefix.clone_from(&bucket.prefix),
            "s3" => match &bucket.location {
                Some(location @ pb::bucket::Location::S3(_)) => {
                    spec.location = location.clone().try_into()?;
                }
                _ => return Err(DomainError::invalid("bucket.s3", "is required")),
            },
            "filesystem" => match &bucket.location {
                Some(location @ pb::bucket::Location::Filesystem(_)) => {
                    spec.location = location.clone().try_into()?;
                }
                _ => return Err(DomainError::invalid("bucket.filesystem", "is required")),
            },
            "retention_policy_id" => {
                spec.retention_policy_id =
                    parse_optional_id("bucket.retention_policy_id", &bucket.retention_policy_id)?;
            }
            "owner_id" => {
                let requested = parse_optional_id("bucket.owner_id", &bucket.owner_id)?;
                spec.owner_id = caller.resolve_owner("bucket.owner_id", requested)?;
            }
            "object_lock" => {
                spec.object_lock = object_lock_from_proto(bucket.object_lock.as_ref())?;
            }
            "maintenance_secret_id" => {
                spec.maintenance_secret_id = parse_optional_id(
                    "bucket.maintenance_secret_id",
                    &bucket.maintenance_secret_id,
                )?;
            }
            "passphrase_secret_id" => {
                spec.passphrase_secret_id =
                    parse_optional_id("bucket.passphrase_secret_id", &bucket.passphrase_secret_id)?;
            }
            _ => unreachable!("mask_paths admits only the paths above"),
        }
    }
    Ok(())
}

impl BucketApi {
    async fn caller<T>(&self, request: &Request<T>) -> DomainResult<Caller> {
        self.state.auth.caller(request.metadata()).await
    }

    /// The proto of `bucket` with the key slots its repositories' runs
    /// recorded.
    async fn shown(&self, bucket: Bucket) -> DomainResult<pb::Bucket> {
        let slots = self.state.catalog.bucket_key_slots(bucket.id).await?;
        let mut shown = pb::Bucket::from(bucket);
        shown.key_slots = slots.into_iter().map(key_slot_to_proto).collect();
        Ok(shown)
    }

    /// Validates a complete spec, including the references it makes: the
    /// owner must exist and the retention policy must belong to the owner;
    /// an S3 location must pass the credentials and endpoint rules.
    async fn check_spec(&self, caller: &Caller, spec: &BucketSpec) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(spec.validate("bucket."));
        let mut owner_is_admin = caller.is_admin();
        if spec.owner_id != caller.user.id {
            match self.state.catalog.get_user(spec.owner_id).await {
                Ok(owner) => owner_is_admin = owner.admin,
                Err(DomainError::NotFound(_)) => {
                    violations.add("bucket.owner_id", "no such user");
                }
                Err(other) => return Err(other),
            }
        }
        if let Some(policy) = spec.retention_policy_id {
            if !self
                .state
                .catalog
                .retention_policy_owned_by(policy, spec.owner_id)
                .await?
            {
                violations.add(
                    "bucket.retention_policy_id",
                    format!("no retention policy {policy} belongs to the bucket's owner"),
                );
            }
        }
        let named_secrets = [
            (
                "bucket.maintenance_secret_id",
                spec.maintenance_secret_id,
                SecretKind::S3,
                "S3 credentials",
            ),
            (
                "bucket.passphrase_secret_id",
                spec.passphrase_secret_id,
                SecretKind::Passphrase,
                "passphrase",
            ),
        ];
        for (field, secret, kind, what) in named_secrets {
            let Some(secret) = secret else { continue };
            if !self
                .state
                .catalog
                .secret_owned_by(secret, spec.owner_id, kind)
                .await?
            {
                violations.add(
                    field,
                    format!("the bucket's owner has no {what} secret {secret}"),
                );
            }
        }
        violations.finish()?;
        if let Location::S3(s3) = &spec.location {
            check_s3_access(
                &self.state.catalog,
                "bucket.s3.",
                spec.owner_id,
                owner_is_admin,
                s3,
            )
            .await?;
        }
        self.check_grant(spec).await
    }

    /// A filesystem bucket's path must be beneath a grant of the bucket's
    /// owner allowing repositories (admins included).
    async fn check_grant(&self, spec: &BucketSpec) -> DomainResult<()> {
        let Location::Filesystem { path } = &spec.location else {
            return Ok(());
        };
        let need = PathNeed {
            field: "bucket.filesystem.path".to_string(),
            path: path.clone(),
            uses: vec![GrantUse::Repository],
        };
        let grants = self.state.catalog.grants_of(spec.owner_id).await?;
        match_grants(&grants, &[need], &Labels::new())?;
        Ok(())
    }

    async fn create(&self, caller: &Caller, bucket: pb::Bucket) -> DomainResult<Bucket> {
        let spec = new_spec(caller, bucket)?;
        self.check_spec(caller, &spec).await?;
        self.state.catalog.create_bucket(&spec).await
    }

    async fn update(
        &self,
        caller: &Caller,
        request: pb::UpdateBucketRequest,
    ) -> DomainResult<Bucket> {
        let bucket = required("bucket", request.bucket)?;
        let id = parse_id("bucket.id", &bucket.id)?;
        let names_encryption = request
            .update_mask
            .as_ref()
            .is_some_and(|mask| mask.paths.iter().any(|path| path == "encryption"));
        if names_encryption {
            return Err(DomainError::invalid(
                "bucket.encryption",
                "is fixed when the bucket is created (its repositories' keys depend on it)",
            ));
        }
        let paths = mask_paths(request.update_mask, UPDATABLE)?;
        let current = self
            .state
            .catalog
            .get_bucket(id, caller.owner_scope())
            .await?;
        let mut spec = current.spec.clone();
        apply_mask(caller, &mut spec, &bucket, &paths)?;
        self.check_spec(caller, &spec).await?;
        self.state
            .catalog
            .update_bucket(id, current.update_time, &spec)
            .await
    }

    async fn list(
        &self,
        caller: &Caller,
        request: pb::ListBucketsRequest,
    ) -> DomainResult<pb::ListBucketsResponse> {
        let requested = parse_optional_id("owner_id", &request.owner_id)?;
        let owner = caller.list_owner_filter(requested);
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (buckets, next_page_token) = self
            .state
            .catalog
            .list_buckets(page, owner, &request.name_prefix)
            .await?;
        let mut shown = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            shown.push(self.shown(bucket).await?);
        }
        Ok(pb::ListBucketsResponse {
            buckets: shown,
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl BucketService for BucketApi {
    async fn create_bucket(
        &self,
        request: Request<pb::CreateBucketRequest>,
    ) -> RpcResult<pb::CreateBucketResponse> {
        let caller = self.caller(&request).await?;
        let bucket = required("bucket", request.into_inner().bucket)?;
        let created = self.create(&caller, bucket).await?;
        respond(Ok(pb::CreateBucketResponse {
            bucket: Some(created.into()),
        }))
    }

    async fn get_bucket(
        &self,
        request: Request<pb::GetBucketRequest>,
    ) -> RpcResult<pb::GetBucketResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let bucket = self
            .state
            .catalog
            .get_bucket(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::GetBucketResponse {
            bucket: Some(self.shown(bucket).await?),
        }))
    }

    async fn list_buckets(
        &self,
        request: Request<pb::ListBucketsRequest>,
    ) -> RpcResult<pb::ListBucketsResponse> {
        let caller = self.caller(&request).await?;
        respond(self.list(&caller, request.into_inner()).await)
    }

    async fn update_bucket(
        &self,
        request: Request<pb::UpdateBucketRequest>,
    ) -> RpcResult<pb::UpdateBucketResponse> {
        let caller = self.caller(&request).await?;
        let updated = self.update(&caller, request.into_inner()).await?;
        respond(Ok(pb::UpdateBucketResponse {
            bucket: Some(self.shown(updated).await?),
        }))
    }

    async fn delete_bucket(
        &self,
        request: Request<pb::DeleteBucketRequest>,
    ) -> RpcResult<pb::DeleteBucketResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state
            .catalog
            .delete_bucket(id, caller.owner_scope())
            .await?;
        respond(Ok(pb::DeleteBucketResponse {}))
    }

    async fn get_bucket_immutability(
        &self,
        request: Request<pb::GetBucketImmutabilityRequest>,
    ) -> RpcResult<pb::GetBucketImmutabilityResponse> {
        let caller = self.caller(&request).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        let bucket = self
            .state
            .catalog
            .get_bucket(id, caller.owner_scope())
            .await?;
        let locks = self.state.catalog.snapshot_locks(id).await?;
        respond(Ok(pb::GetBucketImmutabilityResponse {
            immutability: Some(pb::BucketImmutability {
                bucket_id: id.to_string(),
                immutable: bucket.spec.object_lock.is_some(),
                object_lock: bucket.spec.object_lock.map(object_lock_to_proto),
                snapshot_count: locks.count,
                newest_snapshot_locked_until: locks.newest_locked_until.map(timestamp),
                oldest_snapshot_locked_until: locks.oldest_locked_until.map(timestamp),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bucket::check_s3_bucket_name;
    use uuid::Uuid;

    #[test]
    fn s3_bucket_names_follow_the_s3_rules() {
        for good in ["abc", "my-bucket.2024", "a1b"] {
            assert!(check_s3_bucket_name("f", good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "ABC",
            "a_b_c",
            "a..b",
            &"a".repeat(64),
        ] {
            assert!(check_s3_bucket_name("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_of_a_new_bucket_defaults_to_the_caller() {
        let caller = Caller {
            user: crate::model::user::User {
                id: Uuid::now_v7(),
                username: "u".into(),
                email: "u@example.com".into(),
                admin: false,
                create_time: chrono::Utc::now(),
                update_time: chrono::Utc::now(),
            },
        };
        let spec = new_spec(
            &caller,
            pb::Bucket {
                name: "b".into(),
                location: Some(pb::bucket::Location::Filesystem(pb::FilesystemLocation {
                    path: "/srv/backup".into(),
                })),
                ..Default::default()
            },
        )
        .expect("valid bucket");
        assert_eq!(spec.owner_id, caller.user.id);
    }
}
