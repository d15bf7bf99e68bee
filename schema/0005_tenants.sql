-- kiln schema, migration 5: API tokens, tenants, and the counters admission control reads.
--
-- A server with no token is open (the single-user default on loopback). Once a token exists,
-- every request needs one (`Authorization: Bearer ...`), and each token acts for a tenant: a
-- tenant sees and cancels only its own jobs, batches and events; an admin token sees all.
-- Rows written while the server was open, or before this migration, have tenant NULL: only
-- admin tokens see them once tokens exist.

-- One row per token `kiln token create` made. The token itself is printed once and never
-- stored: only its SHA-256. A token is 256 random bits, so nobody can guess it or find it from
-- its hash; a slow password hash (bcrypt, argon2) would add nothing but cost on every request.
CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,     -- what `kiln token revoke` takes
    tenant     TEXT NOT NULL CHECK (length(tenant) BETWEEN 1 AND 64),
    admin      INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),  -- sees every tenant
    -- Hex SHA-256 of the whole token text.
    hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
    -- The token's first characters (`kiln_` and 8 hex digits), to tell tokens apart in
    -- listings and logs; 32 of its 256 bits, so nothing an attacker can use.
    prefix     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER                                 -- set by `kiln token revoke`; never unset
);

-- Each tenant's key for signing its webhook calls (HMAC-SHA256, as `settings.webhook_secret`
-- is for calls of jobs without a tenant), so one tenant cannot forge calls to another's
-- receiver. Generated with the tenant's first token; the tenant reads it at GET /v1/tenant.
CREATE TABLE tenants (
    name           TEXT PRIMARY KEY NOT NULL,
    webhook_secret TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

-- Whose the row is: the tenant of the token that submitted it; NULL if submitted with no
-- token (open server). A batch's cases and every event of a job or batch carry its tenant, so
-- a tenant's listing and feed are one indexed query.
ALTER TABLE jobs ADD COLUMN tenant TEXT;
ALTER TABLE batches ADD COLUMN tenant TEXT;
ALTER TABLE events ADD COLUMN tenant TEXT;
-- The tenant whose signing key signs the call.
ALTER TABLE webhooks ADD COLUMN tenant TEXT;

CREATE INDEX jobs_tenant ON jobs (tenant, id) WHERE tenant IS NOT NULL;
CREATE INDEX events_tenant ON events (tenant, id) WHERE tenant IS NOT NULL;

-- An Idempotency-Key is the client's, so it is unique per tenant: two tenants using the same
-- key get their own jobs, and neither learns of the other's. Replaces the global indexes of
-- migrations 1 and 2.
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (coalesce(tenant, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX batches_idempotency_key;
CREATE UNIQUE INDEX batches_idempotency_key ON batches (coalesce(tenant, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Counts kept exact by the triggers below, in the transaction of every change, so that
-- admission control reads one row instead of counting the queue on every submit:
--   queued_jobs        jobs in status 'queued' (limit: --max-queued-jobs)
--   batches_in_flight  batches with a case not yet ended (limit: --max-batches-in-flight)
CREATE TABLE counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL CHECK (value >= 0)
);

INSERT INTO counters (name, value)
VALUES ('queued_jobs', (SELECT count(*) FROM jobs WHERE status = 'queued')),
       ('batches_in_flight', (SELECT count(*) FROM batches WHERE done < cases));

CREATE TRIGGER counters_job_inserted AFTER INSERT ON jobs WHEN new.status = 'queued'
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'queued_jobs';
END;

CREATE TRIGGER counters_job_left_queue AFTER UPDATE OF status ON jobs
WHEN old.status = 'queued' AND new.status <> 'queued'
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'queued_jobs';
END;

CREATE TRIGGER counters_job_requeued AFTER UPDATE OF status ON jobs
WHEN old.status <> 'queued' AND new.status = 'queued'
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'queued_jobs';
END;

CREATE TRIGGER counters_job_deleted AFTER DELETE ON jobs WHEN old.status = 'queued'
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'queued_jobs';
END;

CREATE TRIGGER counters_batch_inserted AFTER INSERT ON batches WHEN new.done < new.cases
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'batches_in_flight';
END;

CREATE TRIGGER counters_batch_completed AFTER UPDATE OF done ON batches
WHEN old.done < old.cases AND new.done = new.cases
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'batches_in_flight';
END;

CREATE TRIGGER counters_batch_deleted AFTER DELETE ON batches WHEN old.done < old.cases
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'batches_in_flight';
END;
