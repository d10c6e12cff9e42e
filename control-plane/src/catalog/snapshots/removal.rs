//! Removing snapshots from the catalog (retention).
//!
//! A version is valid in snapshot `S` when `first_run_id <= S < last_run_id`
//! (see `crate::model::object`). Removing snapshots must not change what any kept
//! snapshot contains, so before a snapshot's run row goes, every version
//! naming it is moved to the nearest kept snapshot: `first_run_id` to the
//! first kept snapshot at or after it (or the version is deleted when no
//! kept snapshot lies in its range), `last_run_id` to the first kept
//! snapshot at or after it (or NULL, current, when none follows). Kept
//! snapshots between the old and new values do not exist, so membership
//! changes only for the removed snapshots themselves. Work is done a page
//! at a time, each page in its own transaction: every intermediate state
//! shows the kept snapshots exactly as before, and a removal interrupted
//! midway is finished by running it again.

use std::collections::HashMap;

use uuid::Uuid;

use crate::catalog::error::from_sqlx;
use crate::catalog::placeholders::list_placeholders;
use crate::catalog::{in_transaction, on_pool, Catalog};
use crate::error::DomainResult;
use crate::model::run::SnapshotSource;

/// Versions read and rewritten per transaction.
const PAGE_ROWS: i64 = 2000;
/// Ids per `IN (…)` list.
const ID_LIST: usize = 500;

/// What removing snapshots did to the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemovalStats {
    /// Snapshot runs deleted.
    pub snapshots: u64,
    /// Versions moved to a neighbouring kept snapshot.
    pub versions_moved: u64,
    /// Versions deleted because no kept snapshot contains them.
    pub versions_deleted: u64,
    /// Objects deleted because none of their versions is left.
    pub objects_deleted: u64,
}

#[derive(sqlx::FromRow)]
struct VersionBounds {
    id: Uuid,
    object_id: Uuid,
    first_run_id: Uuid,
    last_run_id: Option<Uuid>,
}

/// The first of `kept` (sorted) at or after `run`.
fn first_kept_from(kept: &[Uuid], run: Uuid) -> Option<Uuid> {
    let at = kept.partition_point(|id| *id < run);
    kept.get(at).copied()
}

/// What becomes of one version when the snapshots not in `kept` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionFate {
    Unchanged,
    Delete,
    Move { first: Uuid, last: Option<Uuid> },
}

fn fate(kept: &[Uuid], first: Uuid, last: Option<Uuid>) -> VersionFate {
    let new_first = first_kept_from(kept, first);
    let Some(new_first) = new_first.filter(|f| last.is_none_or(|l| *f < l)) else {
        return VersionFate::Delete;
    };
    let new_last = last.and_then(|l| first_kept_from(kept, l));
    if new_first == first && new_last == last {
        VersionFate::Unchanged
    } else {
        VersionFate::Move {
            first: new_first,
            last: new_last,
        }
    }
}

impl Catalog {
    /// Removes `snapshots` (succeeded backup runs) from the catalog: their
    /// versions are moved or deleted as the module explains, objects left
    /// without versions and the tags of everything removed are deleted, then
    /// the runs (with their errors and metadata). Snapshots already gone
    /// are skipped.
    pub async fn remove_snapshots(
        &self,
        snapshots: &[SnapshotSource],
    ) -> DomainResult<RemovalStats> {
        let mut stats = RemovalStats::default();
        // Grouped by snapshot series: the kept snapshots are those of the
        // same repository and job that are not being removed.
        let mut series: HashMap<(Option<Uuid>, Option<Uuid>), Vec<Uuid>> = HashMap::new();
        for snapshot in snapshots {
            let repository_id = self.run_repository_id(snapshot.run_id).await?;
            series
                .entry((repository_id, snapshot.job_id))
                .or_default()
                .push(snapshot.run_id);
        }
        for ((repository_id, job_id), removed) in series {
            let mut kept = match repository_id {
                Some(repository_id) => self.snapshot_ids(repository_id, job_id).await?,
                // Recorded before runs named their repository: no series.
                None => Vec::new(),
            };
            kept.retain(|id| !removed.contains(id));
            kept.sort_unstable();
            for run_id in removed {
                self.move_versions_off(run_id, &kept, &mut stats).await?;
                stats.snapshots += self.delete_snapshot_run(run_id).await?;
            }
        }
        Ok(stats)
    }

