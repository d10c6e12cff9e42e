UPDATE runs SET state = $2, error = $3, not_before_time = $4, finish_time = $5, progress = $6,
completed_lease_token = $7, worker_id = NULL, lease_expire_time = NULL, deadline_time = NULL, update_time = $8
WHERE id = $1
