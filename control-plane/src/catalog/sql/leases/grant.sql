UPDATE runs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1,
worker_id = $2, lease_expire_time = $3, deadline_time = $4, start_time = $5, update_time = $5
WHERE id = $1 AND state = 'queued' RETURNING lease_token, attempt
