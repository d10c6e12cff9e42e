-- The writes a snapshot will make, planned batch by batch while the worker
-- still sends them and applied with a few set-based statements when the run
-- succeeds. Nothing here is visible through the API. `commit_key` names one
-- plan (a lease's, or a re-plan at completion); `run_id` is for clean-up.
CREATE TABLE snapshot_commit_rows (
    commit_key     TEXT NOT NULL,
    object_id      BLOB NOT NULL,
    run_id         BLOB NOT NULL,
    new_object     BOOLEAN NOT NULL,
    path           BLOB,
    path_text      TEXT,
    close_current  BOOLEAN NOT NULL,
    version_id     BLOB,
    kind           TEXT,
    size_bytes     BIGINT,
    mode           BIGINT,
    uid            BIGINT,
    gid            BIGINT,
    mtime          TEXT,
    content_hash   TEXT,
    symlink_target BLOB,
    storage_key    TEXT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (commit_key, object_id),
    UNIQUE (commit_key, path)
);
CREATE INDEX snapshot_commit_rows_run ON snapshot_commit_rows(run_id);

-- A counter per repository and job, bumped by every snapshot commit: a plan
-- made against generation g is applied only while the counter still reads g.
CREATE TABLE repository_commits (
    repository TEXT NOT NULL,
    job_key    TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (repository, job_key)
);

-- The generation a staged batch was planned against; NULL: not planned.
ALTER TABLE run_staged_batches ADD COLUMN generation BIGINT;
