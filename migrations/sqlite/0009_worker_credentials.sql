-- A worker is bound to the worker token that first registered it, and a token
-- to at most one worker: another credential cannot take over a worker's
-- registration (labels, source roots, leases), and one credential cannot
-- speak for two workers. Deleting the token frees the name for a new one.
ALTER TABLE workers ADD COLUMN token_id BLOB REFERENCES api_tokens(id) ON DELETE SET NULL;
CREATE UNIQUE INDEX workers_token ON workers(token_id);
