-- Repository format v2. A bucket says how the repositories created in it
-- protect their data; existing buckets, like new ones, create encrypted
-- repositories from now on (their existing repositories stay v1).
ALTER TABLE buckets ADD COLUMN encryption TEXT NOT NULL DEFAULT 'aes-256-gcm'
    CHECK (encryption IN ('aes-256-gcm', 'none'));

-- Each repository records its format. Every existing one is v1 and keeps
-- its plaintext chunk_key (public in a v1 repository's config anyway). A v2
-- repository has its own encryption, and, when encrypted, the catalog key
-- that opens its catalog slot, sealed like a managed secret under the
-- control plane's secrets key (key_id, nonce, ciphertext; the repository's
-- id is the associated data). The pinned generation and its public
-- fingerprint are recorded when the backup that created the repository
-- reports them; the worker refuses a repository that opens to any other.
ALTER TABLE repositories ADD COLUMN format_version BIGINT NOT NULL DEFAULT 1
    CHECK (format_version IN (1, 2));
ALTER TABLE repositories ADD COLUMN encryption TEXT
    CHECK (encryption IN ('aes-256-gcm', 'none'));
ALTER TABLE repositories ADD COLUMN catalog_key_id TEXT;
ALTER TABLE repositories ADD COLUMN catalog_key_nonce BLOB;
ALTER TABLE repositories ADD COLUMN catalog_key_sealed BLOB;
ALTER TABLE repositories ADD COLUMN generation BIGINT;
ALTER TABLE repositories ADD COLUMN generation_fingerprint TEXT;

-- The identity a v2 repository carries in storage, when a catalog rebuild
-- adopted it under another catalog id (a v2 identity is sealed in the
-- repository's keys and cannot be rewritten the way a v1 `config` is).
ALTER TABLE repositories ADD COLUMN storage_id TEXT;
