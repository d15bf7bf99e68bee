-- kiln schema, migration 6: retention. `kiln prune --finished-before AGE` removes old finished jobs
-- and batches with their events, and is the one way events may ever be deleted. Every other
-- DELETE on events still fails, and UPDATE always does.
--
-- How the exception works: a prune transaction first inserts a row into prune_in_progress, then
-- deletes, then removes that row again before it commits, so the table is empty whenever nobody
-- prunes. The delete trigger refuses unless a row is there. An operator who inserts one by hand
-- can delete events too: that is a deliberate act, visible in this file, not an accident.
--
-- Each prune also leaves a line in `prunes`, so the history says when it lost what.

-- One row per `kiln prune` run: its cut-off and what it removed (and where it archived it).
CREATE TABLE prunes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at      INTEGER NOT NULL,
    -- Jobs and batches that finished before this time were removed.
    finished_before INTEGER NOT NULL,
    -- The SQLite file the removed rows were copied to first; NULL if they were not kept.
    archive         TEXT,
    -- Counted as each transaction commits, so a prune that was stopped says how far it got.
    jobs            INTEGER NOT NULL DEFAULT 0,
    batches         INTEGER NOT NULL DEFAULT 0,
    events          INTEGER NOT NULL DEFAULT 0,
    finished_at     INTEGER                                   -- NULL while it runs, or if stopped
);

-- The marker that lets a prune transaction delete events: empty outside of one.
CREATE TABLE prune_in_progress (
    prune_id INTEGER NOT NULL REFERENCES prunes (id)
);

DROP TRIGGER events_are_append_only_delete;

CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM prune_in_progress)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed (kiln prune removes old history)');
END;
