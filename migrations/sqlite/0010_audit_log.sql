-- (SQLite: ids are 16-byte BLOBs and timestamps RFC 3339 text, as elsewhere.)
-- The audit log: one row per mutating call and per run creation and end.
-- No foreign keys: an event outlives the user, token and resources it names.
-- Rows hold ids, method names, codes and peer addresses, never request
-- bodies or secrets. Kept without bound (deleting old rows is an operator's
-- decision, by time: `DELETE FROM audit_events WHERE event_time < …`).
CREATE TABLE audit_events (
    id             BLOB PRIMARY KEY,
    event_time     TEXT NOT NULL,
    actor_user_id  BLOB,
    actor_token_id BLOB,
    action         TEXT NOT NULL,
    -- Resource ids, space-separated (UUIDs only, so the text is never more).
    target_ids     TEXT NOT NULL DEFAULT '',
    result         TEXT NOT NULL,
    peer           TEXT NOT NULL DEFAULT '',
    detail         TEXT NOT NULL DEFAULT '',
    -- Makes an event that several replicas (or a repeated notification)
    -- may record land once: `run.finished:<run id>`. NULL for calls.
    dedup_key      TEXT UNIQUE
);
CREATE INDEX audit_events_actor ON audit_events(actor_user_id, id);
CREATE INDEX audit_events_time ON audit_events(event_time);
