-- Runs, objects and commit counters name their repository by its id, not by
-- how its location is spelled: garbage collection, retention, the in-flight
-- protection and the parents of incrementals all join on the identity, and
-- the location is only resolved to it, once, on `repositories`.

-- Locations that rows name but `repositories` does not know (objects from
-- before repositories were recorded) become repositories, so that every
-- object keeps its data. As in 0007, the owner is the owner of the oldest
-- run or object there. The chunk key is a placeholder: such a repository
-- already has a `config` in storage, which is authoritative over it.
INSERT INTO repositories (repository, id, owner_id, chunk_key, create_time)
SELECT named.location, randomblob(16), NULL, randomblob(32),
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM (SELECT repository AS location FROM objects
      UNION SELECT repository FROM runs WHERE repository IS NOT NULL
      UNION SELECT repository FROM repository_commits) named
WHERE NOT EXISTS (SELECT 1 FROM repositories r WHERE r.repository = named.location);
UPDATE repositories SET owner_id = COALESCE(
    (SELECT r.owner_id FROM runs r WHERE r.repository = repositories.repository
     ORDER BY r.create_time, r.id LIMIT 1),
    (SELECT o.owner_id FROM objects o WHERE o.repository = repositories.repository
     ORDER BY o.create_time, o.id LIMIT 1))
WHERE owner_id IS NULL;

-- Runs: NULL for runs recorded before runs named their repository, and for
-- a run queued into a repository the catalog does not know yet (its lease
-- records the id).
ALTER TABLE runs ADD COLUMN repository_id BLOB REFERENCES repositories(id);
UPDATE runs SET repository_id =
    (SELECT r.id FROM repositories r WHERE r.repository = runs.repository);
DROP INDEX runs_snapshots_idx;
ALTER TABLE runs DROP COLUMN repository;
CREATE INDEX runs_snapshots_idx ON runs (repository_id, job_id, finish_time)
    WHERE kind = 'backup' AND state = 'succeeded';

-- Objects, keyed by (repository id, job, path): rebuilt, since SQLite drops
-- no column that a constraint names. Their versions are rebuilt with them:
-- the migration runs inside a transaction, where foreign keys cannot be
-- switched off, so dropping the old `objects` would cascade to every
-- version that still referred to it. The new versions refer to the new
-- objects, and renaming that table carries the reference along.
CREATE TABLE objects_by_id (
    id            BLOB PRIMARY KEY,
    owner_id      BLOB NOT NULL REFERENCES users(id),
    bucket_id     BLOB REFERENCES buckets(id) ON DELETE CASCADE,
    repository_id BLOB NOT NULL REFERENCES repositories(id),
    job_id        BLOB REFERENCES jobs(id) ON DELETE SET NULL,
    path          BLOB NOT NULL,
    path_text     TEXT NOT NULL,
    create_time   TEXT NOT NULL,
    UNIQUE (repository_id, job_id, path)
);
INSERT INTO objects_by_id (id, owner_id, bucket_id, repository_id, job_id, path, path_text,
                           create_time)
SELECT o.id, o.owner_id, o.bucket_id, r.id, o.job_id, o.path, o.path_text, o.create_time
FROM objects o JOIN repositories r ON r.repository = o.repository;
CREATE TABLE object_versions_by_id (
    id             BLOB PRIMARY KEY,
    object_id      BLOB NOT NULL REFERENCES objects_by_id(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    size_bytes     BIGINT NOT NULL DEFAULT 0,
    mode           BIGINT NOT NULL DEFAULT 0,
    uid            BIGINT NOT NULL DEFAULT 0,
    gid            BIGINT NOT NULL DEFAULT 0,
    mtime          TEXT,
    content_hash   TEXT NOT NULL DEFAULT '',
    symlink_target BLOB,
    storage_key    TEXT NOT NULL DEFAULT '',
    first_run_id   BLOB NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    last_run_id    BLOB REFERENCES runs(id) ON DELETE SET NULL,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    create_time    TEXT NOT NULL
);
INSERT INTO object_versions_by_id
SELECT id, object_id, kind, size_bytes, mode, uid, gid, mtime, content_hash, symlink_target,
       storage_key, first_run_id, last_run_id, deleted, create_time
FROM object_versions;
DROP TABLE object_versions;
DROP TABLE objects;
ALTER TABLE objects_by_id RENAME TO objects;
ALTER TABLE object_versions_by_id RENAME TO object_versions;
CREATE INDEX objects_bucket_path ON objects(bucket_id, path_text);
CREATE INDEX object_versions_object ON object_versions(object_id, id);
CREATE INDEX object_versions_hash ON object_versions(content_hash);
CREATE INDEX object_versions_first_run ON object_versions(first_run_id);
CREATE INDEX object_versions_last_run ON object_versions(last_run_id);

-- Commit counters, keyed by (repository id, job): rebuilt likewise.
CREATE TABLE repository_commits_by_id (
    repository_id BLOB NOT NULL REFERENCES repositories(id),
    job_key       TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, job_key)
);
INSERT INTO repository_commits_by_id (repository_id, job_key, generation)
SELECT r.id, c.job_key, c.generation
FROM repository_commits c JOIN repositories r ON r.repository = c.repository;
DROP TABLE repository_commits;
ALTER TABLE repository_commits_by_id RENAME TO repository_commits;

