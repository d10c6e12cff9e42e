INSERT INTO jobs (id, owner_id, name, description, source_path, target_kind,
target_bucket_id, target_path, options, schedule_cron, schedule_time_zone,
schedule_paused, schedule_missed_policy, schedule_overlap_policy, next_run_time,
retention_policy_id, worker_selector, max_attempts, create_time, update_time,
commands, start_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19,
$20, $21)
