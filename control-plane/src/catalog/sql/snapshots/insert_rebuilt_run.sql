INSERT INTO runs (id, owner_id, job_id, kind, state, spec, target_bucket_id, max_attempts,
not_before_time, worker_selector, create_time, start_time, finish_time, update_time,
repository_id, manifest_key, attempt)
VALUES ($1, $2, $3, 'backup', 'succeeded', $4, $5, 1, $6, '{}', $6, $6, $6, $7, $8, $9, 1)
