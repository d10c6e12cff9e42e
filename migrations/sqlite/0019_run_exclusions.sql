-- What a backup's dry run found excluded (issue 17 item 4): one row per path
-- left out, with the rule that left it out, listed by ListRunExclusions.
CREATE TABLE run_exclusions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      BLOB NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    path        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    source      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    create_time TEXT NOT NULL
);
CREATE INDEX run_exclusions_run ON run_exclusions(run_id, id);
