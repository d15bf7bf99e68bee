-- kiln schema for PostgreSQL, migration 3: SQLite's schema/0013_listing_indexes.sql. The job
-- listing (`GET /v1/jobs`, the dashboard) filters by status, outcome, runtime, batch, tenant and
-- time, newest first, a page at a time. Status, batch, tenant and time had an index already;
-- without one for outcome and runtime, a filter that matches few jobs (`runtime=ruby`,
-- `outcome=memory_limit`) reads the whole table to fill its page. With these the page is found
-- by walking the index from the newest id, as for a status.

-- Listing by outcome; only ended jobs have one.
CREATE INDEX jobs_outcome ON jobs (outcome, id) WHERE outcome IS NOT NULL;

-- Listing by runtime.
CREATE INDEX jobs_runtime ON jobs (runtime, id);
