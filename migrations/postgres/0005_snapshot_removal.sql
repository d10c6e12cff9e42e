-- Removing a snapshot moves the versions that end at it (retention), so
-- versions are found by either end of their range.
CREATE INDEX object_versions_last_run ON object_versions(last_run_id);
