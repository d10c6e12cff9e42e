//! Loading what a retention plan depends on, and planning.
//!
//! [`Catalog::plan_retention`] reads everything in one read-only transaction
//! (REPEATABLE READ on PostgreSQL, so every query sees the same state) with a
//! fixed number of statements, whatever the number of snapshots: the
//! snapshots with their job and bucket policies, the run tags, the object
//! retentions in scope, and the versions, version tags and policies those
//! need (in chunks of [`BATCH_ROWS`] ids). The decisions are then made by the
//! pure [`crate::model::retention::plan::plan`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PolicyRow, POLICY_COLUMNS};
use crate::catalog::error::from_sqlx;
use crate::catalog::in_transaction;
use crate::catalog::placeholders::{list_placeholders, BATCH_ROWS};
use crate::catalog::{on_pool, Backend, Catalog};
use crate::error::{DomainError, DomainResult};
use crate::model::configuration::DEFAULT_RETENTION_POLICY_ID;
use crate::model::retention::plan::{
    plan, AppliedPolicy, GroupKey, Held, ObjectHold, ObjectPolicy, PlanInput, PolicySource,
    RetainedObject, RetentionPlan, RetentionScope, Snapshot, SnapshotGroup, TagPair, VersionSpan,
};
use crate::model::retention::{KeepRules, RetentionPolicy};
use crate::model::run::{NewRun, RetentionSpec, RunSpec, SnapshotSource, Target};

/// The `$row`s that `$sql_for(n)` (a statement with an IN list of `n` ids
/// from `$1`) selects for every id of `$ids`, [`BATCH_ROWS`] ids per
/// statement, inside the open transaction `$tx` of either backend.
macro_rules! fetch_by_ids_in_tx {
    ($tx:ident, $row:ty, $ids:expr, $sql_for:expr, $what:expr) => {{
        let mut rows: Vec<$row> = Vec::new();
        for chunk in $ids.chunks(BATCH_ROWS) {
            let sql = $sql_for(chunk.len());
            let mut query = sqlx::query_as::<_, $row>(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            rows.extend(
                query
                    .fetch_all(&mut *$tx)
                    .await
                    .map_err(|e| from_sqlx(e, $what))?,
            );
        }
        rows
    }};
}

/// The conditions selecting a scope's runs (`r`) and objects (`o`) by `$1`.
fn scope_conditions(scope: RetentionScope) -> (&'static str, &'static str, Uuid) {
    match scope {
        RetentionScope::Job(id) => ("r.job_id = $1", "o.job_id = $1", id),
        RetentionScope::Bucket(id) => ("r.target_bucket_id = $1", "o.bucket_id = $1", id),
    }
}

/// The owner of the scope's job or bucket (`$1`).
fn scope_owner_sql(scope: RetentionScope) -> &'static str {
    match scope {
        RetentionScope::Job(_) => "SELECT owner_id FROM jobs WHERE id = $1",
        RetentionScope::Bucket(_) => "SELECT owner_id FROM buckets WHERE id = $1",
    }
}

fn scope_not_found(scope: RetentionScope) -> DomainError {
    match scope {
        RetentionScope::Job(id) => DomainError::not_found("job", id),
        RetentionScope::Bucket(id) => DomainError::not_found("bucket", id),
    }
}

/// The snapshots of a scope, with the policies of their job and bucket.
fn snapshots_sql(runs: &str) -> String {
    format!(
        "SELECT r.id, r.job_id, r.target_bucket_id, r.repository_id, r.finish_time, r.create_time, \
         r.locked_until, j.retention_policy_id AS job_policy_id, b.retention_policy_id AS bucket_policy_id \
         FROM runs r LEFT JOIN jobs j ON j.id = r.job_id \
         LEFT JOIN buckets b ON b.id = r.target_bucket_id \
         WHERE r.kind = 'backup' AND r.state = 'succeeded' AND {runs}"
    )
}

/// The tags of a scope's snapshots.
fn run_tags_sql(runs: &str) -> String {
    format!(
        "SELECT t.resource_id, t.key, t.value FROM tags t JOIN runs r ON r.id = t.resource_id \
         WHERE t.resource_kind = 'run' AND r.kind = 'backup' AND r.state = 'succeeded' AND {runs}"
    )
}

/// The object retentions on a scope's objects and their versions.
fn holds_sql(objects: &str) -> String {
    format!(
        "SELECT x.resource_kind, x.resource_id, x.policy_id, x.retain_until_time, x.legal_hold, \
         o.id AS object_id, o.job_id, o.bucket_id, o.repository_id \
         FROM object_retentions x JOIN objects o ON o.id = x.resource_id \
         WHERE x.resource_kind = 'object' AND {objects} \
         UNION ALL \
         SELECT x.resource_kind, x.resource_id, x.policy_id, x.retain_until_time, x.legal_hold, \
         o.id AS object_id, o.job_id, o.bucket_id, o.repository_id \
         FROM object_retentions x JOIN object_versions v ON v.id = x.resource_id \
         JOIN objects o ON o.id = v.object_id \
         WHERE x.resource_kind = 'object_version' AND {objects}"
    )
}