    /// The repository a run was recorded in, if the run still exists and
    /// names one.
    async fn run_repository_id(&self, run_id: Uuid) -> DomainResult<Option<Uuid>> {
        let recorded = on_pool!(self, |pool| {
            sqlx::query_scalar::<_, Option<Uuid>>("SELECT repository_id FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| from_sqlx(e, "snapshot"))?;
        Ok(recorded.flatten())
    }

    /// Every snapshot of one series, by id.
    async fn snapshot_ids(
        &self,
        repository_id: Uuid,
        job_id: Option<Uuid>,
    ) -> DomainResult<Vec<Uuid>> {
        on_pool!(self, |pool| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM runs WHERE kind = 'backup' AND state = 'succeeded' \
             AND repository_id = $1 AND ((job_id IS NULL AND $2 IS NULL) OR job_id = $2) \
             ORDER BY id",
            )
            .bind(repository_id)
            .bind(job_id)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| from_sqlx(e, "snapshot"))
    }

    /// Moves (or deletes) every version whose range starts or ends at `run_id`.
    async fn move_versions_off(
        &self,
        run_id: Uuid,
        kept: &[Uuid],
        stats: &mut RemovalStats,
    ) -> DomainResult<()> {
        for column in ["first_run_id", "last_run_id"] {
            let sql = format!(
                "SELECT id, object_id, first_run_id, last_run_id FROM object_versions \
                 WHERE {column} = $1 AND id > $2 ORDER BY id LIMIT {PAGE_ROWS}"
            );
            let mut after = Uuid::nil();
            loop {
                let page: Vec<VersionBounds> = on_pool!(self, |pool| sqlx::query_as(&sql)
                    .bind(run_id)
                    .bind(after)
                    .fetch_all(pool)
                    .await)
                .map_err(|e| from_sqlx(e, "object versions"))?;
                let Some(last) = page.last() else { break };
                after = last.id;
                self.rewrite_page(&page, kept, stats).await?;
            }
        }
        Ok(())
    }

    /// Applies the fate of each version of one page in one transaction.
    async fn rewrite_page(
        &self,
        page: &[VersionBounds],
        kept: &[Uuid],
        stats: &mut RemovalStats,
    ) -> DomainResult<()> {
        let mut deleted: Vec<Uuid> = Vec::new();
        let mut orphan_candidates: Vec<Uuid> = Vec::new();
        let mut moves: HashMap<(Uuid, Option<Uuid>), Vec<Uuid>> = HashMap::new();
        for version in page {
            match fate(kept, version.first_run_id, version.last_run_id) {
                VersionFate::Unchanged => {}
                VersionFate::Delete => {
                    deleted.push(version.id);
                    orphan_candidates.push(version.object_id);
                }
                VersionFate::Move { first, last } => {
                    moves.entry((first, last)).or_default().push(version.id)
                }
            }
        }
        orphan_candidates.sort_unstable();
        orphan_candidates.dedup();
        let objects_deleted = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            for ((first, last), ids) in &moves {
                for chunk in ids.chunks(ID_LIST) {
                    let sql = format!(
                        "UPDATE object_versions SET first_run_id = $1, last_run_id = $2 WHERE id IN ({})",
                        list_placeholders(chunk.len(), 3)
                    );
                    let mut query = sqlx::query(&sql).bind(*first).bind(*last);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| from_sqlx(e, "object versions"))?;
                }
            }
            for chunk in deleted.chunks(ID_LIST) {
                let list = list_placeholders(chunk.len(), 1);
                for sql in [
                    format!("DELETE FROM tags WHERE resource_kind = 'object_version' AND resource_id IN ({list})"),
                    format!("DELETE FROM object_versions WHERE id IN ({list})"),
                ] {
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *tx).await.map_err(|e| from_sqlx(e, "object versions"))?;
                }
            }
            let mut objects_deleted = 0;
            for chunk in orphan_candidates.chunks(ID_LIST) {
                let list = list_placeholders(chunk.len(), 1);
                let orphans_sql = format!(
                    "SELECT o.id FROM objects o WHERE o.id IN ({list}) AND NOT EXISTS \
                     (SELECT 1 FROM object_versions v WHERE v.object_id = o.id)"
                );
                let mut query = sqlx::query_scalar::<_, Uuid>(&orphans_sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                let orphans = query
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| from_sqlx(e, "objects"))?;
                if orphans.is_empty() {
                    continue;
                }
                let list = list_placeholders(orphans.len(), 1);
                for sql in [
                    format!("DELETE FROM tags WHERE resource_kind = 'object' AND resource_id IN ({list})"),
                    format!("DELETE FROM objects WHERE id IN ({list})"),
                ] {
                    let mut query = sqlx::query(&sql);
                    for id in &orphans {
                        query = query.bind(*id);
                    }
                    query.execute(&mut *tx).await.map_err(|e| from_sqlx(e, "objects"))?;
                }
                objects_deleted += orphans.len() as u64;
            }
            Ok(objects_deleted)
        }))?;
        stats.versions_deleted += deleted.len() as u64;
        stats.versions_moved += moves.values().map(|ids| ids.len() as u64).sum::<u64>();
        stats.objects_deleted += objects_deleted;
        Ok(())
    }

    /// Deletes a snapshot's run row (its errors, metadata and staged batches
    /// go with it by cascade) and its tags. No version may name it any more.
    async fn delete_snapshot_run(&self, run_id: Uuid) -> DomainResult<u64> {
        let deleted = on_pool!(self, |pool| in_transaction!(pool, |tx| {
            sqlx::query("DELETE FROM tags WHERE resource_kind = 'run' AND resource_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| from_sqlx(e, "tags"))?;
            let deleted = sqlx::query(
                "DELETE FROM runs WHERE id = $1 AND kind = 'backup' AND state = 'succeeded'",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| from_sqlx(e, "run"))?
            .rows_affected();
            Ok(deleted)
        }))?;
        if deleted > 0 {
            self.publish_run(run_id);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn versions_move_to_the_nearest_kept_snapshot_or_go() {
        // Snapshots 1..=6; 2, 3 and 5 removed.
        let kept = [id(1), id(4), id(6)];
        let cases = [
            // Only in removed snapshots 2 and 3: gone.
            (id(2), Some(id(4)), VersionFate::Delete),
            // From 2 on, still current: starts at 4 now.
            (
                id(2),
                None,
                VersionFate::Move {
                    first: id(4),
                    last: None,
                },
            ),
            // 1 until 3: ends at 4 (the first kept snapshot without it).
            (
                id(1),
                Some(id(3)),
                VersionFate::Move {
                    first: id(1),
                    last: Some(id(4)),
                },
            ),
            // 3 until 5: in 4 only, which is kept.
            (
                id(3),
                Some(id(5)),
                VersionFate::Move {
                    first: id(4),
                    last: Some(id(6)),
                },
            ),
            // Only in 5: gone.
            (id(5), Some(id(6)), VersionFate::Delete),
            // Kept bounds: untouched.
            (id(1), Some(id(4)), VersionFate::Unchanged),
            (id(4), None, VersionFate::Unchanged),
        ];
        for (first, last, expected) in cases {
            assert_eq!(fate(&kept, first, last), expected, "{first} .. {last:?}");
        }
    }

    #[test]
    fn a_version_ending_after_the_last_kept_snapshot_becomes_current() {
        let kept = [id(1)];
        assert_eq!(
            fate(&kept, id(1), Some(id(2))),
            VersionFate::Move {
                first: id(1),
                last: None
            }
        );
    }
}
