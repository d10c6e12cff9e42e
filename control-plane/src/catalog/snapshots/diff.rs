//! Comparing two snapshots (`DiffSnapshots`) in the database: one statement
//! per page and one for the summary, both over the versions that differ
//! (`sql/snapshots/diff_changes.sql`), never both snapshots in memory.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use uuid::Uuid;

use super::queries::RunScopeRow;
use crate::catalog::error::from_sqlx;
use crate::catalog::objects::VERSION_COLUMNS;
use crate::catalog::{on_read_pool, Catalog, Page};
use crate::error::{DomainError, DomainResult};
use crate::model::snapshot_diff::{ChangeKind, DiffFilter, DiffSummary, SnapshotChange};

const DIFF_CHANGES: &str = include_str!("../sql/snapshots/diff_changes.sql");

/// Size and position of a page of a diff, which is ordered by path: the
/// token is the last path of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffPage {
    /// Changes to return.
    pub size: i64,
    /// Resume after this path.
    pub after: Option<String>,
}

impl DiffPage {
    /// Validates `page_size` and `page_token` as given by a caller.
    pub fn parse(page_size: i32, page_token: &str) -> DomainResult<Self> {
        let size = Page::parse(page_size, "")?.size;
        if page_token.is_empty() {
            return Ok(DiffPage { size, after: None });
        }
        let bad_token =
            || DomainError::invalid("page_token", "not a token from a previous response");
        let bytes = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| bad_token())?;
        let after = String::from_utf8(bytes).map_err(|_| bad_token())?;
        Ok(DiffPage {
            size,
            after: Some(after),
        })
    }

    /// The token resuming after `path`.
    fn token_after(path: &str) -> String {
        URL_SAFE_NO_PAD.encode(path)
    }
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    path_text: String,
    change: String,
    from_version_id: Option<Uuid>,
    to_version_id: Option<Uuid>,
}

/// Binds `$1` to `$10` of `diff_changes.sql`: both snapshots' scopes, the
/// prefix and the cursor.
macro_rules! bind_sides {
    ($query:expr, $from:expr, $to:expr, $prefix:expr, $after:expr) => {
        $query
            .bind($from.0.owner_id)
            .bind($from.0.job_id)
            .bind($from.0.target_bucket_id)
            .bind($from.1)
            .bind($to.0.owner_id)
            .bind($to.0.job_id)
            .bind($to.0.target_bucket_id)
            .bind($to.1)
            .bind($prefix)
            .bind($after)
    };
}

impl Catalog {
    /// The paths that differ between snapshots `from_run` and `to_run`, by
    /// path, with the summary of the whole diff beneath the filter's prefix
    /// (every kind of change) and the next page's token. `NotFound` for a
    /// run outside `owner_scope`, `FailedPrecondition` for one that is not
    /// a snapshot, `InvalidArgument` (on `to_run_id`) for snapshots of two
    /// repositories.
    pub async fn diff_snapshots(
        &self,
        from_run: Uuid,
        to_run: Uuid,
        owner_scope: Option<Uuid>,
        filter: &DiffFilter,
        page: &DiffPage,
    ) -> DomainResult<(Vec<SnapshotChange>, DiffSummary, String)> {
        let from = (self.snapshot_run(from_run, owner_scope).await?, from_run);
        let to = (self.snapshot_run(to_run, owner_scope).await?, to_run);
        if from.0.repository_id != to.0.repository_id {
            return Err(DomainError::invalid(
                "to_run_id",
                "is a snapshot of another repository than from_run_id",
            ));
        }
        let summary = self.diff_summary(&from, &to, &filter.path_prefix).await?;
        let rows = self.diff_rows(&from, &to, filter, page).await?;
        let size = usize::try_from(page.size).unwrap_or(usize::MAX);
        let more = rows.len() > size;
        let rows: Vec<ChangeRow> = rows.into_iter().take(size).collect();
        let next_page_token = match rows.last() {
            Some(last) if more => DiffPage::token_after(&last.path_text),
            _ => String::new(),
        };
        let ids: Vec<Uuid> = rows
            .iter()
            .flat_map(|row| [row.from_version_id, row.to_version_id])
            .flatten()
            .collect();
        let select = format!("SELECT {VERSION_COLUMNS} FROM object_versions v WHERE v.id IN");
        let mut versions = self
            .versions_in(&select, &ids, |version| version.id)
            .await?;
        let changes = rows
            .into_iter()
            .map(|row| {
                let kind = ChangeKind::parse(&row.change).ok_or_else(|| {
                    DomainError::Internal(format!("diff query returned {:?}", row.change))
                })?;
                Ok(SnapshotChange {
                    path_text: row.path_text,
                    kind,
                    from: row.from_version_id.and_then(|id| versions.remove(&id)),
                    to: row.to_version_id.and_then(|id| versions.remove(&id)),
                })
            })
            .collect::<DomainResult<Vec<_>>>()?;
        Ok((changes, summary, next_page_token))
    }

    async fn diff_rows(
        &self,
        from: &(RunScopeRow, Uuid),
        to: &(RunScopeRow, Uuid),
        filter: &DiffFilter,
        page: &DiffPage,
    ) -> DomainResult<Vec<ChangeRow>> {
        let sql = format!(
            "{DIFF_CHANGES} SELECT path_text, change, from_version_id, to_version_id FROM changes \
             WHERE ($11 AND change = 'added') OR ($12 AND change = 'removed') \
             OR ($13 AND change = 'content') OR ($14 AND change = 'metadata') \
             ORDER BY path_text LIMIT $15"
        );
        on_read_pool!(self, |pool| bind_sides!(
            sqlx::query_as::<_, ChangeRow>(&sql),
            from,
            to,
            &filter.path_prefix,
            page.after.as_deref()
        )
        .bind(filter.includes(ChangeKind::Added))
        .bind(filter.includes(ChangeKind::Removed))
        .bind(filter.includes(ChangeKind::Content))
        .bind(filter.includes(ChangeKind::Metadata))
        .bind(page.size + 1)
        .fetch_all(pool)
        .await)
        .map_err(|e| from_sqlx(e, "snapshot diff"))
    }

    async fn diff_summary(
        &self,
        from: &(RunScopeRow, Uuid),
        to: &(RunScopeRow, Uuid),
        path_prefix: &str,
    ) -> DomainResult<DiffSummary> {
        let sql = format!(
            "{DIFF_CHANGES} SELECT \
             {} AS added_count, {} AS removed_count, {} AS content_changed_count, \
             {} AS metadata_changed_count, {} AS added_bytes, {} AS removed_bytes, \
             {} AS changed_bytes FROM changes",
            sum_where("1", "added"),
            sum_where("1", "removed"),
            sum_where("1", "content"),
            sum_where("1", "metadata"),
            sum_where("to_size", "added"),
            sum_where("from_size", "removed"),
            sum_where("to_size", "content"),
        );
        on_read_pool!(self, |pool| bind_sides!(
            sqlx::query_as::<_, DiffSummary>(&sql),
            from,
            to,
            path_prefix,
            None::<String>
        )
        .fetch_one(pool)
        .await)
        .map_err(|e| from_sqlx(e, "snapshot diff"))
    }
}

/// `SUM(value)` over the changes of one kind, as a BIGINT on both backends
/// (PostgreSQL sums BIGINTs into NUMERIC).
fn sum_where(value: &str, change: &str) -> String {
    format!(
        "CAST(COALESCE(SUM(CASE WHEN change = '{change}' THEN {value} ELSE 0 END), 0) AS BIGINT)"
    )
}
