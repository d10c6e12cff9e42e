-- Per-attempt staging of worker output: nothing here is visible through the API.
-- A batch is committed into objects/versions only when its attempt completes
-- under a still-current lease; batches of lost attempts are deleted.
CREATE TABLE run_staged_batches (
    run_id      BLOB NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    lease_token BIGINT NOT NULL,
    sequence    BIGINT NOT NULL,
    payload     BLOB NOT NULL,
    create_time TEXT NOT NULL,
    PRIMARY KEY (run_id, lease_token, sequence)
);

-- The final outcome a worker reported, so a completion retried after a timeout
-- is answered the same way instead of being refused.
ALTER TABLE runs ADD COLUMN completed_lease_token BIGINT;
ALTER TABLE runs ADD COLUMN manifest_key TEXT NOT NULL DEFAULT '';
