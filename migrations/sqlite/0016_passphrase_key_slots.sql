-- no-transaction
-- Passphrase secrets and key slots (issue 13). A secret may hold a
-- repository passphrase as well as S3 credentials; its values are sealed
-- like the others (under a context of their own, so a row whose kind was
-- changed fails its integrity check).
--
-- SQLite cannot change a CHECK constraint, so `secrets` is rebuilt. Buckets
-- reference it, and with foreign keys on, dropping the old table would
-- count their references as violations; so this is SQLite's documented
-- procedure: foreign keys off (outside a transaction, where the pragma
-- takes effect), the rebuild in one transaction, foreign keys on again.
PRAGMA foreign_keys = OFF;
BEGIN;
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
COMMIT;
PRAGMA foreign_keys = ON;
