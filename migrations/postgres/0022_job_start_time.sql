-- One-shot jobs: a job with a start time runs once, at that time. The
-- scheduler fires it through `next_run_time` like a tick of a schedule; the
-- start time stays for display after it fired.
ALTER TABLE jobs ADD COLUMN start_time TIMESTAMPTZ;
