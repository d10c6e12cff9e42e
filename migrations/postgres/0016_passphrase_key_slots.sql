-- Passphrase secrets and key slots (issue 13). A secret may hold a
-- repository passphrase as well as S3 credentials; its values are sealed
-- like the others (under a context of their own, so a row whose kind was
-- changed fails its integrity check).
ALTER TABLE secrets DROP CONSTRAINT secrets_kind_check;
ALTER TABLE secrets ADD CONSTRAINT secrets_kind_check CHECK (kind IN ('s3', 'passphrase'));

-- A bucket may name a passphrase secret of its owner: encrypted
-- repositories created in it get a key slot for that passphrase.
ALTER TABLE buckets ADD COLUMN passphrase_secret_id UUID REFERENCES secrets(id);

-- The key slots of a repository as the last run that opened it found them
-- in storage (display only: the worker trusts storage, never this table).
-- A report replaces the repository's rows. `generations` is a JSON array.
CREATE TABLE repository_key_slots (
    repository_id UUID NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    slot_id       TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('passphrase', 'catalog')),
    generations   TEXT NOT NULL,
    create_time   TIMESTAMPTZ NOT NULL,
    report_time   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (repository_id, slot_id)
);
