//! Retention planning: which snapshots the retention rules keep, and why.
//!
//! Pure: the catalog loads a [`PlanInput`] ([`crate::catalog::Catalog::plan_retention`])
//! and [`plan`] decides. PlanRetention shows the decisions; ApplyRetention
//! removes exactly the snapshots [`RetentionPlan::runs_to_remove`] names, so
//! both always agree.
//!
//! # Semantics
//!
//! - A *snapshot* is a succeeded backup run; it is the unit of removal.
//! - Snapshots form *groups*: one per job and repository (the chain of
//!   incrementals; snapshots without a job form their own group per
//!   repository). Every group is evaluated on its own, so a snapshot's fate
//!   does not depend on whether a job or a bucket plan asked.
//! - A group's policy is its job's, else its bucket's, else the
//!   `default_retention_policy_id` configuration. A group without any policy
//!   keeps everything (reason `no_policy`): nothing is ever removed without one.
//! - The rules follow restic: `keep_last` keeps the newest N;
//!   `keep_hourly`/`daily`/`weekly` (ISO weeks)/`monthly`/`yearly` keep the
//!   newest snapshot of each of the last N calendar buckets that have one,
//!   computed in the policy's time zone; `keep_within` keeps everything
//!   taken less than that long before the group's newest snapshot (a
//!   snapshot exactly at the limit is outside, as in restic); `keep_tags` keeps
//!   snapshots carrying a tag `key` (any value) or `key=value`. A snapshot
//!   lists every rule that keeps it.
//! - The newest snapshot of every group is always kept (reason `newest`): the
//!   next incremental backup builds on it.
//! - Object retention only adds keeps (a snapshot is removed whole; manifests
//!   are never rewritten). A version held by a legal hold or a retain-until
//!   date in the future (directly, or because its whole object is held) keeps
//!   the newest snapshot containing it (reasons `legal_hold`,
//!   `retain_until`). Where a group may interleave several chains (snapshots
//!   without a job, which includes those of deleted jobs, or runs recorded
//!   before repositories were), the catalog cannot tell which snapshot of the
//!   range holds the version, so every one of them is kept. An object
//!   retention with a policy evaluates that
//!   policy over the object's versions (a version's time is the time of its
//!   first snapshot, its tags are the version's tags) and keeps, for every
//!   version the policy keeps, the newest snapshot containing it (reason
//!   `object_policy`); on a single version's retention only that version
//!   profits. Deletion markers hold no data and keep nothing.
//! - Deterministic: the same input gives the same plan; decisions are
//!   ordered newest first (ties by run id, newest first).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use super::KeepRules;
use crate::error::{DomainError, DomainResult};
use crate::model::job::parse_time_zone;
use crate::model::tag::TagMatch;

/// What a plan covers: the snapshots of one job, or every snapshot stored in
/// one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionScope {
    /// Every snapshot of this job (in whichever repository).
    Job(Uuid),
    /// Every snapshot stored in this bucket (of any job, or none).
    Bucket(Uuid),
}

/// Why a snapshot is kept. The order is the order reasons are listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeepReason {
    /// The newest snapshot of its group (the parent of the next incremental).
    Newest,
    /// No policy applies to its group.
    NoPolicy,
    /// Among the newest `keep_last`.
    KeepLast,
    /// Newest of its hour.
    KeepHourly,
    /// Newest of its day.
    KeepDaily,
    /// Newest of its ISO week.
    KeepWeekly,
    /// Newest of its month.
    KeepMonthly,
    /// Newest of its year.
    KeepYearly,
    /// Within `keep_within` of the group's newest snapshot.
    KeepWithin,
    /// Carries one of the `keep_tags`.
    KeepTags,
    /// Contains a version under legal hold.
    LegalHold,
    /// Contains a version held until a future date.
    RetainUntil,
    /// Contains a version an object retention's policy keeps.
    ObjectPolicy,
    /// Nothing else keeps it, but its manifest is under S3 Object Lock
    /// until [`SnapshotDecision::locked_until`]: it is removed by the first
    /// retention after that.
    ObjectLock,
}

