UPDATE runs SET lease_expire_time = $3, progress = $4, update_time = $5
WHERE id = $1 AND lease_token = $2 AND state = 'running' AND worker_id = $6
RETURNING cancel_requested
