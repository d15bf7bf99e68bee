-- kiln schema, migration 4: callbacks for test suites. A batch may name a callback URL; when its
-- last case ends, kiln POSTs the batch there once (event batch.completed). The outbox row is
-- written in the same transaction as the batch.completed event, with webhooks.batch_id set and
-- webhooks.job_id NULL and the payload {"event": "batch.completed", "batch": <the batch as
-- GET /v1/batches/{id} shows it>}. Its webhook.delivered / webhook.failed events likewise carry
-- events.batch_id and a NULL events.job_id.

-- Where the batch's completion is to be reported: an http(s) URL checked against the host policy
-- at submit, NULL for no callback.
ALTER TABLE batches ADD COLUMN callback_url TEXT;

-- 1 if every case's end is also to be reported to callback_url, as a job's would be: each case
-- then carries the URL in its own jobs.callback_url, which is what makes the call.
ALTER TABLE batches ADD COLUMN callback_each_case INTEGER NOT NULL DEFAULT 0
    CHECK (callback_each_case IN (0, 1))
    CHECK (callback_each_case = 0 OR callback_url IS NOT NULL);

-- A batch's call, as operators look it up.
CREATE INDEX webhooks_batch ON webhooks (batch_id) WHERE batch_id IS NOT NULL;
