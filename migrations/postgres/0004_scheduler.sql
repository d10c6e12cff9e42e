-- The job scheduler: schedule policies, a tick waiting for an earlier run, and
-- the leader lease through which control-plane replicas elect the one
-- scheduler that fires.

-- What happens to ticks missed while no control plane was up, and to ticks
-- that fire while a run of the job is still queued or running.
ALTER TABLE jobs ADD COLUMN schedule_missed_policy TEXT NOT NULL DEFAULT 'run_once'
    CHECK (schedule_missed_policy IN ('run_once', 'skip'));
ALTER TABLE jobs ADD COLUMN schedule_overlap_policy TEXT NOT NULL DEFAULT 'skip'
    CHECK (schedule_overlap_policy IN ('skip', 'queue'));
-- A tick that fired while an earlier run was active (overlap policy queue);
-- its run is created when that run ends.
ALTER TABLE jobs ADD COLUMN schedule_pending_time TIMESTAMPTZ;

-- The scheduler's scan for due ticks.
CREATE INDEX jobs_next_run_time ON jobs(next_run_time) WHERE next_run_time IS NOT NULL;
CREATE INDEX jobs_pending_fire ON jobs(schedule_pending_time) WHERE schedule_pending_time IS NOT NULL;

-- One row: the replica whose scheduler fires, until expire_time (the
-- database's clock). The leader renews it well before it expires; another
-- replica takes it over once it has expired. `term` grows with every change
-- of holder.
CREATE TABLE scheduler_leader (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    holder       TEXT NOT NULL,
    term         BIGINT NOT NULL,
    acquire_time TIMESTAMPTZ NOT NULL,
    expire_time  TIMESTAMPTZ NOT NULL
);
