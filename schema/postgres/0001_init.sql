-- kiln schema for PostgreSQL, migration 1: the state SQLite's migrations 0001 to 0011 reach
-- (schema/0001_init.sql ... schema/0011_interactive.sql), in one file: jobs and their
-- append-only events, suites (batches) and their cases, the webhook outbox, tokens, tenants and
-- the admission counters, retention (prunes), the files a job keeps, and views for operators.
--
-- This file is a public interface: operators query the database directly with `psql`, and
-- `\d+ jobs` shows the comment on every column. Migrations are numbered, applied in order at
-- startup, each in its own transaction with its row in `kiln_migrations`, and never edited once
-- released; changes come as new files. To do: SQLite's schema/0012_stats.sql (the figures behind
-- GET /v1/stats), which landed on main beside this work.
--
-- Where PostgreSQL's types differ from SQLite's (what docs/deployment.md tells operators):
--   ids        uuid, not text: 16 bytes instead of 36, checked on the way in, and a uuid sorts
--              by its bytes, which for UUIDv7 is creation order, as SQLite's lowercase text does.
--   times      bigint milliseconds since the Unix epoch (UTC), as SQLite stores them, so that
--              both backends hold and return the same numbers; `kiln_time(ms)` renders one.
--   bytes      bytea for code, stdin, expected output, stdout, stderr and kept files: the exact
--              bytes, always (SQLite keeps UTF-8 as TEXT and the rest as BLOB in one column;
--              PostgreSQL text can hold neither NUL nor invalid UTF-8). `kiln_is_utf8(bytes)`
--              says which of them the API shows as text.
--   JSON       json, not jsonb: it keeps the text kiln wrote byte for byte, which the webhook
--              payload must (every retry sends the same bytes) and the idempotency comparison
--              relies on, and unlike jsonb it takes "\u0000", which a file's UTF-8 text may hold.
--   flags      boolean, where SQLite has INTEGER 0 or 1.

-- Which migrations have been applied: the version of the database's schema is the largest.
CREATE TABLE kiln_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at bigint NOT NULL
);
COMMENT ON TABLE kiln_migrations IS 'One row per migration applied, in the transaction that applied it.';
COMMENT ON COLUMN kiln_migrations.version IS 'The number of the file in schema/postgres/.';
COMMENT ON COLUMN kiln_migrations.name IS 'The file''s name, e.g. 0001_init.sql.';
COMMENT ON COLUMN kiln_migrations.applied_at IS 'When it was applied, ms since the Unix epoch.';

