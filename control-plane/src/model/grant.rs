//! Data-plane grants: which local paths a user's runs may use, for what, and
//! on which workers. The pure matching rules live here; the catalog stores
//! grants and run admission applies them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::path::{check_normalised_absolute, is_beneath};
use super::run::Labels;
use crate::error::{DomainError, DomainResult, Violations};

/// What a grant allows the paths beneath its root to be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantUse {
    /// Read as a backup source.
    BackupSource,
    /// Written by a restore, which creates entries but never re-modes or
    /// re-owns what it did not create.
    RestoreDestination,
    /// Holds a filesystem or NFS repository.
    Repository,
    /// Restored in place: may also set modes and owners of existing entries.
    InPlaceRestore,
}

impl GrantUse {
    /// The use's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantUse::BackupSource => "backup source",
            GrantUse::RestoreDestination => "restore destination",
            GrantUse::Repository => "repository",
            GrantUse::InPlaceRestore => "in-place restore",
        }
    }
}

/// A stored grant.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// Id.
    pub id: Uuid,
    /// What the grant allows.
    pub spec: GrantSpec,
    /// The admin who created it.
    pub creator_id: Uuid,
    /// Creation time.
    pub create_time: DateTime<Utc>,
}

/// The fields an admin sets when creating a grant, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantSpec {
    /// The user whose runs the grant covers.
    pub grantee_id: Uuid,
    /// Labels the executing worker must carry.
    pub worker_selector: Labels,
    /// Normalised absolute root.
    pub root: String,
    /// Allowed uses, sorted, without duplicates, never empty.
    pub uses: Vec<GrantUse>,
    /// Restores may set file owners.
    pub restore_ownership: bool,
    /// Restores may set setuid, setgid and sticky bits.
    pub restore_special_bits: bool,
}

impl GrantSpec {
    /// Checks every field, reporting all violations at once under `prefix`
    /// (e.g. `grant.`).
    pub fn validate(&self, prefix: &str) -> DomainResult<()> {
        let mut violations = Violations::new();
        violations.absorb(check_normalised_absolute(
            &format!("{prefix}root"),
            &self.root,
        ));
        if self.uses.is_empty() {
            violations.add(format!("{prefix}uses"), "at least one use is required");
        }
        violations.finish()
    }
}

impl Grant {
    /// Whether the grant covers `path` for `usage`.
    pub fn covers(&self, path: &str, usage: GrantUse) -> bool {
        self.spec.uses.contains(&usage) && is_beneath(path, &self.spec.root)
    }

    /// Whether a worker carrying these labels (or a selector already asking
    /// for them) can also satisfy this grant's selector.
    pub fn compatible_with(&self, selector: &Labels) -> bool {
        self.spec
            .worker_selector
            .iter()
            .all(|(key, value)| selector.get(key).is_none_or(|v| v == value))
    }

    /// Whether a worker with `labels` may run what the grant covers.
    pub fn admits_worker(&self, labels: &Labels) -> bool {
        self.spec
            .worker_selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// One local path a run touches and the uses that would allow it, the
/// first being the one delivered when several are granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathNeed {
    /// The request field the path came from, for errors.
    pub field: String,
    /// The normalised absolute path.
    pub path: String,
    /// Acceptable uses, in order of preference.
    pub uses: Vec<GrantUse>,
}

/// A path need matched with the grant that allows it.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantedPath {
    /// The path.
    pub path: String,
    /// The use the grant allows it for.
    pub usage: GrantUse,
    /// The grant.
    pub grant: Grant,
}