/// Every version of `count` objects (`$1`…).
fn versions_sql(count: usize) -> String {
    format!(
        "SELECT v.id, v.object_id, v.first_run_id, v.last_run_id, v.deleted, v.create_time \
         FROM object_versions v WHERE v.object_id IN ({})",
        list_placeholders(count, 1)
    )
}

/// The tags on every version of `count` objects (`$1`…).
fn version_tags_sql(count: usize) -> String {
    format!(
        "SELECT t.resource_id, t.key, t.value FROM tags t \
         JOIN object_versions v ON v.id = t.resource_id \
         WHERE t.resource_kind = 'object_version' AND v.object_id IN ({})",
        list_placeholders(count, 1)
    )
}

/// `count` policies by id (`$1`…).
fn policies_sql(count: usize) -> String {
    format!(
        "SELECT {POLICY_COLUMNS} FROM retention_policies WHERE id IN ({})",
        list_placeholders(count, 1)
    )
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    id: Uuid,
    job_id: Option<Uuid>,
    target_bucket_id: Option<Uuid>,
    repository_id: Option<Uuid>,
    finish_time: Option<DateTime<Utc>>,
    create_time: DateTime<Utc>,
    locked_until: Option<DateTime<Utc>>,
    job_policy_id: Option<Uuid>,
    bucket_policy_id: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct TagRow {
    resource_id: Uuid,
    key: String,
    value: String,
}

#[derive(sqlx::FromRow)]
struct HoldRow {
    resource_kind: String,
    resource_id: Uuid,
    policy_id: Option<Uuid>,
    retain_until_time: Option<DateTime<Utc>>,
    legal_hold: bool,
    object_id: Uuid,
    job_id: Option<Uuid>,
    bucket_id: Option<Uuid>,
    repository_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    id: Uuid,
    object_id: Uuid,
    first_run_id: Uuid,
    last_run_id: Option<Uuid>,
    deleted: bool,
    create_time: DateTime<Utc>,
}

/// Everything read for one plan.
struct PlanRows {
    snapshots: Vec<SnapshotRow>,
    run_tags: Vec<TagRow>,
    default_policy: Option<Uuid>,
    holds: Vec<HoldRow>,
    versions: Vec<VersionRow>,
    version_tags: Vec<TagRow>,
    policies: HashMap<Uuid, RetentionPolicy>,
}

/// Parses the `default_retention_policy_id` configuration. A value that is
/// not a UUID fails the plan rather than being ignored: planning without the
/// operator's default could remove nothing, or the wrong thing later.
fn parse_default_policy(value: Option<String>) -> DomainResult<Option<Uuid>> {
    let Some(value) = value else {
        return Ok(None);
    };
    Uuid::parse_str(value.trim()).map(Some).map_err(|_| {
        DomainError::FailedPrecondition(format!(
            "configuration {DEFAULT_RETENTION_POLICY_ID} holds {value:?}, which is not a \
             retention policy id; fix it before planning retention"
        ))
    })
}

impl Catalog {
    /// The owner of a plan's job or bucket, or `None` when it does not exist.
    /// Callers check access with it before planning (a job or bucket of
    /// someone else is reported as not found).
    pub async fn retention_scope_owner(&self, scope: RetentionScope) -> DomainResult<Option<Uuid>> {
        let (_, _, id) = scope_conditions(scope);
        on_pool!(self, |pool| sqlx::query_scalar::<_, Uuid>(scope_owner_sql(
            scope
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| from_sqlx(e, "retention scope"))
    }

    /// Decides, at `now`, which snapshots of a job or bucket the retention
    /// rules keep and why (see [`crate::model::retention::plan`] for the
    /// semantics). The one entry point for both PlanRetention and
    /// ApplyRetention: apply removes exactly
    /// [`RetentionPlan::runs_to_remove`] of the plan this returns, so the
    /// dry run and the real run cannot disagree. Reads only; `NotFound` when
    /// the job or bucket does not exist (access is the caller's to check,
    /// see [`Catalog::retention_scope_owner`]); `FailedPrecondition` when a
    /// policy cannot be evaluated (an unknown time zone, a broken
    /// `default_retention_policy_id`).
    pub async fn plan_retention(
        &self,
        scope: RetentionScope,
        now: DateTime<Utc>,
    ) -> DomainResult<RetentionPlan> {
        let rows = self.load_plan_rows(scope).await?;
        plan(&plan_input(rows, now)?)
    }

    /// Reads a plan's inputs in one read-only transaction.
    async fn load_plan_rows(&self, scope: RetentionScope) -> DomainResult<PlanRows> {
        let (runs, objects, id) = scope_conditions(scope);
        let postgres = self.backend() == Backend::Postgres;
        on_pool!(self, |pool| in_transaction!(pool, |tx| {
            if postgres {
                // One snapshot of the database for every statement below.
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "catalog"))?;
            }
            let owner: Option<Uuid> = sqlx::query_scalar(scope_owner_sql(scope))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "retention scope"))?;
            if owner.is_none() {
                return Err(scope_not_found(scope));
            }
            let snapshots: Vec<SnapshotRow> = sqlx::query_as(&snapshots_sql(runs))
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "snapshots"))?;
            let run_tags: Vec<TagRow> = sqlx::query_as(&run_tags_sql(runs))
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "snapshot tags"))?;
            let default_value: Option<String> =
                sqlx::query_scalar("SELECT value FROM configurations WHERE key = $1")
                    .bind(DEFAULT_RETENTION_POLICY_ID)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "configuration"))?;
            let default_policy = parse_default_policy(default_value)?;
            let holds: Vec<HoldRow> = sqlx::query_as(&holds_sql(objects))
                .bind(id)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "object retentions"))?;

            let held_objects = unique_ids(holds.iter().map(|h| h.object_id));
            let versions = fetch_by_ids_in_tx!(
                tx,
                VersionRow,
                held_objects,
                versions_sql,
                "object versions"
            );
            // Version tags matter only to object policies.
            let policy_objects = unique_ids(
                holds
                    .iter()
                    .filter(|h| h.policy_id.is_some())
                    .map(|h| h.object_id),
            );
            let version_tags = fetch_by_ids_in_tx!(
                tx,
                TagRow,
                policy_objects,
                version_tags_sql,
                "object version tags"
            );

            let policy_ids = unique_ids(
                snapshots
                    .iter()
                    .flat_map(|s| [s.job_policy_id, s.bucket_policy_id])
                    .chain(holds.iter().map(|h| h.policy_id))
                    .chain([default_policy])
                    .flatten(),
            );
            let policy_rows = fetch_by_ids_in_tx!(
                tx,
                PolicyRow,
                policy_ids,
                policies_sql,
                "retention policies"
            );
            let mut policies = HashMap::with_capacity(policy_rows.len());
            for row in policy_rows {
                let policy = RetentionPolicy::try_from(row)?;
                policies.insert(policy.id, policy);
            }
            Ok(PlanRows {
                snapshots,
                run_tags,
                default_policy,
                holds,
                versions,
                version_tags,
                policies,
            })
        }))
    }
}

