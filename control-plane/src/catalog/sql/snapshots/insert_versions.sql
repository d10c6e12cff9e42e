INSERT INTO object_versions (id, object_id, kind, size_bytes, mode, uid, gid, mtime,
content_hash, symlink_target, storage_key, first_run_id, deleted, create_time)
SELECT version_id, object_id, kind, size_bytes, mode, uid, gid, mtime, content_hash,
symlink_target, storage_key, $2, deleted, $3 FROM snapshot_commit_rows
WHERE commit_key IN ($1, $4) AND version_id IS NOT NULL
