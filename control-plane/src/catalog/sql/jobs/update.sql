UPDATE jobs SET owner_id = $2, name = $3, description = $4, source_path = $5,
target_kind = $6, target_bucket_id = $7, target_path = $8, options = $9,
next_run_time = CASE WHEN schedule_cron = $10 AND schedule_time_zone = $11
AND schedule_paused = $12 AND start_time IS NOT DISTINCT FROM $22
THEN next_run_time ELSE $18 END,
schedule_pending_time = CASE WHEN $19 THEN schedule_pending_time ELSE NULL END,
schedule_cron = $10, schedule_time_zone = $11, schedule_paused = $12,
schedule_missed_policy = $16, schedule_overlap_policy = $17,
retention_policy_id = $13, worker_selector = $14, max_attempts = $15,
update_time = $20,
commands = $21, start_time = $22 WHERE id = $1
