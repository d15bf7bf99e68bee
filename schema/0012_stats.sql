-- kiln schema, migration 10: figures kept as the jobs change, so that GET /v1/stats, its
-- series and the dashboard read a few rows at any scale instead of counting millions of jobs.
-- Each table is kept by triggers on `jobs`, in the transaction that changes the job, so it is
-- exact whatever path ends a job (a run, a cancel, a lease given up, an operator's UPDATE) and
-- can never disagree with the jobs it counts. Tenants are '' for jobs of no tenant, as a key
-- cannot be NULL. The per-minute tables are history: `kiln prune` removes jobs, not what they
-- added to these.

-- Jobs by tenant and status, right now.
CREATE TABLE job_counts (
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    jobs   INTEGER NOT NULL CHECK (jobs >= 0),
    PRIMARY KEY (tenant, status)
) WITHOUT ROWID;

INSERT INTO job_counts (tenant, status, jobs)
SELECT coalesce(tenant, ''), status, count(*) FROM jobs GROUP BY 1, 2;

CREATE TRIGGER job_counts_inserted AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (tenant, status, jobs) VALUES (coalesce(new.tenant, ''), new.status, 1)
    ON CONFLICT (tenant, status) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER job_counts_moved AFTER UPDATE OF status ON jobs WHEN old.status <> new.status
BEGIN
    UPDATE job_counts SET jobs = jobs - 1
    WHERE tenant = coalesce(old.tenant, '') AND status = old.status;
    INSERT INTO job_counts (tenant, status, jobs) VALUES (coalesce(new.tenant, ''), new.status, 1)
    ON CONFLICT (tenant, status) DO UPDATE SET jobs = jobs + 1;
END;

CREATE TRIGGER job_counts_deleted AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET jobs = jobs - 1
    WHERE tenant = coalesce(old.tenant, '') AND status = old.status;
END;

-- The buckets of the latency histograms: a bucket holds the jobs that took at most `le`
-- milliseconds and more than the bound below it, about three to a decade (1, 2, 3, 5, 7, 10, ...).
-- The last bound holds everything longer than a day.
CREATE TABLE latency_buckets (
    le INTEGER PRIMARY KEY NOT NULL
);

INSERT INTO latency_buckets (le) VALUES
    (1), (2), (3), (5), (7), (10), (15), (20), (30), (50), (70), (100), (150), (200), (300),
    (500), (700), (1000), (1500), (2000), (3000), (5000), (7000), (10000), (15000), (20000),
    (30000), (50000), (70000), (100000), (150000), (200000), (300000), (600000), (1200000),
    (3600000), (86400000), (9223372036854775807);

-- Per minute (finished_at / 60000) and tenant, how many jobs ended with each outcome.
CREATE TABLE jobs_ended (
    minute  INTEGER NOT NULL,
    tenant  TEXT NOT NULL,
    outcome TEXT NOT NULL,
    jobs    INTEGER NOT NULL CHECK (jobs > 0),
    PRIMARY KEY (minute, tenant, outcome)
) WITHOUT ROWID;

-- Per minute a job ended in and tenant, the histogram of its queue wait (`wait`: from submit to
-- the start of its last attempt) and of its run (`run`: the last attempt's wall time), for the
-- jobs that started at all.
CREATE TABLE job_latency (
    minute INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('wait', 'run')),
    le     INTEGER NOT NULL REFERENCES latency_buckets (le),
    jobs   INTEGER NOT NULL CHECK (jobs > 0),
    PRIMARY KEY (minute, tenant, kind, le)
) WITHOUT ROWID;

INSERT INTO jobs_ended (minute, tenant, outcome, jobs)
SELECT finished_at / 60000, coalesce(tenant, ''), coalesce(outcome, ''), count(*)
FROM jobs WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3;

INSERT INTO job_latency (minute, tenant, kind, le, jobs)
SELECT minute, tenant, kind, le, count(*) FROM (
    SELECT finished_at / 60000 AS minute, coalesce(tenant, '') AS tenant, 'wait' AS kind,
           (SELECT min(le) FROM latency_buckets WHERE le >= max(started_at - created_at, 0)) AS le
    FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
    UNION ALL
    SELECT finished_at / 60000, coalesce(tenant, ''), 'run',
           (SELECT min(le) FROM latency_buckets
            WHERE le >= max(coalesce(wall_ms, finished_at - started_at), 0))
    FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
) GROUP BY 1, 2, 3, 4;

-- A job ends once: from queued or running to a terminal status (the state machine's CHECK
-- and the store allow no other way).
CREATE TRIGGER job_stats_ended AFTER UPDATE OF status ON jobs
WHEN old.status IN ('queued', 'running') AND new.status NOT IN ('queued', 'running')
BEGIN
    INSERT INTO jobs_ended (minute, tenant, outcome, jobs)
    VALUES (new.finished_at / 60000, coalesce(new.tenant, ''), coalesce(new.outcome, ''), 1)
    ON CONFLICT (minute, tenant, outcome) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_latency (minute, tenant, kind, le, jobs)
    SELECT new.finished_at / 60000, coalesce(new.tenant, ''), 'wait', min(le), 1
    FROM latency_buckets
    WHERE new.started_at IS NOT NULL AND le >= max(new.started_at - new.created_at, 0)
    HAVING count(*) > 0
    ON CONFLICT (minute, tenant, kind, le) DO UPDATE SET jobs = jobs + 1;
    INSERT INTO job_latency (minute, tenant, kind, le, jobs)
    SELECT new.finished_at / 60000, coalesce(new.tenant, ''), 'run', min(le), 1
    FROM latency_buckets
    WHERE new.started_at IS NOT NULL
      AND le >= max(coalesce(new.wall_ms, new.finished_at - new.started_at), 0)
    HAVING count(*) > 0
    ON CONFLICT (minute, tenant, kind, le) DO UPDATE SET jobs = jobs + 1;
END;
