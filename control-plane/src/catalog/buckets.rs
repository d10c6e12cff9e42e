//! Catalog queries for buckets. Every lookup takes an owner scope (`None`
//! for admins): a bucket outside the scope is reported as not found.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    count_references_in_tx, fetch_scoped, in_transaction, new_id, now_micros, on_pool,
    on_read_pool, Catalog, Page,
};
use crate::catalog::error::from_sqlx;
use crate::error::{DomainError, DomainResult};
use crate::model::bucket::{
    Bucket, BucketSpec, Location, LockMode, ObjectLockSettings, RepositoryEncryption, S3Location,
};

const COLUMNS: &str = "id, owner_id, name, description, kind, s3_endpoint, s3_bucket, s3_region, \
     s3_force_path_style, s3_credentials_ref, filesystem_path, prefix, retention_policy_id, \
     create_time, update_time, s3_secret_id, object_lock_mode, object_lock_min_retention_seconds, \
     s3_maintenance_secret_id, encryption, passphrase_secret_id, s3_pack_storage_class";

#[derive(sqlx::FromRow)]
struct BucketRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    description: String,
    kind: String,
    s3_endpoint: String,
    s3_bucket: String,
    s3_region: String,
    s3_force_path_style: bool,
    s3_credentials_ref: String,
    filesystem_path: String,
    prefix: String,
    retention_policy_id: Option<Uuid>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    s3_secret_id: Option<Uuid>,
    object_lock_mode: String,
    object_lock_min_retention_seconds: i64,
    s3_maintenance_secret_id: Option<Uuid>,
    encryption: String,
    passphrase_secret_id: Option<Uuid>,
    s3_pack_storage_class: String,
}

impl TryFrom<BucketRow> for Bucket {
    type Error = DomainError;

