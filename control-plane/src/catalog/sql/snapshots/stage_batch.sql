INSERT INTO run_staged_batches (run_id, lease_token, sequence, payload, create_time, generation) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
