-- kiln schema, migration 1: jobs, their append-only event history, and views for operators.
--
-- This file is a public interface: operators query the database directly with `sqlite3`.
-- Migrations are numbered, applied in order at startup, tracked in `PRAGMA user_version`,
-- and never edited once released; changes come as new files.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC). The views render them as text.

-- One row per submitted job: what to run, where it is in its life, and what came out.
CREATE TABLE jobs (
    -- UUIDv7 as text: ids sort by creation time, so ORDER BY id is submission order.
    id               TEXT PRIMARY KEY NOT NULL,
    runtime          TEXT NOT NULL,                           -- e.g. 'python', 'bash'
    code             TEXT NOT NULL,
    stdin            TEXT NOT NULL DEFAULT '',
    args             TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(args)),   -- JSON array of strings
    files            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(files)),  -- JSON object name -> content
    -- The limits the job runs under, defaults filled in: JSON object with wall_ms, cpu_ms,
    -- memory_mb, processes, output_bytes, file_bytes.
    limits           TEXT NOT NULL CHECK (json_valid(limits)),
    priority         INTEGER NOT NULL DEFAULT 0,              -- higher runs first
    -- The state machine (README "Job states"): queued -> running -> a terminal status.
    status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'error')),
    -- Why a terminal job ended: success, nonzero_exit, signal, wall_time_limit, cpu_time_limit,
    -- memory_limit, output_limit, cancelled, lease_expired, shutdown, runner_error.
    outcome          TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),  -- runs started so far
    max_attempts     INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    -- The claim: which worker holds the job and until when. Set only while running; a lease
    -- not renewed in time lets the rescuer requeue the job (or end it as 'error').
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,                                 -- start of the latest attempt
    finished_at      INTEGER,
    exit_code        INTEGER,
    signal           INTEGER,                                 -- signal number that ended the process
    error            TEXT,                                    -- why, for status 'error'
    stdout           TEXT NOT NULL DEFAULT '',                -- capped at limits.output_bytes
    stderr           TEXT NOT NULL DEFAULT '',
    stdout_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stdout_truncated IN (0, 1)),
    stderr_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stderr_truncated IN (0, 1)),
    wall_ms          INTEGER,
    cpu_ms           INTEGER,
    memory_kb        INTEGER,                                 -- peak resident set size
    -- A client's Idempotency-Key: a retried submit with the same key returns this job.
    idempotency_key  TEXT,
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK ((status IN ('queued', 'running')) = (finished_at IS NULL))
);

-- Claiming takes the highest priority, then the oldest queued job. After the status equality
-- this index matches that ORDER BY exactly, and it holds only queued rows, so a claim reads
-- its first entry instead of sorting the queue (EXPLAIN QUERY PLAN shows no temp b-tree; a
-- test checks it). `status` leads so the planner sees the equality and prefers this index.
CREATE INDEX jobs_claim ON jobs (status, priority DESC, id) WHERE status = 'queued';

-- The rescuer looks for running jobs whose lease ran out.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';

-- Listing jobs by status, oldest first, with cursor pagination on id.
CREATE INDEX jobs_status ON jobs (status, id);

CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The history: one row per status change, written in the same transaction as the change.
-- Append-only (the triggers below refuse UPDATE and DELETE), so it can be trusted as a log.
CREATE TABLE events (
    -- The global cursor: AUTOINCREMENT guarantees ids only grow and are never reused, so
    -- "everything after id N" is a complete, gap-free way to follow the feed.
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT REFERENCES jobs (id),
    at      INTEGER NOT NULL,
    -- job.queued, job.started, job.retrying, job.succeeded, job.failed, job.timed_out,
    -- job.cancelled, job.error
    type    TEXT NOT NULL,
    attempt INTEGER,                                          -- the job's attempt it belongs to
    data    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data))  -- details, JSON object
);

CREATE INDEX events_job ON events (job_id, id);

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed');
END;

-- Every event of every job with readable times, in order: SELECT * FROM job_timeline WHERE job_id = '...';
CREATE VIEW job_timeline AS
SELECT e.job_id,
       e.id                                                     AS event_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at,
       e.type,
       e.attempt,
       e.data
FROM events e
ORDER BY e.job_id, e.id;

-- How many jobs are in each status right now.
CREATE VIEW queue_depth AS
SELECT status, count(*) AS jobs
FROM jobs
GROUP BY status;

-- One line per job without the bulky columns, times readable, durations in milliseconds.
CREATE VIEW job_summary AS
SELECT id,
       runtime,
       status,
       outcome,
       attempt,
       exit_code,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch')  AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', started_at / 1000.0, 'unixepoch')  AS started,
       strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch') AS finished,
       started_at - created_at                                          AS queued_ms,
       wall_ms,
       cpu_ms,
       memory_kb,
       error
FROM jobs;
