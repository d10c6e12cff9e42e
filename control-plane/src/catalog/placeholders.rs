//! Numbered placeholders for statements whose parameter count varies (IN
//! lists, multi-row VALUES), and how many rows such a statement takes.

/// Rows (or ids) per multi-row statement.
pub(crate) const BATCH_ROWS: usize = 500;

/// `($first, $first+1, …), (…)`: placeholders for a multi-row VALUES list.
pub(crate) fn values_placeholders(rows: usize, columns: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let params = (0..columns)
                .map(|col| format!("${}", first + row * columns + col))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({params})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, …`: placeholders for an IN list.
pub(crate) fn list_placeholders(count: usize, first: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(values_placeholders(2, 2, 1), "($1, $2), ($3, $4)");
        assert_eq!(list_placeholders(3, 2), "$2, $3, $4");
    }
}
