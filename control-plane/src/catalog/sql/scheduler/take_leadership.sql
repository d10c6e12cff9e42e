INSERT INTO scheduler_leader (id, holder, term, acquire_time, expire_time)
VALUES (1, $1, 1, $2, $3)
ON CONFLICT (id) DO UPDATE SET
term = CASE WHEN scheduler_leader.holder = excluded.holder
THEN scheduler_leader.term ELSE scheduler_leader.term + 1 END,
acquire_time = CASE WHEN scheduler_leader.holder = excluded.holder
THEN scheduler_leader.acquire_time ELSE excluded.acquire_time END,
holder = excluded.holder,
expire_time = excluded.expire_time
WHERE scheduler_leader.holder = excluded.holder
OR scheduler_leader.expire_time <= excluded.acquire_time
RETURNING term, expire_time