/// Finds, for every need, a grant of `grants` that covers it and whose
/// worker selector agrees with `selector` (the run's own), preferring the
/// deepest root. Returns the matches and the selector widened by every
/// chosen grant's labels. Refuses with PERMISSION_DENIED naming the field of
/// the first need no grant covers; the message never mentions other
/// grants, so it reveals nothing about what others may reach.
pub fn match_grants(
    grants: &[Grant],
    needs: &[PathNeed],
    selector: &Labels,
) -> DomainResult<(Vec<GrantedPath>, Labels)> {
    let mut widened = selector.clone();
    let mut granted = Vec::with_capacity(needs.len());
    for need in needs {
        let choice = need.uses.iter().find_map(|&usage| {
            grants
                .iter()
                .filter(|g| g.covers(&need.path, usage) && g.compatible_with(&widened))
                .max_by_key(|g| g.spec.root.len())
                .map(|g| (usage, g))
        });
        let Some((usage, grant)) = choice else {
            return Err(not_granted(need));
        };
        widened.extend(grant.spec.worker_selector.clone());
        granted.push(GrantedPath {
            path: need.path.clone(),
            usage,
            grant: grant.clone(),
        });
    }
    Ok((granted, widened))
}

fn not_granted(need: &PathNeed) -> DomainError {
    let uses: Vec<&str> = need.uses.iter().map(|u| u.as_str()).collect();
    DomainError::PermissionDenied(format!(
        "{}: {:?} is not beneath a grant of its owner allowing {} (on workers matching the \
         selector)",
        need.field,
        need.path,
        uses.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(root: &str, uses: &[GrantUse], selector: &[(&str, &str)]) -> Grant {
        Grant {
            id: Uuid::now_v7(),
            spec: GrantSpec {
                grantee_id: Uuid::nil(),
                worker_selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                root: root.to_string(),
                uses: uses.to_vec(),
                restore_ownership: false,
                restore_special_bits: false,
            },
            creator_id: Uuid::nil(),
            create_time: Utc::now(),
        }
    }

    fn need(path: &str, uses: &[GrantUse]) -> PathNeed {
        PathNeed {
            field: "job.source_path".into(),
            path: path.into(),
            uses: uses.to_vec(),
        }
    }

    #[test]
    fn a_grant_covers_its_root_and_below_for_its_uses_only() {
        let g = grant("/data/a", &[GrantUse::BackupSource], &[]);
        assert!(g.covers("/data/a", GrantUse::BackupSource));
        assert!(g.covers("/data/a/x", GrantUse::BackupSource));
        assert!(!g.covers("/data/ab", GrantUse::BackupSource));
        assert!(!g.covers("/data/a/x", GrantUse::RestoreDestination));
    }

    #[test]
    fn the_deepest_compatible_grant_wins_and_widens_the_selector() {
        let grants = [
            grant("/data", &[GrantUse::BackupSource], &[]),
            grant("/data/a", &[GrantUse::BackupSource], &[("host", "db1")]),
        ];
        let (granted, selector) = match_grants(
            &grants,
            &[need("/data/a/x", &[GrantUse::BackupSource])],
            &Labels::new(),
        )
        .expect("granted");
        assert_eq!(granted[0].grant.id, grants[1].id);
        assert_eq!(selector.get("host").map(String::as_str), Some("db1"));
    }

    #[test]
    fn a_grant_whose_selector_conflicts_with_the_run_is_not_used() {
        let grants = [grant(
            "/data",
            &[GrantUse::BackupSource],
            &[("host", "db1")],
        )];
        let selector: Labels = [("host".to_string(), "db2".to_string())].into();
        let error = match_grants(
            &grants,
            &[need("/data/x", &[GrantUse::BackupSource])],
            &selector,
        )
        .expect_err("the only grant wants another host");
        assert!(
            matches!(error, DomainError::PermissionDenied(m) if m.starts_with("job.source_path"))
        );
    }

    #[test]
    fn uses_are_tried_in_order_of_preference() {
        let grants = [grant("/r", &[GrantUse::InPlaceRestore], &[])];
        let (granted, _) = match_grants(
            &grants,
            &[need(
                "/r/x",
                &[GrantUse::RestoreDestination, GrantUse::InPlaceRestore],
            )],
            &Labels::new(),
        )
        .expect("granted");
        assert_eq!(granted[0].usage, GrantUse::InPlaceRestore);
    }
}
