-- Per-owner limits count an owner's queued runs on every admission and every
-- scheduled fire; without this index each count reads every queued run.
-- (Jobs and tokens are already indexed by owner.)
CREATE INDEX runs_owner_state ON runs(owner_id, state);
