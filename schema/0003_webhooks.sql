-- kiln schema, migration 3: webhooks. A job may name a callback URL; when it ends, kiln POSTs
-- the result there. The call is made durable by an outbox: the row that asks for it is written
-- in the same transaction as the job's terminal state, so a crash between finishing a job and
-- calling back loses nothing, and a restarted server resumes whatever is still pending.
--
-- Each attempt's outcome is also recorded in `events` (same transaction as the row's update):
--   webhook.delivered  data: {"delivery", "url", "attempt", "status_code"}
--   webhook.failed     data: {"delivery", "url", "attempt", "status_code" (null if no answer),
--                             "error", "retry" (true if another attempt is scheduled),
--                             "next_attempt_at"}
-- Their `attempt` column is NULL: it counts the job's runs, the delivery's attempt is in `data`.

-- Where the job's end is to be reported: an http(s) URL checked against the host policy at
-- submit, NULL for no callback.
ALTER TABLE jobs ADD COLUMN callback_url TEXT;

-- The outbox: one row per call to make. Delivery is at least once: a receiver may see the same
-- delivery id twice (say, the server died after the receiver answered but before the answer was
-- recorded) and should use the Kiln-Delivery header to discard repeats.
CREATE TABLE webhooks (
    -- Sent as the Kiln-Delivery header; the same across retries of one call.
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- What the call reports on: a job, or (for batch callbacks) a batch. Exactly one is set.
    job_id          TEXT REFERENCES jobs (id),
    batch_id        TEXT,
    -- The event the call reports, e.g. job.succeeded; sent as the Kiln-Event header.
    event           TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The exact request body, fixed when the row is written so every retry sends the same bytes:
    -- {"event": "...", "job": <the job as GET /v1/jobs/{id} shows it>}.
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    -- pending: to be (re)tried at next_attempt_at; delivered: a 2xx answer was received;
    -- failed: given up (denied host, retry horizon or attempt limit reached).
    status          TEXT NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),   -- made so far
    -- For pending rows: not before this time. A server that takes a row for delivery pushes this
    -- forward by the request timeout, so another server on the same file (or this one after a
    -- crash mid-call) tries again only if no outcome was recorded by then.
    next_attempt_at INTEGER,
    last_status     INTEGER,                                  -- HTTP status of the last answer
    last_error      TEXT,                                     -- why the last attempt failed
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    CHECK ((job_id IS NULL) <> (batch_id IS NULL)),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);

-- The deliverer looks for the pending rows that are due, earliest first.
CREATE INDEX webhooks_due ON webhooks (next_attempt_at) WHERE status = 'pending';

CREATE INDEX webhooks_job ON webhooks (job_id) WHERE job_id IS NOT NULL;

-- Values kiln keeps for itself across restarts, by name:
--   webhook_secret  the key webhooks are signed with when no --webhook-secret is configured,
--                   generated at the first start that needed it.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Every delivery without its payload, times readable.
CREATE VIEW webhook_deliveries AS
SELECT id,
       job_id,
       batch_id,
       event,
       url,
       status,
       attempts,
       last_status,
       last_error,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1000.0, 'unixepoch')      AS created,
       strftime('%Y-%m-%dT%H:%M:%fZ', updated_at / 1000.0, 'unixepoch')      AS updated,
       strftime('%Y-%m-%dT%H:%M:%fZ', next_attempt_at / 1000.0, 'unixepoch') AS next_attempt
FROM webhooks;