-- An instant as operators read it: ISO 8601 in UTC with milliseconds, as the SQLite views show.
CREATE FUNCTION kiln_time(ms bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN to_char(to_timestamp(ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');

-- Whether bytes are valid UTF-8, which is when the API shows them as text rather than base64.
-- PostgreSQL's text cannot hold NUL, so the runs between NULs are checked one by one: NUL never
-- occurs inside a multi-byte sequence, so splitting there changes nothing.
CREATE FUNCTION kiln_is_utf8(bytes bytea) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    rest bytea := bytes;
    nul  integer;
BEGIN
    LOOP
        nul := position('\x00'::bytea IN rest);
        PERFORM convert_from(CASE WHEN nul = 0 THEN rest ELSE substring(rest FOR nul - 1) END,
                             'UTF8');
        EXIT WHEN nul = 0;
        rest := substring(rest FROM nul + 1);
    END LOOP;
    RETURN true;
EXCEPTION WHEN character_not_in_repertoire THEN
    RETURN false;
END
$$;

-- One row per submitted suite: what its cases share, and how far along it is.
CREATE TABLE batches (
    id                 uuid PRIMARY KEY,
    runtime            text NOT NULL,
    code               bytea NOT NULL,
    files              json NOT NULL DEFAULT '{}' CHECK (json_typeof(files) = 'object'),
    limits             json NOT NULL DEFAULT '{}' CHECK (json_typeof(limits) = 'object'),
    compare            text NOT NULL DEFAULT 'trim' CHECK (compare IN ('exact', 'trim', 'tokens')),
    cases              integer NOT NULL CHECK (cases >= 1),
    done               integer NOT NULL DEFAULT 0 CHECK (done BETWEEN 0 AND cases),
    passed             integer NOT NULL DEFAULT 0 CHECK (passed BETWEEN 0 AND done),
    pass_at_k          json NOT NULL DEFAULT '[]' CHECK (json_typeof(pass_at_k) = 'array'),
    created_at         bigint NOT NULL,
    started_at         bigint,
    finished_at        bigint,
    idempotency_key    text,
    tenant             text,
    callback_url       text,
    callback_each_case boolean NOT NULL DEFAULT false
                           CHECK (NOT callback_each_case OR callback_url IS NOT NULL),
    callback_shape     text NOT NULL DEFAULT 'kiln' CHECK (callback_shape IN ('kiln', 'judge0')),
    CHECK ((done = cases) = (finished_at IS NOT NULL))
);
COMMENT ON TABLE batches IS 'One row per submitted test suite; each case is a row of jobs with its batch_id.';
COMMENT ON COLUMN batches.id IS 'UUIDv7, like job ids: ORDER BY id is submission order.';
COMMENT ON COLUMN batches.runtime IS 'The runtime the cases run unless a case names its own; '''' when every case gives its own.';
COMMENT ON COLUMN batches.code IS 'The code every case runs unless it has its own (a case''s jobs.code is then empty); empty when every case gives its own.';
COMMENT ON COLUMN batches.files IS 'JSON object name -> contents (a string for UTF-8 text, else {"base64": ...}) shared by every case; a case''s own file of the same name replaces it.';
COMMENT ON COLUMN batches.limits IS 'The suite''s limits as submitted (JSON, absent ones null); each case''s effective limits are in its jobs.limits.';
COMMENT ON COLUMN batches.compare IS 'How a case''s stdout is compared with its expected output: exact (byte for byte), trim (trailing white space of each line and trailing empty lines ignored) or tokens (the white-space separated words must match).';
COMMENT ON COLUMN batches.cases IS 'How many cases the suite has.';
COMMENT ON COLUMN batches.done IS 'Cases in a terminal status, kept in the transaction of each case''s end, so it always agrees with jobs.';
COMMENT ON COLUMN batches.passed IS 'Cases of those done whose verdict is passed.';
COMMENT ON COLUMN batches.pass_at_k IS 'The k of each pass@k asked for, a JSON array of integers, e.g. [1, 10, 100].';
COMMENT ON COLUMN batches.created_at IS 'When it was submitted, ms since the Unix epoch.';
COMMENT ON COLUMN batches.started_at IS 'First claim of any of its cases, ms since the Unix epoch.';
COMMENT ON COLUMN batches.finished_at IS 'End of its last case, ms since the Unix epoch; set exactly when done = cases.';
COMMENT ON COLUMN batches.idempotency_key IS 'A client''s Idempotency-Key: a retried submit of the same tenant with the same key returns this batch.';
COMMENT ON COLUMN batches.tenant IS 'The tenant of the token that submitted it; NULL if submitted with no token (open server).';
COMMENT ON COLUMN batches.callback_url IS 'Where the batch''s completion is reported (event batch.completed): an http(s) URL checked against the host policy at submit; NULL for none.';
COMMENT ON COLUMN batches.callback_each_case IS 'True if each case''s end is reported to callback_url too; each case then carries the URL in its own jobs.callback_url.';
COMMENT ON COLUMN batches.callback_shape IS 'kiln (a signed POST) or judge0 (Judge0''s PUT); a judge0-shaped suite reports each case, never itself.';

CREATE UNIQUE INDEX batches_idempotency_key ON batches ((coalesce(tenant, '')), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One row per submitted job: what to run, where it is in its life, and what came out.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    runtime          text NOT NULL,
    code             bytea NOT NULL,
    stdin            bytea NOT NULL DEFAULT '',
    args             json NOT NULL DEFAULT '[]' CHECK (json_typeof(args) = 'array'),
    files            json NOT NULL DEFAULT '{}' CHECK (json_typeof(files) = 'object'),
    limits           json NOT NULL CHECK (json_typeof(limits) = 'object'),
    outputs          json NOT NULL DEFAULT '[]' CHECK (json_typeof(outputs) = 'array'),
    priority         integer NOT NULL DEFAULT 0,
    -- The state machine (docs/jobs.md): queued -> running -> a terminal status, with each
    -- status's columns tied to it below and the transitions held by jobs_status_transitions.
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'error')),
    outcome          text,
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    lease_owner      text,
    lease_expires_at bigint,
    created_at       bigint NOT NULL,
    started_at       bigint,
    finished_at      bigint,
    exit_code        integer,
    signal           integer,
    error            text,
    stdout           bytea NOT NULL DEFAULT '',
    stderr           bytea NOT NULL DEFAULT '',
    stdout_truncated boolean NOT NULL DEFAULT false,
    stderr_truncated boolean NOT NULL DEFAULT false,
    wall_ms          bigint,
    cpu_ms           bigint,
    memory_kb        bigint,
    idempotency_key  text,
    tenant           text,
    callback_url     text,
    callback_shape   text NOT NULL DEFAULT 'kiln' CHECK (callback_shape IN ('kiln', 'judge0')),
    interactive      boolean NOT NULL DEFAULT false,
    batch_id         uuid REFERENCES batches (id),
    case_index       integer CHECK ((case_index IS NULL) = (batch_id IS NULL)),
    case_name        text CHECK ((case_name IS NULL) = (batch_id IS NULL)),
    case_group       text CHECK (case_group IS NULL OR batch_id IS NOT NULL),
    expected_output  bytea,
    verdict          text
        CHECK (verdict IN ('passed', 'wrong_answer', 'compile_error', 'runtime_error', 'timed_out',
                           'memory_limit', 'output_limit', 'cancelled', 'error')),
    verdict_detail   text,
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK ((status IN ('queued', 'running')) = (finished_at IS NULL)),
    -- A job has an outcome exactly when it has ended, and the outcome says which way it ended
    -- (Outcome::status in src/job/mod.rs).
    CHECK ((status IN ('queued', 'running')) = (outcome IS NULL)),
    CHECK (outcome IS NULL OR (status, outcome) IN (
        ('succeeded', 'success'),
        ('failed', 'nonzero_exit'), ('failed', 'signal'), ('failed', 'memory_limit'),
        ('failed', 'output_limit'), ('failed', 'compile_error'), ('failed', 'invalid_request'),
        ('timed_out', 'wall_time_limit'), ('timed_out', 'cpu_time_limit'),
        ('cancelled', 'cancelled'),
        ('error', 'lease_expired'), ('error', 'shutdown'), ('error', 'runner_error'))),
    CHECK (attempt <= max_attempts),
    CHECK (status <> 'running' OR attempt >= 1),
    CHECK ((verdict IS NOT NULL) = (batch_id IS NOT NULL AND status NOT IN ('queued', 'running')))
);
COMMENT ON TABLE jobs IS 'One row per submitted job (or case of a batch): what to run, where it is in its life, and what came out.';
COMMENT ON COLUMN jobs.id IS 'UUIDv7: ids sort by creation time, so ORDER BY id is submission order.';
COMMENT ON COLUMN jobs.runtime IS 'The runtime it runs, e.g. python, bash (for a case, its own or the suite''s).';
COMMENT ON COLUMN jobs.code IS 'The exact bytes of its code; for a case running the suite''s code, empty (see batches.code).';
COMMENT ON COLUMN jobs.stdin IS 'The exact bytes given on its stdin.';
COMMENT ON COLUMN jobs.args IS 'JSON array of strings, its command-line arguments.';
COMMENT ON COLUMN jobs.files IS 'JSON object name -> contents (a string for UTF-8 text, else {"base64": ...}) written into /work before it runs; for a case, added to batches.files.';
COMMENT ON COLUMN jobs.limits IS 'The limits it runs under, defaults filled in: JSON object with wall_ms, cpu_ms, memory_mb, processes, output_bytes, file_bytes and optionally cpu_percent.';
COMMENT ON COLUMN jobs.outputs IS 'The paths or globs under /work whose files are kept after the run (see job_files), a JSON array of strings.';
COMMENT ON COLUMN jobs.priority IS 'Higher runs first; among equals, the oldest first.';
COMMENT ON COLUMN jobs.status IS 'queued, running, or how it ended: succeeded, failed, timed_out, cancelled, error.';
COMMENT ON COLUMN jobs.outcome IS 'Why it ended, set exactly when it has: success, nonzero_exit, signal, wall_time_limit, cpu_time_limit, memory_limit, output_limit, compile_error, invalid_request, cancelled, lease_expired, shutdown, runner_error.';
COMMENT ON COLUMN jobs.attempt IS 'Runs started so far.';
COMMENT ON COLUMN jobs.max_attempts IS 'Runs it may start: a run whose worker stops renewing its lease is retried while attempts remain.';
COMMENT ON COLUMN jobs.lease_owner IS 'The worker holding the claim; set only while running.';
COMMENT ON COLUMN jobs.lease_expires_at IS 'Until when the claim holds, ms since the Unix epoch; a lease not renewed in time lets the rescuer requeue the job (or end it as error).';
COMMENT ON COLUMN jobs.created_at IS 'When it was submitted, ms since the Unix epoch.';
COMMENT ON COLUMN jobs.started_at IS 'Start of its latest attempt, ms since the Unix epoch.';
COMMENT ON COLUMN jobs.finished_at IS 'When it ended, ms since the Unix epoch; set exactly when the status is terminal.';
COMMENT ON COLUMN jobs.exit_code IS 'The exit status of its process, if it exited.';
COMMENT ON COLUMN jobs.signal IS 'The number of the signal that ended its process, if one did.';
COMMENT ON COLUMN jobs.error IS 'Why, for status error (or a run kiln could not set up).';
COMMENT ON COLUMN jobs.stdout IS 'The exact bytes it wrote to stdout, capped at limits.output_bytes; kiln_is_utf8(stdout) says whether the API shows it as text.';
COMMENT ON COLUMN jobs.stderr IS 'The exact bytes it wrote to stderr, capped at limits.output_bytes.';
COMMENT ON COLUMN jobs.stdout_truncated IS 'True if it wrote more to stdout than was kept.';
COMMENT ON COLUMN jobs.stderr_truncated IS 'True if it wrote more to stderr than was kept.';
COMMENT ON COLUMN jobs.wall_ms IS 'Wall-clock time of its run, in ms.';
COMMENT ON COLUMN jobs.cpu_ms IS 'CPU time of its run, in ms.';
COMMENT ON COLUMN jobs.memory_kb IS 'Peak resident set size of its run, in KiB.';
COMMENT ON COLUMN jobs.idempotency_key IS 'A client''s Idempotency-Key: a retried submit of the same tenant with the same key returns this job.';
COMMENT ON COLUMN jobs.tenant IS 'The tenant of the token that submitted it; NULL if submitted with no token (open server).';
COMMENT ON COLUMN jobs.callback_url IS 'Where its end is reported: an http(s) URL checked against the host policy at submit; NULL for none.';
COMMENT ON COLUMN jobs.callback_shape IS 'kiln (a signed POST of the job) or judge0 (the PUT of the submission a Judge0 client expects).';
COMMENT ON COLUMN jobs.interactive IS 'True if its stdin stays open after stdin, for what is written to it while it runs; those bytes are not stored.';
COMMENT ON COLUMN jobs.batch_id IS 'For a case of a suite, its batch; NULL for a job of its own.';
COMMENT ON COLUMN jobs.case_index IS 'For a case, its place in the suite, from 0 in the order submitted.';
COMMENT ON COLUMN jobs.case_name IS 'For a case, its name.';
COMMENT ON COLUMN jobs.case_group IS 'For a case, the group (problem) it is a sample of; NULL outside any group.';
COMMENT ON COLUMN jobs.expected_output IS 'For a case, what its stdout must be (compared per batches.compare); NULL: exit 0 is enough.';
COMMENT ON COLUMN jobs.verdict IS 'For a case, set by the statement that ends it: passed, wrong_answer, compile_error, runtime_error, timed_out, memory_limit, output_limit, cancelled, error.';
COMMENT ON COLUMN jobs.verdict_detail IS 'Why, in a line: for wrong_answer the first difference, otherwise the exit code, signal, limit or error.';

-- Claiming takes the highest priority, then the oldest queued job: this index holds only queued
-- rows in exactly that order, so a claim reads its first entry not locked by another claimer.
CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE status = 'queued';
-- The rescuer looks for running jobs whose lease ran out.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- Listing jobs by status, oldest first, with cursor pagination on id.
CREATE INDEX jobs_status ON jobs (status, id);
-- An Idempotency-Key is the client's, so it is unique per tenant.
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs ((coalesce(tenant, '')), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A batch's cases in suite order, and its groups in name order.
CREATE UNIQUE INDEX jobs_batch_case ON jobs (batch_id, case_index) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_batch_group ON jobs (batch_id, case_group) WHERE case_group IS NOT NULL;
CREATE INDEX jobs_tenant ON jobs (tenant, id) WHERE tenant IS NOT NULL;

-- The transitions of the state machine, which a CHECK cannot see (it sees one row version):
--   queued  -> running (claim) or cancelled
--   running -> queued (retried), or any terminal status
-- and a terminal status never changes again.
CREATE FUNCTION jobs_status_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (old.status, new.status) IN (('queued', 'running'), ('queued', 'cancelled'),
                                    ('running', 'queued'))
       OR (old.status = 'running' AND new.status NOT IN ('queued', 'running')) THEN
        RETURN new;
    END IF;
    RAISE EXCEPTION 'job %: % -> % is not a transition of the job state machine',
        old.id, old.status, new.status
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER jobs_status_transitions BEFORE UPDATE OF status ON jobs
    FOR EACH ROW WHEN (old.status IS DISTINCT FROM new.status)
    EXECUTE FUNCTION jobs_status_transition();

-- Retention: `kiln prune` runs, and the marker that lets one delete events.
CREATE TABLE prunes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      bigint NOT NULL,
    finished_before bigint NOT NULL,
    archive         text,
    jobs            bigint NOT NULL DEFAULT 0,
    batches         bigint NOT NULL DEFAULT 0,
    events          bigint NOT NULL DEFAULT 0,
    finished_at     bigint
);
COMMENT ON TABLE prunes IS 'One row per kiln prune run: its cut-off and what it removed, so the history says when it lost what.';
COMMENT ON COLUMN prunes.id IS 'Ascending run number.';
COMMENT ON COLUMN prunes.started_at IS 'When the run started, ms since the Unix epoch.';
COMMENT ON COLUMN prunes.finished_before IS 'Jobs and batches that finished before this time (ms since the Unix epoch) were removed.';
COMMENT ON COLUMN prunes.archive IS 'Where the removed rows were copied first; NULL if they were not kept.';
COMMENT ON COLUMN prunes.jobs IS 'Jobs removed, counted as each transaction commits, so a stopped run says how far it got.';
COMMENT ON COLUMN prunes.batches IS 'Batches removed, counted likewise.';
COMMENT ON COLUMN prunes.events IS 'Events removed, counted likewise.';
COMMENT ON COLUMN prunes.finished_at IS 'When the run ended, ms since the Unix epoch; NULL while it runs, or if it was stopped.';

-- A prune transaction inserts a row here, deletes, and removes the row again before it commits,
-- so the table is empty whenever nobody prunes; the events delete trigger refuses unless a row
-- is there. An operator who inserts one by hand can delete events too: a deliberate act, visible
-- in this file, not an accident.
CREATE TABLE prune_in_progress (
    prune_id bigint NOT NULL REFERENCES prunes (id)
);
COMMENT ON TABLE prune_in_progress IS 'Empty except inside a prune transaction: while it holds a row, events may be deleted.';
COMMENT ON COLUMN prune_in_progress.prune_id IS 'The run doing the deleting.';

-- The history: one row per step of a job or batch, written in the same transaction as the step.
-- Append-only: the triggers below refuse UPDATE, TRUNCATE and every DELETE but prune's.
CREATE TABLE events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   uuid REFERENCES jobs (id),
    batch_id uuid REFERENCES batches (id),
    at       bigint NOT NULL,
    type     text NOT NULL,
    attempt  integer,
    data     json NOT NULL DEFAULT '{}' CHECK (json_typeof(data) = 'object'),
    tenant   text,
    CHECK (job_id IS NOT NULL OR batch_id IS NOT NULL)
);
COMMENT ON TABLE events IS 'The append-only history: every status change of every job and batch, and every webhook attempt, in the transaction of the change.';
COMMENT ON COLUMN events.id IS 'The global cursor: only grows, never reused, and (see events_in_commit_order) committed in id order, so "everything after id N" misses nothing.';
COMMENT ON COLUMN events.job_id IS 'The job it is about; NULL for a batch''s own events (batch.queued, batch.completed, its webhook attempts).';
COMMENT ON COLUMN events.batch_id IS 'The batch: set on a batch''s own events and on every event of its cases, so one query follows a whole suite.';
COMMENT ON COLUMN events.at IS 'When, ms since the Unix epoch.';
COMMENT ON COLUMN events.type IS 'job.queued, job.started, job.retrying, job.progress, job.succeeded, job.failed, job.timed_out, job.cancelled, job.error, webhook.delivered, webhook.failed, batch.queued, batch.completed.';
COMMENT ON COLUMN events.attempt IS 'The job''s attempt it belongs to; NULL for events outside a run (queued, a cancel of a queued job, webhooks, batches).';
COMMENT ON COLUMN events.data IS 'Details, a JSON object: e.g. the worker of job.started, the outcome and usage of a terminal event.';
COMMENT ON COLUMN events.tenant IS 'The tenant of its job or batch, so a tenant''s feed is one indexed query; NULL on an open server.';

CREATE INDEX events_job ON events (job_id, id);
CREATE INDEX events_batch ON events (batch_id, id) WHERE batch_id IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant, id) WHERE tenant IS NOT NULL;

CREATE FUNCTION events_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: UPDATE is not allowed'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_update();

CREATE FUNCTION events_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM prune_in_progress) THEN
        RETURN old;
    END IF;
    RAISE EXCEPTION 'events are append-only: DELETE is not allowed (kiln prune removes old history)'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_delete();

-- TRUNCATE fires no row trigger, so it gets its own: prune deletes rows, it never truncates.
CREATE FUNCTION events_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: TRUNCATE is not allowed'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER events_are_append_only_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_truncate();

-- Ids in commit order. An identity column hands out ids in the order transactions ask, not the
-- order they commit: a transaction holding id 7 may commit after another's id 8, and a reader
-- that saw 8 and asks for "after 8" would never see 7. So every statement that inserts events
-- first takes this transaction-level lock, before any of its ids is drawn, and holds it until
-- its transaction ends: the next transaction draws its ids only once this one is committed and
-- visible. Writers therefore insert events last in their transactions (no row locks taken after
-- it, so no deadlock), and event-writing commits are serialized: the price of an exact cursor.
-- The lock's key is the bytes 'kiln.eve' as a 64-bit number; advisory locks are per database.
CREATE FUNCTION events_take_commit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7739836655093511781);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_in_commit_order BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_take_commit_order();

-- The outbox: one row per webhook call to make, written in the transaction of the end it reports.
CREATE TABLE webhooks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          uuid REFERENCES jobs (id),
    batch_id        uuid REFERENCES batches (id),
    event           text NOT NULL,
    url             text NOT NULL,
    payload         json NOT NULL,
    shape           text NOT NULL DEFAULT 'kiln' CHECK (shape IN ('kiln', 'judge0')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at bigint,
    last_status     integer,
    last_error      text,
    tenant          text,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    CHECK ((job_id IS NULL) <> (batch_id IS NULL)),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
COMMENT ON TABLE webhooks IS 'The outbox: one row per call to a callback_url, delivered at least once (receivers discard repeats by the Kiln-Delivery header).';
COMMENT ON COLUMN webhooks.id IS 'Sent as the Kiln-Delivery header; the same across retries of one call.';
COMMENT ON COLUMN webhooks.job_id IS 'The job the call reports on; NULL for a batch''s call.';
COMMENT ON COLUMN webhooks.batch_id IS 'The batch the call reports on (batch.completed); NULL for a job''s call.';
COMMENT ON COLUMN webhooks.event IS 'The event the call reports, e.g. job.succeeded; sent as the Kiln-Event header.';
COMMENT ON COLUMN webhooks.url IS 'Where the call goes.';
COMMENT ON COLUMN webhooks.payload IS 'The exact request body, fixed when the row is written so every retry sends the same bytes: {"event", "job"} or {"event", "batch"}.';
COMMENT ON COLUMN webhooks.shape IS 'kiln (POST of payload, signed) or judge0 (PUT of the Judge0 submission, rendered from the ended job; at most Judge0''s 3 attempts).';
COMMENT ON COLUMN webhooks.status IS 'pending: to be (re)tried at next_attempt_at; delivered: a 2xx answer was received; failed: given up.';
COMMENT ON COLUMN webhooks.attempts IS 'Attempts made so far.';
COMMENT ON COLUMN webhooks.next_attempt_at IS 'For pending rows, not before this time (ms since the Unix epoch); a node taking the row pushes it forward by the request timeout.';
COMMENT ON COLUMN webhooks.last_status IS 'The HTTP status of the last answer.';
COMMENT ON COLUMN webhooks.last_error IS 'Why the last attempt failed.';
COMMENT ON COLUMN webhooks.tenant IS 'The tenant whose signing key signs the call; NULL for settings.webhook_secret.';
COMMENT ON COLUMN webhooks.created_at IS 'When the row was written, ms since the Unix epoch.';
COMMENT ON COLUMN webhooks.updated_at IS 'When an attempt was last recorded, ms since the Unix epoch.';

CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhooks_job ON webhooks (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX webhooks_batch ON webhooks (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE settings IS 'Values kiln keeps for itself across restarts, by name.';
COMMENT ON COLUMN settings.name IS 'webhook_secret: the key webhooks without a tenant are signed with when no --webhook-secret is configured.';
COMMENT ON COLUMN settings.value IS 'The value, generated by the first start that needed it.';

-- Tokens and tenants. A server with no token is open; once one exists every request needs one.
CREATE TABLE tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant     text NOT NULL CHECK (length(tenant) BETWEEN 1 AND 64),
    admin      boolean NOT NULL DEFAULT false,
    hash       text NOT NULL UNIQUE CHECK (length(hash) = 64),
    prefix     text NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
);
COMMENT ON TABLE tokens IS 'One row per token kiln token create made; the token itself is printed once and never stored.';
COMMENT ON COLUMN tokens.id IS 'What kiln token revoke takes.';
COMMENT ON COLUMN tokens.tenant IS 'The tenant the token acts for.';
COMMENT ON COLUMN tokens.admin IS 'True if it sees every tenant.';
COMMENT ON COLUMN tokens.hash IS 'Hex SHA-256 of the whole token text (256 random bits, so a slow hash would add nothing).';
COMMENT ON COLUMN tokens.prefix IS 'The token''s first characters (kiln_ and 8 hex digits), to tell tokens apart in listings and logs.';
COMMENT ON COLUMN tokens.created_at IS 'When it was made, ms since the Unix epoch.';
COMMENT ON COLUMN tokens.revoked_at IS 'Set by kiln token revoke, ms since the Unix epoch; never unset.';

CREATE TABLE tenants (
    name           text PRIMARY KEY,
    webhook_secret text NOT NULL,
    created_at     bigint NOT NULL
);
COMMENT ON TABLE tenants IS 'Each tenant''s key for signing its webhook calls, so one tenant cannot forge calls to another''s receiver.';
COMMENT ON COLUMN tenants.name IS 'The tenant, as tokens.tenant names it.';
COMMENT ON COLUMN tenants.webhook_secret IS 'HMAC-SHA256 key of its calls, generated with its first token; the tenant reads it at GET /v1/tenant.';
COMMENT ON COLUMN tenants.created_at IS 'When its first token was made, ms since the Unix epoch.';

-- Counts kept exact by the triggers below, in the transaction of every change, so admission
-- control reads one row instead of counting the queue on every submit.
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL CHECK (value >= 0)
);
COMMENT ON TABLE counters IS 'Counts kept exact by triggers in the transaction of every change, read by admission control.';
COMMENT ON COLUMN counters.name IS 'queued_jobs (jobs in status queued; limit --max-queued-jobs) or batches_in_flight (batches with a case not yet ended; limit --max-batches-in-flight).';
COMMENT ON COLUMN counters.value IS 'The count.';

INSERT INTO counters (name, value) VALUES ('queued_jobs', 0), ('batches_in_flight', 0);

CREATE FUNCTION counters_count_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint := 0;
BEGIN
    IF tg_op IN ('INSERT', 'UPDATE') AND new.status = 'queued' THEN
        delta := delta + 1;
    END IF;
    IF tg_op IN ('UPDATE', 'DELETE') AND old.status = 'queued' THEN
        delta := delta - 1;
    END IF;
    IF delta <> 0 THEN
        UPDATE counters SET value = value + delta WHERE name = 'queued_jobs';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER counters_jobs AFTER INSERT OR DELETE OR UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION counters_count_job();

CREATE FUNCTION counters_count_batch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint := 0;
BEGIN
    IF tg_op IN ('INSERT', 'UPDATE') AND new.done < new.cases THEN
        delta := delta + 1;
    END IF;
    IF tg_op IN ('UPDATE', 'DELETE') AND old.done < old.cases THEN
        delta := delta - 1;
    END IF;
    IF delta <> 0 THEN
        UPDATE counters SET value = value + delta WHERE name = 'batches_in_flight';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER counters_batches AFTER INSERT OR DELETE OR UPDATE OF done ON batches
    FOR EACH ROW EXECUTE FUNCTION counters_count_batch();

-- The files a job produced: kept (content holds the bytes) or left out (omitted says why).
CREATE TABLE job_files (
    job_id       uuid NOT NULL REFERENCES jobs (id),
    path         text NOT NULL,
    size         bigint CHECK (size IS NULL OR size >= 0),
    content_type text,
    content      bytea,
    omitted      text CHECK (omitted IN ('too_many_files', 'too_many_bytes', 'not_a_regular_file')),
    PRIMARY KEY (job_id, path),
    CHECK ((omitted IS NULL) = (content IS NOT NULL)),
    CHECK (omitted IS NOT NULL OR (size = octet_length(content) AND content_type IS NOT NULL))
);
COMMENT ON TABLE job_files IS 'One row per file a job''s outputs matched, written in the transaction that ends the job, so its files are there exactly when its result is.';
COMMENT ON COLUMN job_files.job_id IS 'The job that wrote it.';
COMMENT ON COLUMN job_files.path IS 'Relative to the work directory, as the job saw it under /work.';
COMMENT ON COLUMN job_files.size IS 'Bytes; for an omitted file, its size if it was a regular file, else NULL.';
COMMENT ON COLUMN job_files.content_type IS 'What it is served as (by its extension, else text/plain or application/octet-stream).';
COMMENT ON COLUMN job_files.content IS 'The exact bytes, for a kept file; served at GET /v1/jobs/{id}/files/{path}.';
COMMENT ON COLUMN job_files.omitted IS 'Why it was left out: too_many_files (over --max-output-files), too_many_bytes (over --max-output-files-bytes), not_a_regular_file.';

-- Views for operators, as SQLite's migrations define them, times rendered as text.

-- Every event of every job in order: SELECT * FROM job_timeline WHERE job_id = '...';
CREATE VIEW job_timeline AS
SELECT e.job_id, e.id AS event_id, kiln_time(e.at) AS at, e.type, e.attempt, e.data
FROM events e
ORDER BY e.job_id, e.id;

-- How many jobs are in each status right now.
CREATE VIEW queue_depth AS
SELECT status, count(*) AS jobs
FROM jobs
GROUP BY status;

-- One line per job without the bulky columns.
CREATE VIEW job_summary AS
SELECT id, runtime, status, outcome, attempt, exit_code,
       kiln_time(created_at) AS created, kiln_time(started_at) AS started,
       kiln_time(finished_at) AS finished, started_at - created_at AS queued_ms,
       wall_ms, cpu_ms, memory_kb, error
FROM jobs;

-- Each job's streams: how the API shows them, and their size in bytes.
CREATE VIEW job_output AS
SELECT id AS job_id,
       CASE WHEN kiln_is_utf8(stdout) THEN 'utf-8' ELSE 'base64' END AS stdout_encoding,
       octet_length(stdout) AS stdout_bytes,
       stdout_truncated,
       CASE WHEN kiln_is_utf8(stderr) THEN 'utf-8' ELSE 'base64' END AS stderr_encoding,
       octet_length(stderr) AS stderr_bytes,
       stderr_truncated
FROM jobs;

-- One line per batch: SELECT * FROM batch_summary ORDER BY id DESC LIMIT 10;
CREATE VIEW batch_summary AS
SELECT id, runtime, compare, cases, done, passed, done - passed AS failed, done = cases AS complete,
       kiln_time(created_at) AS created, kiln_time(started_at) AS started,
       kiln_time(finished_at) AS finished, finished_at - created_at AS total_ms
FROM batches;

-- Every case of every batch with its verdict: SELECT * FROM case_results WHERE batch_id = '...';
CREATE VIEW case_results AS
SELECT batch_id, case_index, case_name, case_group, id AS job_id, status, outcome, verdict,
       verdict_detail, exit_code, wall_ms
FROM jobs
WHERE batch_id IS NOT NULL
ORDER BY batch_id, case_index;

-- One line per group of each batch; pass@k itself is computed by kiln from done and passed.
CREATE VIEW group_results AS
SELECT batch_id, case_group, count(*) AS cases, count(verdict) AS done,
       count(*) FILTER (WHERE verdict = 'passed') AS passed
FROM jobs
WHERE batch_id IS NOT NULL AND case_group IS NOT NULL
GROUP BY batch_id, case_group;

-- Every delivery without its payload.
CREATE VIEW webhook_deliveries AS
SELECT id, job_id, batch_id, event, url, status, attempts, last_status, last_error,
       kiln_time(created_at) AS created, kiln_time(updated_at) AS updated,
       kiln_time(next_attempt_at) AS next_attempt
FROM webhooks;

-- What each job kept and left out, without the bytes.
CREATE VIEW job_files_summary AS
SELECT job_id, path, size, content_type, omitted
FROM job_files
ORDER BY job_id, path;
