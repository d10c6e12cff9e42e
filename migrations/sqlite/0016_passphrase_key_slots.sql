-- Passphrase secrets and key slots (issue 13). A secret may hold a
-- repository passphrase as well as S3 credentials; its values are sealed
-- like the others (under a context of their own, so a row whose kind was
-- changed fails its integrity check).
--
-- SQLite cannot change a CHECK constraint, so `secrets` is rebuilt. The
-- migration runs in a transaction with foreign keys on (where the pragma
-- that would turn them off has no effect), and dropping a table that
-- buckets reference would count their references as violations; so the
-- buckets' references are set aside while the table is rebuilt and put
-- back afterwards, checked against the new table.
CREATE TEMP TABLE bucket_secret_refs AS
SELECT id, s3_secret_id, s3_maintenance_secret_id FROM buckets
WHERE s3_secret_id IS NOT NULL OR s3_maintenance_secret_id IS NOT NULL;
UPDATE buckets SET s3_secret_id = NULL, s3_maintenance_secret_id = NULL
WHERE id IN (SELECT id FROM bucket_secret_refs);
CREATE TABLE secrets_rebuilt (
    id                 BLOB PRIMARY KEY,
    owner_id           BLOB NOT NULL REFERENCES users(id),
    name               TEXT NOT NULL,
    description        TEXT NOT NULL DEFAULT '',
    kind               TEXT NOT NULL CHECK (kind IN ('s3', 'passphrase')),
    access_key_id_hint TEXT NOT NULL DEFAULT '',
    has_session_token  BOOLEAN NOT NULL DEFAULT FALSE,
    key_id             TEXT NOT NULL,
    nonce              BLOB NOT NULL,
    ciphertext         BLOB NOT NULL,
    create_time        TEXT NOT NULL,
    update_time        TEXT NOT NULL,
    UNIQUE (owner_id, name)
);
INSERT INTO secrets_rebuilt (id, owner_id, name, description, kind, access_key_id_hint,
                             has_session_token, key_id, nonce, ciphertext, create_time,
                             update_time)
SELECT id, owner_id, name, description, kind, access_key_id_hint, has_session_token, key_id,
       nonce, ciphertext, create_time, update_time
FROM secrets;
DROP TABLE secrets;
ALTER TABLE secrets_rebuilt RENAME TO secrets;
UPDATE buckets SET
    s3_secret_id = (SELECT r.s3_secret_id FROM bucket_secret_refs r WHERE r.id = buckets.id),
    s3_maintenance_secret_id =
        (SELECT r.s3_maintenance_secret_id FROM bucket_secret_refs r WHERE r.id = buckets.id)
WHERE id IN (SELECT id FROM bucket_secret_refs);
DROP TABLE bucket_secret_refs;

-- A bucket may name a passphrase secret of its owner: encrypted
-- repositories created in it get a key slot for that passphrase.
ALTER TABLE buckets ADD COLUMN passphrase_secret_id BLOB REFERENCES secrets(id);

-- The key slots of a repository as the last run that opened it found them
-- in storage (display only: the worker trusts storage, never this table).
-- A report replaces the repository's rows. `generations` is a JSON array.
CREATE TABLE repository_key_slots (
    repository_id BLOB NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    slot_id       TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('passphrase', 'catalog')),
    generations   TEXT NOT NULL,
    create_time   TEXT NOT NULL,
    report_time   TEXT NOT NULL,
    PRIMARY KEY (repository_id, slot_id)
);
