-- Every change of a run reaches every control-plane replica: a row trigger
-- notifies channel `coffer_runs` inside the changing transaction, so the
-- notification is delivered when (and only if) the transaction commits, and
-- no statement can forget it. The payload is the run id and the replica
-- that made the change (the `coffer.replica` setting of its connections;
-- empty for anyone else, e.g. an operator's psql), so a replica can skip
-- its own changes, which it has announced in-process already.
CREATE FUNCTION coffer_notify_run_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'coffer_runs',
        (CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END)::text || ' '
            || COALESCE(current_setting('coffer.replica', true), ''));
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_notify_change AFTER INSERT OR UPDATE OR DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION coffer_notify_run_change();
