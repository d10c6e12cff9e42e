SELECT COALESCE(SUM(CASE WHEN version_id IS NULL THEN 1 ELSE 0 END), 0),
COALESCE(SUM(CASE WHEN deleted THEN 1 ELSE 0 END), 0)
FROM snapshot_commit_rows WHERE commit_key IN ($1, $2)
