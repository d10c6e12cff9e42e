UPDATE runs SET state = $2, error = $3, not_before_time = $4, finish_time = $5, worker_id = NULL,
lease_expire_time = NULL, deadline_time = NULL, update_time = $6 WHERE id = $1 AND lease_token = $7