impl KeepReason {
    /// The name shown in plans (`keep_daily`, `legal_hold`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Newest => "newest",
            KeepReason::NoPolicy => "no_policy",
            KeepReason::KeepLast => "keep_last",
            KeepReason::KeepHourly => "keep_hourly",
            KeepReason::KeepDaily => "keep_daily",
            KeepReason::KeepWeekly => "keep_weekly",
            KeepReason::KeepMonthly => "keep_monthly",
            KeepReason::KeepYearly => "keep_yearly",
            KeepReason::KeepWithin => "keep_within",
            KeepReason::KeepTags => "keep_tags",
            KeepReason::LegalHold => "legal_hold",
            KeepReason::RetainUntil => "retain_until",
            KeepReason::ObjectPolicy => "object_policy",
            KeepReason::ObjectLock => "object_lock",
        }
    }
}

/// Where a group's policy comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// The job's `retention_policy_id`.
    Job,
    /// The bucket's `retention_policy_id`.
    Bucket,
    /// The `default_retention_policy_id` configuration.
    Default,
}

/// A policy as it applies to a group or an object.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedPolicy {
    /// The policy's id.
    pub id: Uuid,
    /// Where it was found.
    pub source: PolicySource,
    /// Its rules.
    pub rules: KeepRules,
}

/// A tag as `(key, value)`.
pub type TagPair = (String, String);

/// One snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The succeeded backup run.
    pub run_id: Uuid,
    /// When it was taken (the run's finish time).
    pub time: DateTime<Utc>,
    /// The run's tags.
    pub tags: Vec<TagPair>,
    /// Until when its manifest is under S3 Object Lock, when it is.
    pub locked_until: Option<DateTime<Utc>>,
}

/// What identifies a group of snapshots: the job and the repository they
/// were written to. `repository_id` is unknown for runs recorded before
/// repositories were (those group by bucket instead).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The job; `None` for ad-hoc backups and snapshots of deleted jobs.
    pub job_id: Option<Uuid>,
    /// The bucket, if the repository is in one.
    pub bucket_id: Option<Uuid>,
    /// The repository's id, when known.
    pub repository_id: Option<Uuid>,
}

impl GroupKey {
    /// Whether the group is one chain of snapshots, so that a version's run
    /// range selects only snapshots that contain it. Snapshots without a job
    /// (ad-hoc ones and those of deleted jobs, which may share a repository)
    /// or without a recorded repository may interleave several chains.
    pub fn is_single_chain(&self) -> bool {
        self.job_id.is_some() && self.repository_id.is_some()
    }
}

/// The snapshots of one group with the policy that applies to them.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotGroup {
    /// The group.
    pub key: GroupKey,
    /// The policy; `None` keeps everything.
    pub policy: Option<AppliedPolicy>,
    /// The snapshots, in any order.
    pub snapshots: Vec<Snapshot>,
}

/// One version of a retained object: valid in snapshot `R` when
/// `first_run_id <= R < last_run_id` (see [`crate::model::object`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionSpan {
    /// The version.
    pub id: Uuid,
    /// First snapshot containing it.
    pub first_run_id: Uuid,
    /// First snapshot no longer containing it; `None` while current.
    pub last_run_id: Option<Uuid>,
    /// A deletion marker (holds no data).
    pub deleted: bool,
    /// When it was recorded (its time when its first snapshot is unknown).
    pub create_time: DateTime<Utc>,
    /// The version's tags (for an object policy's `keep_tags`).
    pub tags: Vec<TagPair>,
}

impl VersionSpan {
    /// Whether the version is part of snapshot `run_id` (of its group).
    pub fn contains(&self, run_id: Uuid) -> bool {
        self.first_run_id <= run_id && self.last_run_id.is_none_or(|last| run_id < last)
    }
}

/// The policy of an object retention.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectPolicy {
    /// The policy's id.
    pub id: Uuid,
    /// Its rules.
    pub rules: KeepRules,
}

/// What an object retention holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Every version of the object.
    Object,
    /// One version.
    Version(Uuid),
}

/// One object retention, as far as planning is concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectHold {
    /// What it holds.
    pub held: Held,
    /// A legal hold.
    pub legal_hold: bool,
    /// Held until then (only a future date holds).
    pub retain_until_time: Option<DateTime<Utc>>,
    /// A policy over the object's versions.
    pub policy: Option<ObjectPolicy>,
}

