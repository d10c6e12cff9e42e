INSERT INTO snapshot_copies
    (id, snapshot_run_id, repository_id, copy_run_id, target, manifest_key, create_time)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (snapshot_run_id, repository_id) DO UPDATE SET
    copy_run_id = excluded.copy_run_id,
    target = excluded.target,
    manifest_key = excluded.manifest_key,
    create_time = excluded.create_time
