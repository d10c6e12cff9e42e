UPDATE runs SET state = 'succeeded', finish_time = $2, progress = $3, error = '', manifest_key = $4,
completed_lease_token = $5, worker_id = NULL, lease_expire_time = NULL, update_time = $2 WHERE id = $1