/// Each id once, in order.
fn unique_ids(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    ids.collect::<BTreeSet<_>>().into_iter().collect()
}

/// Groups tag rows by the resource they are on.
fn tags_by_resource(rows: Vec<TagRow>) -> HashMap<Uuid, Vec<TagPair>> {
    let mut tags: HashMap<Uuid, Vec<TagPair>> = HashMap::new();
    for row in rows {
        tags.entry(row.resource_id)
            .or_default()
            .push((row.key, row.value));
    }
    tags
}

/// Looks a referenced policy up; only the default configuration can name a
/// policy that does not exist (the others are foreign keys).
fn policy_rules(policies: &HashMap<Uuid, RetentionPolicy>, id: Uuid) -> DomainResult<KeepRules> {
    policies
        .get(&id)
        .map(|p| p.spec.rules.clone())
        .ok_or_else(|| {
            DomainError::FailedPrecondition(format!(
                "retention policy {id} (configuration {DEFAULT_RETENTION_POLICY_ID}) does not \
                 exist; fix the configuration before planning retention"
            ))
        })
}

/// Turns the rows of a plan into the planner's input.
fn plan_input(rows: PlanRows, now: DateTime<Utc>) -> DomainResult<PlanInput> {
    let groups = snapshot_groups(
        rows.snapshots,
        tags_by_resource(rows.run_tags),
        rows.default_policy,
        &rows.policies,
    )?;
    let objects = retained_objects(
        rows.holds,
        rows.versions,
        tags_by_resource(rows.version_tags),
        &rows.policies,
    )?;
    Ok(PlanInput {
        now,
        groups,
        objects,
    })
}

