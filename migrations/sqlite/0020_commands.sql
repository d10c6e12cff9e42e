-- Admin-defined commands: programs workers run as a backup's source or its
-- hooks, with fixed arguments and environment (JSON text), granted to the
-- users listed in `grantee_ids` (a JSON array of user ids).
CREATE TABLE commands (
    id                BLOB PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    description       TEXT NOT NULL,
    executable        TEXT NOT NULL,
    args              TEXT NOT NULL,
    environment       TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    timeout_seconds   INTEGER NOT NULL,
    output_file_name  TEXT NOT NULL,
    grantee_ids       TEXT NOT NULL,
    creator_id        BLOB NOT NULL,
    create_time       TEXT NOT NULL
);

-- A job's command sources and hooks, by command id (JSON text).
ALTER TABLE jobs ADD COLUMN commands TEXT NOT NULL DEFAULT '{}';
