INSERT INTO backup_metadata (id, owner_id, job_id, run_id, size_bytes, duration_seconds, details, source, create_time, update_time)
VALUES ($1, $2, $3, $4, $5, 0, $6, 'automatic', $7, $7)
