INSERT INTO backup_metadata (id, owner_id, job_id, run_id, size_bytes, duration_seconds, details, source, create_time, update_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'automatic', $8, $8)
