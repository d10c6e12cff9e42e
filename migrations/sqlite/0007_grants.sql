-- Data-plane grants: beneath which root a user's runs may read (backup
-- source), write (restore destination, in-place restore) or keep a
-- repository, and on which workers (the labels a worker must carry).
CREATE TABLE grants (
    id                   BLOB PRIMARY KEY,
    grantee_id           BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    worker_selector      TEXT NOT NULL,
    root                 TEXT NOT NULL,
    uses                 TEXT NOT NULL,
    restore_ownership    BOOLEAN NOT NULL,
    restore_special_bits BOOLEAN NOT NULL,
    creator_id           BLOB NOT NULL,
    create_time          TEXT NOT NULL
);
CREATE INDEX grants_grantee_idx ON grants (grantee_id, id);

-- Repositories become owned entities with an identity: a UUID the worker
-- writes into the repository's `config`, and the one user whose catalog it
-- holds. `repository` stays the canonical location (the key the other
-- tables join on). Existing rows get an id, and as owner the owner of the
-- oldest run or object that used them; a repository no row names any more
-- keeps a NULL owner until its next backup claims it.
ALTER TABLE repositories ADD COLUMN id BLOB;
ALTER TABLE repositories ADD COLUMN owner_id BLOB REFERENCES users(id) ON DELETE SET NULL;
-- Any 16 random bytes are a valid id for the catalog.
UPDATE repositories SET id = randomblob(16);
UPDATE repositories SET owner_id = COALESCE(
    (SELECT r.owner_id FROM runs r WHERE r.repository = repositories.repository
     ORDER BY r.create_time, r.id LIMIT 1),
    (SELECT o.owner_id FROM objects o WHERE o.repository = repositories.repository
     ORDER BY o.create_time, o.id LIMIT 1));
CREATE UNIQUE INDEX repositories_id_idx ON repositories (id);
