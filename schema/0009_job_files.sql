-- kiln schema, migration 9: files a job produces. A job may name `outputs`, paths or globs under
-- its work directory; after the run, the regular files they match are kept here, with the
-- result, within the server's caps (`--max-output-files`, `--max-output-files-bytes`). They are
-- served at GET /v1/jobs/{id}/files/{path} to whoever may read the job, and pruned and archived
-- with it.

-- The patterns the job named, as a JSON array of strings; '[]' for a job that named none.
ALTER TABLE jobs ADD COLUMN outputs TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(outputs) AND json_type(outputs) = 'array');

-- One row per file that matched a pattern: kept (content holds its bytes) or left out (omitted
-- says why, content is NULL). Written in the transaction that ends the job, so a job's files
-- are there exactly when its result is.
CREATE TABLE job_files (
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    -- Relative to the work directory, as the job saw it under /work.
    path         TEXT NOT NULL,
    -- Bytes; for an omitted file, its size if it was a regular file, else NULL.
    size         INTEGER CHECK (size IS NULL OR size >= 0),
    -- What the file is served as (by its extension, else text/plain or application/octet-stream).
    content_type TEXT,
    content      BLOB,
    -- too_many_files (over --max-output-files), too_many_bytes (it did not fit in what was left
    -- of --max-output-files-bytes), not_a_regular_file (a symlink, never followed, a FIFO, ...).
    omitted      TEXT CHECK (omitted IN ('too_many_files', 'too_many_bytes', 'not_a_regular_file')),
    CHECK ((omitted IS NULL) = (content IS NOT NULL)),
    CHECK (omitted IS NOT NULL OR (size = length(content) AND content_type IS NOT NULL)),
    PRIMARY KEY (job_id, path)
) WITHOUT ROWID;

-- What each job kept and left out, without the bytes:
--   SELECT * FROM job_files_summary WHERE job_id = '...';
CREATE VIEW job_files_summary AS
SELECT job_id, path, size, content_type, omitted
FROM job_files
ORDER BY job_id, path;
