INSERT INTO run_exclusions (run_id, attempt, path, reason, rule, source, size_bytes, create_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