/// An object under at least one object retention, with all its versions.
#[derive(Clone, Debug, PartialEq)]
pub struct RetainedObject {
    /// The object.
    pub object_id: Uuid,
    /// Its job (with `repository_id`, the group its snapshots belong to).
    pub job_id: Option<Uuid>,
    /// Its bucket.
    pub bucket_id: Option<Uuid>,
    /// Its repository's id.
    pub repository_id: Uuid,
    /// Every version of the object.
    pub versions: Vec<VersionSpan>,
    /// The retentions on the object and on its versions.
    pub holds: Vec<ObjectHold>,
}

/// Everything a plan depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    /// The time retain-until dates are compared with.
    pub now: DateTime<Utc>,
    /// The snapshot groups.
    pub groups: Vec<SnapshotGroup>,
    /// Objects under retention whose snapshots are in `groups`.
    pub objects: Vec<RetainedObject>,
}

/// The fate of one snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotDecision {
    /// The snapshot's run.
    pub run_id: Uuid,
    /// Its job.
    pub job_id: Option<Uuid>,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The policy of its group.
    pub policy: Option<(Uuid, PolicySource)>,
    /// Why it is kept, in [`KeepReason`] order; empty when it is removed.
    pub reasons: Vec<KeepReason>,
    /// Until when its manifest is under S3 Object Lock, when that is later
    /// than the plan's time.
    pub locked_until: Option<DateTime<Utc>>,
}

impl SnapshotDecision {
    /// Whether the snapshot survives.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// Whether a rule other than its own lock keeps the snapshot: only
    /// then are its locks extended. A snapshot kept only by
    /// [`KeepReason::ObjectLock`] is waiting for removal, and extending
    /// its lock would keep it (and what it needs) forever.
    pub fn keeps_locks(&self) -> bool {
        self.reasons.iter().any(|r| *r != KeepReason::ObjectLock)
    }
}

/// A complete plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionPlan {
    /// The time it was computed for.
    pub now: DateTime<Utc>,
    /// One decision per snapshot, newest first.
    pub decisions: Vec<SnapshotDecision>,
}

impl RetentionPlan {
    /// The runs whose snapshots are removed, newest first.
    pub fn runs_to_remove(&self) -> Vec<Uuid> {
        self.decisions
            .iter()
            .filter(|d| !d.keep())
            .map(|d| d.run_id)
            .collect()
    }

    /// How many snapshots are kept.
    pub fn kept(&self) -> usize {
        self.decisions.iter().filter(|d| d.keep()).count()
    }
}

/// A snapshot being decided: its place in its group (newest first).
struct Pending<'a> {
    snapshot: &'a Snapshot,
    reasons: BTreeSet<KeepReason>,
}

/// A group being decided, its snapshots sorted newest first.
struct PendingGroup<'a> {
    group: &'a SnapshotGroup,
    snapshots: Vec<Pending<'a>>,
}

impl PendingGroup<'_> {
    /// Keeps the newest snapshot containing `version`; where the group may
    /// interleave chains, every snapshot of the version's range, since the
    /// catalog cannot tell which of them holds it.
    fn keep_containing(&mut self, version: &VersionSpan, reason: KeepReason) {
        let single_chain = self.group.key.is_single_chain();
        for pending in self
            .snapshots
            .iter_mut()
            .filter(|p| version.contains(p.snapshot.run_id))
        {
            pending.reasons.insert(reason);
            if single_chain {
                break;
            }
        }
    }
}

/// Decides every snapshot of `input`. Fails only on a policy whose time
/// zone this build does not know (then nothing is decided at all).
pub fn plan(input: &PlanInput) -> DomainResult<RetentionPlan> {
    let mut groups = input
        .groups
        .iter()
        .map(decide_group)
        .collect::<DomainResult<Vec<_>>>()?;
    for object in &input.objects {
        apply_object_holds(&mut groups, object, input.now)?;
    }
    let now = input.now;
    let mut decisions: Vec<SnapshotDecision> = groups
        .into_iter()
        .flat_map(|group| {
            let job_id = group.group.key.job_id;
            let policy = group.group.policy.as_ref().map(|p| (p.id, p.source));
            group.snapshots.into_iter().map(move |p| {
                // A manifest still locked cannot be deleted: the snapshot
                // waits, and the plan says until when.
                let locked_until = p.snapshot.locked_until.filter(|until| *until > now);
                let mut reasons = p.reasons;
                if reasons.is_empty() && locked_until.is_some() {
                    reasons.insert(KeepReason::ObjectLock);
                }
                SnapshotDecision {
                    run_id: p.snapshot.run_id,
                    job_id,
                    time: p.snapshot.time,
                    policy,
                    reasons: reasons.into_iter().collect(),
                    locked_until,
                }
            })
        })
        .collect();
    decisions.sort_by_key(|d| Reverse((d.time, d.run_id)));
    debug_assert!(decisions.iter().all(|d| d.keep() || d.policy.is_some()));
    Ok(RetentionPlan {
        now: input.now,
        decisions,
    })
}

