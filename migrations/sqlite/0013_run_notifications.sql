-- Nothing to do: run notifications between replicas (PostgreSQL's 0013) do
-- not exist on SQLite, which serves one control plane. The file keeps the
-- two migration sets numbered alike.
SELECT 1;
