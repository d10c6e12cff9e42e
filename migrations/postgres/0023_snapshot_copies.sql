-- Copies (issue 17 item 1): where a snapshot exists besides its own
-- repository. A row is written in the transaction that records its copy
-- run's success, so a copy is listed only once its manifest is stored.
CREATE TABLE snapshot_copies (
    id              UUID PRIMARY KEY,
    snapshot_run_id UUID NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    repository_id   UUID NOT NULL REFERENCES repositories(id),
    copy_run_id     UUID NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    -- The copy run's target (JSON, as `runs.spec` spells targets).
    target          TEXT NOT NULL,
    manifest_key    TEXT NOT NULL,
    create_time     TIMESTAMPTZ NOT NULL,
    UNIQUE (snapshot_run_id, repository_id)
);
CREATE INDEX snapshot_copies_repository ON snapshot_copies(repository_id);
