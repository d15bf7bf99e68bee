-- kiln schema, migration 8: bytes that are not text. Code, stdin, expected output and a run's
-- stdout and stderr are kept exactly as they were given or written, never decoded lossily:
--
--   jobs.code, jobs.stdin, jobs.expected_output, jobs.stdout, jobs.stderr, batches.code
--       TEXT when the bytes are valid UTF-8 (almost always), else a BLOB of the exact bytes:
--       `typeof(stdout)` says which. Declared TEXT in migration 1; SQLite keeps a BLOB in a
--       TEXT column as it is, so no column changes type.
--   jobs.files, batches.files
--       Still a JSON object of file name -> contents, each contents written as the API takes
--       it: a JSON string for UTF-8 text, else {"base64": "..."}.
--
-- To read a stream as bytes whatever it holds: CAST(stdout AS BLOB), or hex(stdout).

-- Each job's streams: how the API shows them (`stdout_encoding`), and their size in bytes.
--   SELECT * FROM job_output WHERE stdout_encoding = 'base64';
CREATE VIEW job_output AS
SELECT id                                                         AS job_id,
       CASE typeof(stdout) WHEN 'blob' THEN 'base64' ELSE 'utf-8' END AS stdout_encoding,
       length(CAST(stdout AS BLOB))                               AS stdout_bytes,
       stdout_truncated,
       CASE typeof(stderr) WHEN 'blob' THEN 'base64' ELSE 'utf-8' END AS stderr_encoding,
       length(CAST(stderr AS BLOB))                               AS stderr_bytes,
       stderr_truncated
FROM jobs;
