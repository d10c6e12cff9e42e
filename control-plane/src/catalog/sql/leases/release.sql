UPDATE runs SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
finish_time = CASE WHEN cancel_requested THEN $3 ELSE finish_time END,
attempt = attempt - 1, worker_id = NULL, lease_expire_time = NULL, deadline_time = NULL,
not_before_time = $3, update_time = $3
WHERE id = $1 AND lease_token = $2 AND state = 'running' AND worker_id = $4
