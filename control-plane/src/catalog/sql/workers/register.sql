INSERT INTO workers (id, name, labels, slots, source_roots, version, connected, last_seen_time, create_time, token_id, class)
VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $7, $8, $9)
ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, slots = excluded.slots, class = excluded.class,
source_roots = excluded.source_roots, version = excluded.version, connected = TRUE,
last_seen_time = excluded.last_seen_time, token_id = excluded.token_id
WHERE workers.token_id IS NULL OR workers.token_id = excluded.token_id
RETURNING id
