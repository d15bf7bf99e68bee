-- kiln schema, migration 10: the shape of a callback. A job submitted through kiln's Judge0 API
-- (`/judge0`) with a `callback_url` expects what Judge0 sends: a PUT of the submission, its text
-- base64-encoded, not kiln's signed POST of the job. The shape is kept with what asks for the
-- call, so a call made after a restart, or by another server on the same file, has it too.
--   kiln    POST {"event", "job"}, as migration 3 describes
--   judge0  PUT of the Judge0 submission (token, stdout, stderr, compile_output, message, time,
--           memory, status), rendered from the ended job when the call is made; at most
--           Judge0's 3 attempts

ALTER TABLE jobs ADD COLUMN callback_shape TEXT NOT NULL DEFAULT 'kiln'
    CHECK (callback_shape IN ('kiln', 'judge0'));

-- A Judge0-shaped suite reports each case, never itself.
ALTER TABLE batches ADD COLUMN callback_shape TEXT NOT NULL DEFAULT 'kiln'
    CHECK (callback_shape IN ('kiln', 'judge0'));

-- For a judge0 row, `payload` is kiln's (as for every row); what is sent is rendered from the
-- job, which no longer changes once it has ended, so every attempt sends the same bytes.
ALTER TABLE webhooks ADD COLUMN shape TEXT NOT NULL DEFAULT 'kiln'
    CHECK (shape IN ('kiln', 'judge0'));
