-- Immutability (issue 13 item 6). A bucket may require S3 Object Lock:
-- objects are written with a retain-until date in this mode ('' = no lock,
-- 'governance', 'compliance') for at least this many seconds. Its
-- maintenance runs (retention, garbage collection) may sign with a secret
-- of their own, so that backup workers never hold delete-capable keys.
ALTER TABLE buckets ADD COLUMN object_lock_mode TEXT NOT NULL DEFAULT ''
    CHECK (object_lock_mode IN ('', 'governance', 'compliance'));
ALTER TABLE buckets ADD COLUMN object_lock_min_retention_seconds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE buckets ADD COLUMN s3_maintenance_secret_id BLOB REFERENCES secrets(id);

-- The class a worker announced: 'all', 'backup' (append-only) or
-- 'maintenance'. Retention and garbage collection go only to 'all' and
-- 'maintenance' workers.
ALTER TABLE workers ADD COLUMN class TEXT NOT NULL DEFAULT 'all'
    CHECK (class IN ('all', 'backup', 'maintenance'));

-- For a snapshot in a bucket with Object Lock: the latest date its manifest
-- is known to be locked until (an upper bound: the commit time plus the
-- lock, moved on when maintenance extends it). Retention waits for it.
ALTER TABLE runs ADD COLUMN locked_until TEXT;
