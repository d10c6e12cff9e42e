INSERT INTO runs (id, owner_id, job_id, kind, state, spec, target_bucket_id, request_id,
max_attempts, not_before_time, worker_selector, create_time, update_time, repository_id)
VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $9, $9,
(SELECT id FROM repositories WHERE repository = $11))
