-- Notifications (issue 15): channels, the rules that route events to them,
-- and every delivery with its attempts.
--
-- A channel's sensitive settings (a webhook's signing secret and extra
-- headers) are sealed like secrets (XChaCha20-Poly1305 under the secrets
-- key; the channel's id and owner are the associated data). `settings` holds
-- the rest as JSON (URL and header names; SMTP host, port, addresses).
CREATE TABLE notification_channels (
    id                    UUID PRIMARY KEY,
    owner_id              UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    kind                  TEXT NOT NULL CHECK (kind IN ('webhook', 'email')),
    settings              TEXT NOT NULL,
    credentials_secret_id UUID REFERENCES secrets(id),
    key_id                TEXT NOT NULL,
    nonce                 BYTEA NOT NULL,
    ciphertext            BYTEA NOT NULL,
    create_time           TIMESTAMPTZ NOT NULL,
    update_time           TIMESTAMPTZ NOT NULL,
    UNIQUE (owner_id, name)
);

-- Scope: one job (job_id), every job of the owner (job_id NULL), or every
-- owner's (all_owners, admins only).
CREATE TABLE notification_rules (
    id                    UUID PRIMARY KEY,
    owner_id              UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    channel_id            UUID NOT NULL REFERENCES notification_channels(id) ON DELETE CASCADE,
    job_id                UUID REFERENCES jobs(id) ON DELETE CASCADE,
    all_owners            BOOLEAN NOT NULL DEFAULT FALSE,
    on_run_failed         BOOLEAN NOT NULL DEFAULT FALSE,
    on_run_succeeded      BOOLEAN NOT NULL DEFAULT FALSE,
    on_run_cancelled      BOOLEAN NOT NULL DEFAULT FALSE,
    on_job_stale          BOOLEAN NOT NULL DEFAULT FALSE,
    on_run_waiting        BOOLEAN NOT NULL DEFAULT FALSE,
    stale_after_seconds   BIGINT NOT NULL DEFAULT 0,
    waiting_after_seconds BIGINT NOT NULL DEFAULT 0,
    create_time           TIMESTAMPTZ NOT NULL
);
CREATE INDEX notification_rules_channel ON notification_rules(channel_id, id);

-- One row per notice and channel. `(channel_id, event, subject_id, episode)`
-- is the notice's identity: every replica may find the same event, and the
-- unique key makes it one delivery. `subject_id` is the run (run events) or
-- the job (stale, recovered); `episode` tells a job's stale episodes apart.
-- A replica claims a due row (claim_until, claimed_by) before sending it.
CREATE TABLE notification_deliveries (
    id                UUID PRIMARY KEY,
    channel_id        UUID NOT NULL REFERENCES notification_channels(id) ON DELETE CASCADE,
    rule_id           UUID REFERENCES notification_rules(id) ON DELETE SET NULL,
    owner_id          UUID NOT NULL,
    event             TEXT NOT NULL,
    subject_id        UUID NOT NULL,
    episode           TEXT NOT NULL DEFAULT '',
    run_id            UUID,
    job_id            UUID,
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT NOT NULL DEFAULT '',
    http_status       INTEGER NOT NULL DEFAULT 0,
    next_attempt_time TIMESTAMPTZ NOT NULL,
    claim_until       TIMESTAMPTZ,
    claimed_by        TEXT,
    create_time       TIMESTAMPTZ NOT NULL,
    finish_time       TIMESTAMPTZ,
    UNIQUE (channel_id, event, subject_id, episode)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries(state, next_attempt_time);
CREATE INDEX notification_deliveries_subject ON notification_deliveries(subject_id);

-- The notifier looks for runs that ended recently.
CREATE INDEX runs_finish_time ON runs(finish_time);
