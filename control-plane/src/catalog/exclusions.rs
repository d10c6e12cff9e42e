//! Catalog queries for what backups' dry runs found excluded. Rows are
//! written with the batch that carried them (`snapshots::staging`).

use uuid::Uuid;

use super::{on_read_pool, Catalog};
use crate::catalog::error::from_sqlx;
use crate::error::DomainResult;
use crate::model::run::RunExclusionEntry;

impl Catalog {
    /// Lists a run's exclusions in the order they were reported, after the
    /// one with id `after`; returns the page and the next page's token.
    pub async fn list_run_exclusions(
        &self,
        run_id: Uuid,
        after: Option<i64>,
        size: i64,
    ) -> DomainResult<(Vec<RunExclusionEntry>, String)> {
        let rows = on_read_pool!(self, |pool| {
            sqlx::query_as::<_, RunExclusionEntry>(
            "SELECT id, path, reason, rule, source, size_bytes, attempt, create_time \
             FROM run_exclusions WHERE run_id = $1 AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        )
        .bind(run_id)
        .bind(after)
        .bind(size + 1)
        .fetch_all(pool)
        .await
        })
        .map_err(|e| from_sqlx(e, "run exclusions"))?;
        Ok(finish_numbered(rows, size, |row| row.id))
    }
}

/// A page of rows numbered by the catalog, fetched with one row more than
/// `size`: the page, and the next page's token (the last row's number)
/// when that extra row came back.
pub(super) fn finish_numbered<T>(
    mut rows: Vec<T>,
    size: i64,
    id_of: impl Fn(&T) -> i64,
) -> (Vec<T>, String) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return (rows, String::new());
    }
    rows.truncate(size);
    let token = rows
        .last()
        .map(|row| id_of(row).to_string())
        .unwrap_or_default();
    (rows, token)
}
