-- kiln schema for PostgreSQL, migration 4: every node hears of every commit that writes events.
-- A node's workers wait for new work, its live streams and long-polls for new events; on one
-- SQLite file the writer tells them, but past one machine the commit may be another node's. So
-- each statement that inserts events sends a NOTIFY on the channel `kiln_events`, inside its
-- transaction: PostgreSQL delivers it only once that transaction commits (never for one rolled
-- back), and folds identical notifications of one transaction into one, so a transaction
-- writing many events wakes each listener once. The notification carries nothing: a node that
-- hears it reads the events after the last id it has seen (ids commit in order, see
-- events_in_commit_order), so nothing is lost to a dropped notification or a full queue, and
-- a node that cannot listen (behind PgBouncer's transaction pooling; `kiln serve --poll-only`)
-- reads on a timer instead.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