    fn try_from(row: BucketRow) -> DomainResult<Self> {
        let location = match row.kind.as_str() {
            "s3" => Location::S3(S3Location {
                endpoint: row.s3_endpoint,
                bucket: row.s3_bucket,
                region: row.s3_region,
                force_path_style: row.s3_force_path_style,
                credentials_ref: row.s3_credentials_ref,
                secret_id: row.s3_secret_id,
                pack_storage_class: row.s3_pack_storage_class,
            }),
            "filesystem" => Location::Filesystem {
                path: row.filesystem_path,
            },
            other => {
                return Err(DomainError::Internal(format!(
                    "unknown bucket kind {other:?} in catalog"
                )))
            }
        };
        Ok(Bucket {
            id: row.id,
            spec: BucketSpec {
                owner_id: row.owner_id,
                name: row.name,
                description: row.description,
                location,
                prefix: row.prefix,
                retention_policy_id: row.retention_policy_id,
                object_lock: LockMode::parse(&row.object_lock_mode).map(|mode| {
                    ObjectLockSettings {
                        mode,
                        min_retention: Duration::from_secs(
                            u64::try_from(row.object_lock_min_retention_seconds).unwrap_or(0),
                        ),
                    }
                }),
                maintenance_secret_id: row.s3_maintenance_secret_id,
                encryption: RepositoryEncryption::parse(&row.encryption)?,
                passphrase_secret_id: row.passphrase_secret_id,
            },
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

/// The location columns of a spec, in the order `kind, s3_endpoint, s3_bucket,
/// s3_region, s3_force_path_style, s3_credentials_ref, filesystem_path`.
struct LocationColumns<'a> {
    kind: &'static str,
    s3: Option<&'a S3Location>,
    path: &'a str,
}

impl<'a> LocationColumns<'a> {
    fn of(location: &'a Location) -> Self {
        match location {
            Location::S3(s3) => LocationColumns {
                kind: location.kind(),
                s3: Some(s3),
                path: "",
            },
            Location::Filesystem { path } => LocationColumns {
                kind: location.kind(),
                s3: None,
                path,
            },
        }
    }

    fn s3_text(&self, field: fn(&S3Location) -> &str) -> &'a str {
        self.s3.map(field).unwrap_or("")
    }
}

fn bucket_name_taken(spec: &BucketSpec) -> String {
    format!("bucket named {:?} for this owner", spec.name)
}

/// Binds the columns that creating and updating a bucket write alike
/// (owner to retention policy, then the S3 secret, then the Object Lock
/// mode and retention, the maintenance secret, the passphrase secret and
/// the packs' storage class: eighteen in all) to `$query`, in that order.
macro_rules! bind_spec {
    ($query:expr, $spec:expr) => {{
        let loc = LocationColumns::of(&$spec.location);
        $query
            .bind($spec.owner_id)
            .bind(&$spec.name)
            .bind(&$spec.description)
            .bind(loc.kind)
            .bind(loc.s3_text(|s| s.endpoint.as_str()))
            .bind(loc.s3_text(|s| s.bucket.as_str()))
            .bind(loc.s3_text(|s| s.region.as_str()))
            .bind(loc.s3.is_some_and(|s| s.force_path_style))
            .bind(loc.s3_text(|s| s.credentials_ref.as_str()))
            .bind(loc.path)
            .bind(&$spec.prefix)
            .bind($spec.retention_policy_id)
            .bind(loc.s3.and_then(|s| s.secret_id))
            .bind($spec.object_lock.map_or("", |l| l.mode.as_str()))
            .bind($spec.object_lock.map_or(0, |l| {
                i64::try_from(l.min_retention.as_secs()).unwrap_or(i64::MAX)
            }))
            .bind($spec.maintenance_secret_id)
            .bind($spec.passphrase_secret_id)
            .bind(loc.s3_text(|s| s.pack_storage_class.as_str()))
    }};
}

impl Catalog {
    /// Registers a bucket; `AlreadyExists` if the owner has one of that name.
    pub async fn create_bucket(&self, spec: &BucketSpec) -> DomainResult<Bucket> {
        let sql = format!(
            "INSERT INTO buckets (id, owner_id, name, description, kind, s3_endpoint, s3_bucket, \
             s3_region, s3_force_path_style, s3_credentials_ref, filesystem_path, prefix, \
             retention_policy_id, s3_secret_id, object_lock_mode, \
             object_lock_min_retention_seconds, s3_maintenance_secret_id, \
             passphrase_secret_id, s3_pack_storage_class, create_time, update_time, encryption) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $20, $21) \
             RETURNING {COLUMNS}"
        );
        let row = on_pool!(self, |pool| bind_spec!(
            sqlx::query_as::<_, BucketRow>(&sql).bind(new_id()),
            spec
        )
        .bind(now_micros())
        .bind(spec.encryption.as_str())
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, &bucket_name_taken(spec)))?;
        Bucket::try_from(row)
    }

    /// Returns a bucket by id if it is within `owner_scope`.
    pub async fn get_bucket(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<Bucket> {
        let sql = format!(
            "SELECT {COLUMNS} FROM buckets WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        );
        let row: BucketRow = fetch_scoped(&self.read_pool, &sql, id, owner_scope, "bucket").await?;
        Bucket::try_from(row)
    }

    /// Lists buckets by id (oldest first), of one owner or (None) of everyone,
    /// optionally by name prefix.
    pub async fn list_buckets(
        &self,
        page: Page,
        owner_id: Option<Uuid>,
        name_prefix: &str,
    ) -> DomainResult<(Vec<Bucket>, String)> {
        let sql = format!(
            "SELECT {COLUMNS} FROM buckets \
             WHERE ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR id > $2) \
             AND substr(name, 1, length($3)) = $3 ORDER BY id LIMIT $4"
        );
        let rows = on_read_pool!(self, |pool| sqlx::query_as::<_, BucketRow>(&sql)
            .bind(owner_id)
            .bind(page.after)
            .bind(name_prefix)
            .bind(page.limit())
            .fetch_all(pool)
            .await)
        .map_err(|e| from_sqlx(e, "buckets"))?;
        page.finish_rows(rows, Bucket::try_from, |b| b.id)
    }

    /// Replaces the writable fields of a bucket, provided it was not changed
    /// since `read_update_time` (else `Aborted`: read again and retry).
    pub async fn update_bucket(
        &self,
        id: Uuid,
        read_update_time: DateTime<Utc>,
        spec: &BucketSpec,
    ) -> DomainResult<Bucket> {
        let sql = format!(
            "UPDATE buckets SET owner_id = $3, name = $4, description = $5, kind = $6, \
             s3_endpoint = $7, s3_bucket = $8, s3_region = $9, s3_force_path_style = $10, \
             s3_credentials_ref = $11, filesystem_path = $12, prefix = $13, \
             retention_policy_id = $14, s3_secret_id = $15, object_lock_mode = $16, \
             object_lock_min_retention_seconds = $17, s3_maintenance_secret_id = $18, \
             passphrase_secret_id = $19, s3_pack_storage_class = $20, update_time = $21 \
             WHERE id = $1 AND update_time = $2 RETURNING {COLUMNS}"
        );
        let row = on_pool!(self, |pool| bind_spec!(
            sqlx::query_as::<_, BucketRow>(&sql)
                .bind(id)
                .bind(read_update_time),
            spec
        )
        .bind(now_micros())
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, &bucket_name_taken(spec)))?
        .ok_or_else(|| DomainError::changed_concurrently("bucket", id))?;
        Bucket::try_from(row)
    }

    /// Deletes a bucket's registration if it is within `owner_scope`. Refused
    /// with `FailedPrecondition` while jobs or runs refer to it.
    pub async fn delete_bucket(&self, id: Uuid, owner_scope: Option<Uuid>) -> DomainResult<()> {
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            let found: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM buckets WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)",
            )
            .bind(id)
            .bind(owner_scope)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "bucket"))?;
            if found.is_none() {
                return Err(DomainError::not_found("bucket", id));
            }
            for table in ["jobs", "runs"] {
                let count = count_references_in_tx!(tx, table, "target_bucket_id", id);
                if count > 0 {
                    return Err(DomainError::FailedPrecondition(format!(
                        "bucket {id} is still the target of {count} {table}; delete or retarget them first"
                    )));
                }
            }
            sqlx::query("DELETE FROM buckets WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "bucket"))?;
            Ok(())
        }))
    }
}