/// Sorts a group newest first and applies its policy (or `no_policy`) and
/// the `newest` rule.
fn decide_group(group: &SnapshotGroup) -> DomainResult<PendingGroup<'_>> {
    let mut sorted: Vec<&Snapshot> = group.snapshots.iter().collect();
    sorted.sort_by_key(|s| Reverse((s.time, s.run_id)));
    let items: Vec<Dated<'_>> = sorted
        .iter()
        .map(|s| Dated {
            time: s.time,
            tags: &s.tags,
        })
        .collect();
    let mut reasons = match &group.policy {
        Some(policy) => evaluate(policy.id, &policy.rules, &items)?,
        None => vec![BTreeSet::from([KeepReason::NoPolicy]); items.len()],
    };
    if let Some(newest) = reasons.first_mut() {
        newest.insert(KeepReason::Newest);
    }
    Ok(PendingGroup {
        group,
        snapshots: sorted
            .into_iter()
            .zip(reasons)
            .map(|(snapshot, reasons)| Pending { snapshot, reasons })
            .collect(),
    })
}

/// Whether a group holds the snapshots of `object`. Groups of runs with an
/// unknown repository match by job and bucket, so a hold is never missed.
fn group_holds(key: &GroupKey, object: &RetainedObject) -> bool {
    key.job_id == object.job_id
        && match key.repository_id {
            Some(repository_id) => repository_id == object.repository_id,
            None => key.bucket_id == object.bucket_id,
        }
}

