-- The paths that differ between snapshot $4 (of owner $1, job $2, bucket $3)
-- and snapshot $8 (of owner $5, job $6, bucket $7), beneath prefix $9 and
-- after path $10 (NULL: from the start), as `changes`. A version valid in
-- both snapshots is the same entry in both, so it is left out on both sides
-- before the join: an incremental's diff reads only the versions that
-- changed, not both snapshots. Valid in both backends (SQLite >= 3.39 has
-- FULL JOIN and IS DISTINCT FROM).
WITH old_side AS (
    SELECT o.path_text, v.id, v.kind, v.size_bytes, v.mode, v.uid, v.gid, v.mtime,
           v.content_hash, v.symlink_target
    FROM object_versions v JOIN objects o ON o.id = v.object_id
    WHERE o.owner_id = $1 AND ($2 IS NULL OR o.job_id = $2) AND ($3 IS NULL OR o.bucket_id = $3)
      AND v.first_run_id <= $4 AND (v.last_run_id IS NULL OR v.last_run_id > $4) AND NOT v.deleted
      AND NOT (o.owner_id = $5 AND ($6 IS NULL OR o.job_id = $6) AND ($7 IS NULL OR o.bucket_id = $7)
               AND v.first_run_id <= $8 AND (v.last_run_id IS NULL OR v.last_run_id > $8))
      AND substr(o.path_text, 1, length($9)) = $9 AND ($10 IS NULL OR o.path_text > $10)
), new_side AS (
    SELECT o.path_text, v.id, v.kind, v.size_bytes, v.mode, v.uid, v.gid, v.mtime,
           v.content_hash, v.symlink_target
    FROM object_versions v JOIN objects o ON o.id = v.object_id
    WHERE o.owner_id = $5 AND ($6 IS NULL OR o.job_id = $6) AND ($7 IS NULL OR o.bucket_id = $7)
      AND v.first_run_id <= $8 AND (v.last_run_id IS NULL OR v.last_run_id > $8) AND NOT v.deleted
      AND NOT (o.owner_id = $1 AND ($2 IS NULL OR o.job_id = $2) AND ($3 IS NULL OR o.bucket_id = $3)
               AND v.first_run_id <= $4 AND (v.last_run_id IS NULL OR v.last_run_id > $4))
      AND substr(o.path_text, 1, length($9)) = $9 AND ($10 IS NULL OR o.path_text > $10)
), paired AS (
    SELECT COALESCE(n.path_text, p.path_text) AS path_text,
           CASE
               WHEN p.id IS NULL THEN 'added'
               WHEN n.id IS NULL THEN 'removed'
               WHEN p.kind <> n.kind OR p.size_bytes <> n.size_bytes
                    OR p.content_hash <> n.content_hash THEN 'content'
               WHEN p.mode <> n.mode OR p.uid <> n.uid OR p.gid <> n.gid
                    OR p.mtime IS DISTINCT FROM n.mtime
                    OR p.symlink_target IS DISTINCT FROM n.symlink_target THEN 'metadata'
           END AS change,
           p.id AS from_version_id, n.id AS to_version_id,
           COALESCE(p.size_bytes, 0) AS from_size, COALESCE(n.size_bytes, 0) AS to_size
    FROM old_side p FULL JOIN new_side n ON n.path_text = p.path_text
), changes AS (
    SELECT * FROM paired WHERE change IS NOT NULL
)