/// The snapshots grouped by job, bucket and repository, each group with the
/// policy that applies to it (the job's, else the bucket's, else the default).
fn snapshot_groups(
    snapshots: Vec<SnapshotRow>,
    mut run_tags: HashMap<Uuid, Vec<TagPair>>,
    default_policy: Option<Uuid>,
    policies: &HashMap<Uuid, RetentionPolicy>,
) -> DomainResult<Vec<SnapshotGroup>> {
    let mut groups: BTreeMap<GroupKey, SnapshotGroup> = BTreeMap::new();
    for row in snapshots {
        let key = GroupKey {
            job_id: row.job_id,
            bucket_id: row.target_bucket_id,
            repository_id: row.repository_id,
        };
        let group = match groups.entry(key) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let choice = [
                    (row.job_policy_id, PolicySource::Job),
                    (row.bucket_policy_id, PolicySource::Bucket),
                    (default_policy, PolicySource::Default),
                ]
                .into_iter()
                .find_map(|(id, source)| id.map(|id| (id, source)));
                let policy = match choice {
                    Some((id, source)) => Some(AppliedPolicy {
                        id,
                        source,
                        rules: policy_rules(policies, id)?,
                    }),
                    None => None,
                };
                let key = entry.key().clone();
                entry.insert(SnapshotGroup {
                    key,
                    policy,
                    snapshots: Vec::new(),
                })
            }
        };
        group.snapshots.push(Snapshot {
            run_id: row.id,
            time: row.finish_time.unwrap_or(row.create_time),
            tags: run_tags.remove(&row.id).unwrap_or_default(),
            locked_until: row.locked_until,
        });
    }
    Ok(groups.into_values().collect())
}

/// The objects under a retention or legal hold, with their holds and versions.
fn retained_objects(
    holds: Vec<HoldRow>,
    versions: Vec<VersionRow>,
    mut version_tags: HashMap<Uuid, Vec<TagPair>>,
    policies: &HashMap<Uuid, RetentionPolicy>,
) -> DomainResult<Vec<RetainedObject>> {
    let mut objects: BTreeMap<Uuid, RetainedObject> = BTreeMap::new();
    for hold in holds {
        let held = if hold.resource_kind == "object" {
            Held::Object
        } else {
            Held::Version(hold.resource_id)
        };
        let policy = match hold.policy_id {
            Some(id) => Some(ObjectPolicy {
                id,
                rules: policy_rules(policies, id)?,
            }),
            None => None,
        };
        objects
            .entry(hold.object_id)
            .or_insert_with(|| RetainedObject {
                object_id: hold.object_id,
                job_id: hold.job_id,
                bucket_id: hold.bucket_id,
                repository_id: hold.repository_id,
                versions: Vec::new(),
                holds: Vec::new(),
            })
            .holds
            .push(ObjectHold {
                held,
                legal_hold: hold.legal_hold,
                retain_until_time: hold.retain_until_time,
                policy,
            });
    }
    for version in versions {
        if let Some(object) = objects.get_mut(&version.object_id) {
            object.versions.push(VersionSpan {
                id: version.id,
                first_run_id: version.first_run_id,
                last_run_id: version.last_run_id,
                deleted: version.deleted,
                create_time: version.create_time,
                tags: version_tags.remove(&version.id).unwrap_or_default(),
            });
        }
    }
    Ok(objects.into_values().collect())
}

impl Catalog {
    /// A retention run removing exactly what a plan of `scope` made at
    /// `now` does not keep, owned by the scope's owner.
    pub async fn retention_run(
        &self,
        scope: RetentionScope,
        now: DateTime<Utc>,
    ) -> DomainResult<NewRun> {
        let owner_id = self
            .retention_scope_owner(scope)
            .await?
            .ok_or_else(|| match scope {
                RetentionScope::Job(id) => DomainError::not_found("job", id),
                RetentionScope::Bucket(id) => DomainError::not_found("bucket", id),
            })?;
        let plan = self.plan_retention(scope, now).await?;
        let mut removed = Vec::new();
        for run_id in plan.runs_to_remove() {
            let run = self.get_run(run_id).await?;
            let RunSpec::Backup(backup) = &run.spec else {
                return Err(DomainError::Internal(format!(
                    "retention planned to remove run {run_id}, which is not a backup"
                )));
            };
            removed.push(SnapshotSource {
                run_id,
                job_id: run.job_id,
                source_path: backup.source_path.clone(),
                target: backup.target.clone(),
                manifest_key: run.manifest_key.clone(),
            });
        }
        let (job_id, bucket_id, target) = match scope {
            RetentionScope::Job(id) => (Some(id), None, self.get_job(id).await?.draft.target),
            RetentionScope::Bucket(id) => (
                None,
                Some(id),
                Target::Bucket {
                    bucket_id: id,
                    prefix: String::new(),
                },
            ),
        };
        Ok(NewRun {
            owner_id,
            job_id: None,
            spec: RunSpec::Retention(RetentionSpec {
                job_id,
                bucket_id,
                plan_time: now,
                target,
                removed,
            }),
            max_attempts: self.run_default_max_attempts().await?,
            request_id: None,
        })
    }
}
