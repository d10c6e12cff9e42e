INSERT INTO objects (id, owner_id, bucket_id, repository_id, job_id, path, path_text, create_time)
SELECT object_id, $2, $3, $4, $5, path, path_text, $6 FROM snapshot_commit_rows
WHERE commit_key IN ($1, $7) AND new_object
