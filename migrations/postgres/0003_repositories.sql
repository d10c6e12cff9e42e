-- Repositories (a bucket plus prefix, or a filesystem path) and the key their
-- chunk ids are computed with. The catalog creates the key on first use so
-- that two first backups racing into a new repository agree on it; the
-- repository's own `config` object is authoritative once it exists.
CREATE TABLE repositories (
    repository  TEXT PRIMARY KEY,
    chunk_key   BYTEA NOT NULL,
    create_time TIMESTAMPTZ NOT NULL
);

-- The repository a backup run wrote to, so the parent of an incremental
-- (the last snapshot of the same job in the same repository) is one lookup.
ALTER TABLE runs ADD COLUMN repository TEXT;
CREATE INDEX runs_snapshots_idx ON runs (repository, job_id, finish_time)
    WHERE kind = 'backup' AND state = 'succeeded';
