-- kiln schema, migration 7: a program per case, and groups with pass@k. A suite's cases may each
-- run a program of their own (evaluating generated code: every sample is its own program), and
-- name the group, the problem, they belong to.
--
-- Where a case's program is:
--   jobs.runtime  the runtime the case runs, always (its own or the suite's);
--   jobs.code     the case's own code, or '' when it runs the suite's, batches.code (code is never
--                 empty otherwise, so '' is unambiguous);
--   jobs.files    the case's own files, added to batches.files: a case's file replaces the
--                 suite's of the same name.
-- batches.runtime and batches.code are '' when the suite gives none and every case its own.

-- The group (problem) a case is a sample of; NULL for a case outside any group.
ALTER TABLE jobs ADD COLUMN case_group TEXT
    CHECK (case_group IS NULL OR batch_id IS NOT NULL);

-- The k of each pass@k the suite asked for, as a JSON array of integers (e.g. [1, 10, 100]).
ALTER TABLE batches ADD COLUMN pass_at_k TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(pass_at_k) AND json_type(pass_at_k) = 'array');

-- A batch's groups in name order (GET /v1/batches/{id}/groups pages by name).
CREATE INDEX jobs_batch_group ON jobs (batch_id, case_group) WHERE case_group IS NOT NULL;

-- Every case of every batch with its verdict, now with its group.
DROP VIEW case_results;
CREATE VIEW case_results AS
SELECT batch_id,
       case_index,
       case_name,
       case_group,
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

-- One line per group of each batch: its cases, those ended, those passed. pass@k itself is
-- computed by kiln (GET /v1/batches/{id}/groups) from done and passed.
--   SELECT * FROM group_results WHERE batch_id = '...' ORDER BY case_group;
CREATE VIEW group_results AS
SELECT batch_id,
       case_group,
       count(*)                                   AS cases,
       count(verdict)                             AS done,
       count(*) FILTER (WHERE verdict = 'passed') AS passed
FROM jobs
WHERE batch_id IS NOT NULL AND case_group IS NOT NULL
GROUP BY batch_id, case_group;
