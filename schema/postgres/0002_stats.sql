-- kiln schema for PostgreSQL, migration 2: SQLite's schema/0012_stats.sql, the figures kept as
-- the jobs change, so that GET /v1/stats, its series and the dashboard read a few rows at any
-- scale instead of counting millions of jobs. Each table is kept by triggers on `jobs`, in the
-- transaction that changes the job, so it is exact whatever path ends a job (a run, a cancel, a
-- lease given up, an operator's UPDATE) and never disagrees with the jobs it counts. Tenants are
-- '' for jobs of no tenant, as a key cannot be NULL. The per-minute tables are history: a prune
-- removes jobs, not what they added to these.
--
-- Unlike SQLite's, these triggers run once per statement, over its transition tables, not once
-- per row. Many nodes change jobs at once, and every change updates a few rows here: row by row,
-- a claim (queued -1, then running +1) and a rescue (running -1, then queued +1) would lock the
-- same two rows in opposite orders and deadlock. Here each statement adds up its changes and
-- applies them in the order of their keys, one table after another, so every writer locks
-- these rows in one order and none waits for another in a cycle. (kiln changes jobs' statuses
-- with one statement per transaction; an operator's transaction that makes several such
-- changes can still meet a deadlock, which PostgreSQL detects and ends.)

-- Jobs by tenant and status, right now.
CREATE TABLE job_counts (
    tenant text NOT NULL,
    status text NOT NULL,
    jobs   bigint NOT NULL CHECK (jobs >= 0),
    PRIMARY KEY (tenant, status)
);
COMMENT ON TABLE job_counts IS 'How many jobs each tenant has in each status now, kept by the job_counts_* triggers in the transaction of every change.';
COMMENT ON COLUMN job_counts.tenant IS 'The jobs'' tenant; '''' for jobs of no tenant.';
COMMENT ON COLUMN job_counts.status IS 'A status of the job state machine.';
COMMENT ON COLUMN job_counts.jobs IS 'How many of the tenant''s jobs are in it.';

INSERT INTO job_counts (tenant, status, jobs)
SELECT coalesce(tenant, ''), status, count(*) FROM jobs GROUP BY 1, 2;

-- Adds `delta` to one row of job_counts, creating it if it is new. A decrement always finds its
-- row (the job was counted there), so only an increment inserts, and the CHECK, which sees the
-- row proposed for insertion, never sees a negative one.
CREATE FUNCTION job_counts_add(tenant_ text, status_ text, delta bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE job_counts SET jobs = jobs + delta WHERE tenant = tenant_ AND status = status_;
    IF NOT FOUND THEN
        INSERT INTO job_counts (tenant, status, jobs) VALUES (tenant_, status_, delta)
        ON CONFLICT (tenant, status) DO UPDATE SET jobs = job_counts.jobs + excluded.jobs;
    END IF;
END
$$;

CREATE FUNCTION job_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT coalesce(tenant, '') AS tenant, status, count(*) AS delta
             FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2 LOOP
        PERFORM job_counts_add(d.tenant, d.status, d.delta);
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER job_counts_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_inserted();

CREATE FUNCTION job_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT coalesce(tenant, '') AS tenant, status, -count(*) AS delta
             FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2 LOOP
        PERFORM job_counts_add(d.tenant, d.status, d.delta);
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER job_counts_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_deleted();

-- The buckets of the latency histograms: a bucket holds the jobs that took at most `le`
-- milliseconds and more than the bound below it, about three to a decade (1, 2, 3, 5, 7, 10, ...).
-- The last bound holds everything longer than a day.
CREATE TABLE latency_buckets (
    le bigint PRIMARY KEY
);
COMMENT ON TABLE latency_buckets IS 'The upper bounds of the latency histograms'' buckets, about three to a decade; the last holds everything longer than a day.';
COMMENT ON COLUMN latency_buckets.le IS 'The bucket holds latencies of at most this many ms, and more than the bound below it.';

INSERT INTO latency_buckets (le) VALUES
    (1), (2), (3), (5), (7), (10), (15), (20), (30), (50), (70), (100), (150), (200), (300),
    (500), (700), (1000), (1500), (2000), (3000), (5000), (7000), (10000), (15000), (20000),
    (30000), (50000), (70000), (100000), (150000), (200000), (300000), (600000), (1200000),
    (3600000), (86400000), (9223372036854775807);

-- Per minute (finished_at / 60000) and tenant, how many jobs ended with each outcome.
CREATE TABLE jobs_ended (
    minute  bigint NOT NULL,
    tenant  text NOT NULL,
    outcome text NOT NULL,
    jobs    bigint NOT NULL CHECK (jobs > 0),
    PRIMARY KEY (minute, tenant, outcome)
);
COMMENT ON TABLE jobs_ended IS 'How many jobs ended with each outcome, per minute and tenant: history, which a prune leaves.';
COMMENT ON COLUMN jobs_ended.minute IS 'The minute they ended in: finished_at / 60000, minutes since the Unix epoch.';
COMMENT ON COLUMN jobs_ended.tenant IS 'The jobs'' tenant; '''' for jobs of no tenant.';
COMMENT ON COLUMN jobs_ended.outcome IS 'How they ended (jobs.outcome).';
COMMENT ON COLUMN jobs_ended.jobs IS 'How many.';

-- Per minute a job ended in and tenant, the histogram of its queue wait (`wait`: from submit to
-- the start of its last attempt) and of its run (`run`: the last attempt's wall time), for the
-- jobs that started at all.
CREATE TABLE job_latency (
    minute bigint NOT NULL,
    tenant text NOT NULL,
    kind   text NOT NULL CHECK (kind IN ('wait', 'run')),
    le     bigint NOT NULL REFERENCES latency_buckets (le),
    jobs   bigint NOT NULL CHECK (jobs > 0),
    PRIMARY KEY (minute, tenant, kind, le)
);
COMMENT ON TABLE job_latency IS 'Histograms of the queue wait and the run of the jobs that ended each minute, per tenant, for those that started: history, which a prune leaves.';
COMMENT ON COLUMN job_latency.minute IS 'The minute they ended in: finished_at / 60000, minutes since the Unix epoch.';
COMMENT ON COLUMN job_latency.tenant IS 'The jobs'' tenant; '''' for jobs of no tenant.';
COMMENT ON COLUMN job_latency.kind IS 'wait (from submit to the start of the last attempt) or run (the last attempt''s wall time).';
COMMENT ON COLUMN job_latency.le IS 'The bucket (latency_buckets.le) the latency falls in.';
COMMENT ON COLUMN job_latency.jobs IS 'How many jobs.';

INSERT INTO jobs_ended (minute, tenant, outcome, jobs)
SELECT finished_at / 60000, coalesce(tenant, ''), coalesce(outcome, ''), count(*)
FROM jobs WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3;

INSERT INTO job_latency (minute, tenant, kind, le, jobs)
SELECT minute, tenant, kind, le, count(*) FROM (
    SELECT finished_at / 60000 AS minute, coalesce(tenant, '') AS tenant, 'wait' AS kind,
           (SELECT min(le) FROM latency_buckets
            WHERE le >= greatest(started_at - created_at, 0)) AS le
    FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
    UNION ALL
    SELECT finished_at / 60000, coalesce(tenant, ''), 'run',
           (SELECT min(le) FROM latency_buckets
            WHERE le >= greatest(coalesce(wall_ms, finished_at - started_at), 0))
    FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL
) latencies GROUP BY 1, 2, 3, 4;

-- Every UPDATE of jobs: the moves between statuses for job_counts, and the jobs that ended (from
-- queued or running to a terminal status: the state machine allows no other way) for the
-- per-minute tables. Transition tables cannot go with a column list, so this runs for every
-- UPDATE, a lease renewal's too, and finds nothing to do there.
CREATE FUNCTION job_stats_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    FOR d IN SELECT tenant, status, sum(delta) AS delta FROM (
                 SELECT coalesce(o.tenant, '') AS tenant, o.status, -1 AS delta
                 FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status <> n.status
                 UNION ALL
                 SELECT coalesce(n.tenant, ''), n.status, 1
                 FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status <> n.status
             ) moves GROUP BY 1, 2 HAVING sum(delta) <> 0 ORDER BY 1, 2 LOOP
        PERFORM job_counts_add(d.tenant, d.status, d.delta);
    END LOOP;

    INSERT INTO jobs_ended (minute, tenant, outcome, jobs)
    SELECT n.finished_at / 60000, coalesce(n.tenant, ''), coalesce(n.outcome, ''), count(*)
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.status IN ('queued', 'running') AND n.status NOT IN ('queued', 'running')
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (minute, tenant, outcome) DO UPDATE SET jobs = jobs_ended.jobs + excluded.jobs;

    INSERT INTO job_latency (minute, tenant, kind, le, jobs)
    SELECT minute, tenant, kind, le, count(*) FROM (
        SELECT n.finished_at / 60000 AS minute, coalesce(n.tenant, '') AS tenant, k.kind,
               (SELECT min(b.le) FROM latency_buckets b
                WHERE b.le >= greatest(CASE k.kind
                                           WHEN 'wait' THEN n.started_at - n.created_at
                                           ELSE coalesce(n.wall_ms, n.finished_at - n.started_at)
                                       END, 0)) AS le
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        CROSS JOIN (VALUES ('run'), ('wait')) k (kind)
        WHERE o.status IN ('queued', 'running') AND n.status NOT IN ('queued', 'running')
          AND n.started_at IS NOT NULL
    ) latencies
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (minute, tenant, kind, le) DO UPDATE SET jobs = job_latency.jobs + excluded.jobs;
    RETURN NULL;
END
$$;
CREATE TRIGGER job_stats_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_stats_updated();
