-- kiln schema, migration 2: test suites (batches). One program, many cases; each case is a job
-- carrying its batch id, judged against its expected output when it ends.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC), as in migration 1.

-- One row per submitted suite: what its cases share, and how far along it is.
CREATE TABLE batches (
    -- UUIDv7 as text, like job ids: ORDER BY id is submission order.
    id              TEXT PRIMARY KEY NOT NULL,
    runtime         TEXT NOT NULL,
    -- The code and files every case runs, stored once here: a case's own jobs.code is '' and its
    -- jobs.files '{}'.
    code            TEXT NOT NULL,
    files           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(files)),  -- JSON object name -> content
    -- The suite's limits as submitted (JSON, absent ones null); each case's limits, with its own
    -- overrides and the server's defaults filled in, are in its jobs.limits.
    limits          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(limits)),
    -- How a case's stdout is compared with its expected output: 'exact' (byte for byte), 'trim'
    -- (trailing white space of each line and trailing empty lines ignored) or 'tokens' (the
    -- white-space separated words must match).
    compare         TEXT NOT NULL DEFAULT 'trim' CHECK (compare IN ('exact', 'trim', 'tokens')),
    cases           INTEGER NOT NULL CHECK (cases >= 1),
    -- Cases in a terminal status, and those of them whose verdict is 'passed'. Kept in the same
    -- transaction as each case's end, so they always agree with the jobs table.
    done            INTEGER NOT NULL DEFAULT 0 CHECK (done BETWEEN 0 AND cases),
    passed          INTEGER NOT NULL DEFAULT 0 CHECK (passed BETWEEN 0 AND done),
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,                                  -- first claim of any of its cases
    finished_at     INTEGER,                                  -- end of its last case
    -- A client's Idempotency-Key: a retried submit with the same key returns this batch.
    idempotency_key TEXT,
    CHECK ((done = cases) = (finished_at IS NOT NULL))
);

CREATE UNIQUE INDEX batches_idempotency_key ON batches (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A case is a job with a batch id, its place in the suite and its name.
ALTER TABLE jobs ADD COLUMN batch_id TEXT REFERENCES batches (id);
ALTER TABLE jobs ADD COLUMN case_index INTEGER                -- from 0, in the order submitted
    CHECK ((case_index IS NULL) = (batch_id IS NULL));
ALTER TABLE jobs ADD COLUMN case_name TEXT
    CHECK ((case_name IS NULL) = (batch_id IS NULL));
-- What the case's stdout must be (compared per batches.compare); NULL: exit 0 is enough.
ALTER TABLE jobs ADD COLUMN expected_output TEXT;
-- The case's verdict, written by the same statement that ends it, so a case has a verdict exactly
-- when it is terminal: passed, wrong_answer, compile_error, runtime_error (non-zero exit or a
-- signal), timed_out, memory_limit, output_limit, cancelled, error (kiln could not run it).
ALTER TABLE jobs ADD COLUMN verdict TEXT
    CHECK (verdict IN ('passed', 'wrong_answer', 'compile_error', 'runtime_error', 'timed_out',
                       'memory_limit', 'output_limit', 'cancelled', 'error'))
    CHECK ((verdict IS NOT NULL) = (batch_id IS NOT NULL AND status NOT IN ('queued', 'running')));
-- Why, in a line: for wrong_answer the first difference ("line 3, column 5: expected "42", got
-- "41""), otherwise the exit code, signal, limit or error.
ALTER TABLE jobs ADD COLUMN verdict_detail TEXT;

-- A batch's cases in suite order (listing, paging by case_index, totals).
CREATE UNIQUE INDEX jobs_batch_case ON jobs (batch_id, case_index) WHERE batch_id IS NOT NULL;

-- Events of a batch: batch.queued and batch.completed (job_id NULL), and every event of its
-- cases (job_id set), so one query follows a whole suite.
ALTER TABLE events ADD COLUMN batch_id TEXT REFERENCES batches (id)
    CHECK (job_id IS NOT NULL OR batch_id IS NOT NULL);

CREATE INDEX events_batch ON events (batch_id, id) WHERE batch_id IS NOT NULL;

-- One line per batch, times readable: SELECT * FROM batch_summary ORDER BY id DESC LIMIT 10;
CREATE VIEW batch_summary AS
SELECT id,
       runtime,
       compare,
       cases,
       done,
       passed,
       done - passed                                                     AS failed,
       done = cases                                                      AS complete,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch')  AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', started_at / 1000.0, 'unixepoch')  AS started,
       strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch') AS finished,
       finished_at - created_at                                          AS total_ms
FROM batches;

-- Every case of every batch with its verdict: SELECT * FROM case_results WHERE batch_id = '...';
CREATE VIEW case_results AS
SELECT batch_id,
       case_index,
       case_name,
       id AS job_id,
       status,
       outcome,
       verdict,
       verdict_detail,
       exit_code,
       wall_ms
FROM jobs
WHERE batch_id IS NOT NULL
ORDER BY batch_id, case_index;
