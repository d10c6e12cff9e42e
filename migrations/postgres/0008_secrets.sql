-- Secrets: S3 credentials owned by a user, encrypted at rest (XChaCha20-Poly1305
-- under the control plane's secrets key; the secret's id and owner are the
-- associated data). `key_id` is the fingerprint of the key that sealed the
-- row, so a wrong key is reported as such. Buckets name a secret instead of a
-- worker's variables or files.
CREATE TABLE secrets (
    id                 UUID PRIMARY KEY,
    owner_id           UUID NOT NULL REFERENCES users(id),
    name               TEXT NOT NULL,
    description        TEXT NOT NULL DEFAULT '',
    kind               TEXT NOT NULL CHECK (kind IN ('s3')),
    access_key_id_hint TEXT NOT NULL DEFAULT '',
    has_session_token  BOOLEAN NOT NULL DEFAULT FALSE,
    key_id             TEXT NOT NULL,
    nonce              BYTEA NOT NULL,
    ciphertext         BYTEA NOT NULL,
    create_time        TIMESTAMPTZ NOT NULL,
    update_time        TIMESTAMPTZ NOT NULL,
    UNIQUE (owner_id, name)
);

ALTER TABLE buckets ADD COLUMN s3_secret_id UUID REFERENCES secrets(id);
