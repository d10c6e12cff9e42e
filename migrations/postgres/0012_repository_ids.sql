-- Runs, objects and commit counters name their repository by its id, not by
-- how its location is spelled: garbage collection, retention, the in-flight
-- protection and the parents of incrementals all join on the identity, and
-- the location is only resolved to it, once, on `repositories`.

-- Locations that rows name but `repositories` does not know (objects from
-- before repositories were recorded) become repositories, so that every
-- object keeps its data. As in 0007, the owner is the owner of the oldest
-- run or object there. The chunk key is a placeholder: such a repository
-- already has a `config` in storage, which is authoritative over it; it is
-- still drawn from the CSPRNG behind gen_random_uuid, not from random().
INSERT INTO repositories (repository, id, owner_id, chunk_key, create_time)
SELECT named.location, gen_random_uuid(), NULL,
       decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), now()
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
ALTER TABLE runs ADD COLUMN repository_id UUID REFERENCES repositories(id);
UPDATE runs SET repository_id =
    (SELECT r.id FROM repositories r WHERE r.repository = runs.repository);
DROP INDEX runs_snapshots_idx;
ALTER TABLE runs DROP COLUMN repository;
CREATE INDEX runs_snapshots_idx ON runs (repository_id, job_id, finish_time)
    WHERE kind = 'backup' AND state = 'succeeded';

-- Objects, keyed by (repository id, job, path).
ALTER TABLE objects ADD COLUMN repository_id UUID REFERENCES repositories(id);
UPDATE objects SET repository_id =
    (SELECT r.id FROM repositories r WHERE r.repository = objects.repository);
ALTER TABLE objects ALTER COLUMN repository_id SET NOT NULL;
ALTER TABLE objects DROP COLUMN repository;
ALTER TABLE objects ADD UNIQUE (repository_id, job_id, path);

-- Commit counters, keyed by (repository id, job).
ALTER TABLE repository_commits ADD COLUMN repository_id UUID REFERENCES repositories(id);
UPDATE repository_commits SET repository_id =
    (SELECT r.id FROM repositories r WHERE r.repository = repository_commits.repository);
ALTER TABLE repository_commits ALTER COLUMN repository_id SET NOT NULL;
ALTER TABLE repository_commits DROP COLUMN repository;
ALTER TABLE repository_commits ADD PRIMARY KEY (repository_id, job_key);