/// Adds the keeps one object's retentions ask for.
fn apply_object_holds(
    groups: &mut [PendingGroup<'_>],
    object: &RetainedObject,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let mut matching: Vec<&mut PendingGroup<'_>> = groups
        .iter_mut()
        .filter(|g| group_holds(&g.group.key, object))
        .collect();
    if matching.is_empty() {
        return Ok(());
    }
    let live: Vec<&VersionSpan> = object.versions.iter().filter(|v| !v.deleted).collect();
    for hold in &object.holds {
        let held: Vec<&VersionSpan> = match hold.held {
            Held::Object => live.clone(),
            Held::Version(id) => live.iter().copied().filter(|v| v.id == id).collect(),
        };
        let mut keeps: Vec<(&VersionSpan, KeepReason)> = Vec::new();
        if hold.legal_hold {
            keeps.extend(held.iter().map(|v| (*v, KeepReason::LegalHold)));
        }
        if hold.retain_until_time.is_some_and(|until| until > now) {
            keeps.extend(held.iter().map(|v| (*v, KeepReason::RetainUntil)));
        }
        if let Some(policy) = &hold.policy {
            let kept = versions_kept_by(policy, &live, &matching)?;
            keeps.extend(
                held.iter()
                    .filter(|v| kept.contains(&v.id))
                    .map(|v| (*v, KeepReason::ObjectPolicy)),
            );
        }
        for (version, reason) in keeps {
            for group in matching.iter_mut() {
                group.keep_containing(version, reason);
            }
        }
    }
    Ok(())
}

/// The versions an object policy keeps, evaluated over `live` with each
/// version dated by its first snapshot.
fn versions_kept_by(
    policy: &ObjectPolicy,
    live: &[&VersionSpan],
    groups: &[&mut PendingGroup<'_>],
) -> DomainResult<BTreeSet<Uuid>> {
    let snapshot_times: HashMap<Uuid, DateTime<Utc>> = groups
        .iter()
        .flat_map(|g| g.snapshots.iter())
        .map(|p| (p.snapshot.run_id, p.snapshot.time))
        .collect();
    let mut dated: Vec<(DateTime<Utc>, &VersionSpan)> = live
        .iter()
        .map(|v| {
            let time = snapshot_times
                .get(&v.first_run_id)
                .copied()
                .unwrap_or(v.create_time);
            (time, *v)
        })
        .collect();
    dated.sort_by_key(|(time, v)| Reverse((*time, v.id)));
    let items: Vec<Dated<'_>> = dated
        .iter()
        .map(|(time, v)| Dated {
            time: *time,
            tags: &v.tags,
        })
        .collect();
    let reasons = evaluate(policy.id, &policy.rules, &items)?;
    Ok(dated
        .iter()
        .zip(reasons)
        .filter(|(_, reasons)| !reasons.is_empty())
        .map(|((_, v), _)| v.id)
        .collect())
}

/// Something a policy is evaluated over: a snapshot or an object version.
struct Dated<'a> {
    time: DateTime<Utc>,
    tags: &'a [TagPair],
}

/// A calendar rule: how a local time maps to its bucket.
#[derive(Clone, Copy)]
enum Calendar {
    Hour,
    Day,
    IsoWeek,
    Month,
    Year,
}

impl Calendar {
    /// The bucket of `time`: equal for times in the same hour, day, ...
    fn bucket(self, time: DateTime<Tz>) -> (i32, u32, u32, u32) {
        match self {
            Calendar::Hour => (time.year(), time.month(), time.day(), time.hour()),
            Calendar::Day => (time.year(), time.month(), time.day(), 0),
            Calendar::IsoWeek => {
                let week = time.iso_week();
                (week.year(), week.week(), 0, 0)
            }
            Calendar::Month => (time.year(), time.month(), 0, 0),
            Calendar::Year => (time.year(), 0, 0, 0),
        }
    }
}

/// Applies the rules of policy `id` to `items` (sorted newest first): the
/// reasons each item is kept for, empty for items the rules let go.
fn evaluate(
    id: Uuid,
    rules: &KeepRules,
    items: &[Dated<'_>],
) -> DomainResult<Vec<BTreeSet<KeepReason>>> {
    let zone = parse_time_zone(&rules.time_zone).ok_or_else(|| {
        DomainError::FailedPrecondition(format!(
            "retention policy {} has the time zone {:?}, which this version of Coffer does not \
             know; update the policy's time_zone",
            id, rules.time_zone
        ))
    })?;
    let mut reasons = vec![BTreeSet::new(); items.len()];
    for reason in reasons.iter_mut().take(count(rules.keep_last)) {
        reason.insert(KeepReason::KeepLast);
    }
    let calendars = [
        (Calendar::Hour, rules.keep_hourly, KeepReason::KeepHourly),
        (Calendar::Day, rules.keep_daily, KeepReason::KeepDaily),
        (Calendar::IsoWeek, rules.keep_weekly, KeepReason::KeepWeekly),
        (Calendar::Month, rules.keep_monthly, KeepReason::KeepMonthly),
        (Calendar::Year, rules.keep_yearly, KeepReason::KeepYearly),
    ];
    for (calendar, keep, reason) in calendars {
        let mut remaining = count(keep);
        let mut last_bucket = None;
        for (item, item_reasons) in items.iter().zip(reasons.iter_mut()) {
            if remaining == 0 {
                break;
            }
            // Newest first, so the first item of a bucket is its newest.
            let bucket = Some(calendar.bucket(item.time.with_timezone(&zone)));
            if bucket != last_bucket {
                item_reasons.insert(reason);
                last_bucket = bucket;
                remaining -= 1;
            }
        }
    }
    if let (Some(newest), true) = (items.first(), rules.keep_within_seconds > 0) {
        // A window beyond chrono's range reaches back to the beginning of time.
        let cutoff = TimeDelta::try_seconds(rules.keep_within_seconds)
            .and_then(|window| newest.time.checked_sub_signed(window));
        for (item, item_reasons) in items.iter().zip(reasons.iter_mut()) {
            if cutoff.is_none_or(|cutoff| item.time > cutoff) {
                item_reasons.insert(KeepReason::KeepWithin);
            }
        }
    }
    let tag_rules: Vec<TagMatch> = rules.keep_tags.iter().map(|t| TagMatch::parse(t)).collect();
    if !tag_rules.is_empty() {
        for (item, item_reasons) in items.iter().zip(reasons.iter_mut()) {
            let tagged = item
                .tags
                .iter()
                .any(|(key, value)| tag_rules.iter().any(|rule| rule.matches(key, value)));
            if tagged {
                item_reasons.insert(KeepReason::KeepTags);
            }
        }
    }
    Ok(reasons)
}

/// A rule's count as a number of items (negative counts keep nothing).
fn count(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests;
