-- kiln schema, migration 10: interactive jobs. A job submitted with `interactive: true` keeps
-- its stdin open after the `stdin` it was given, and its run reads what is written to it
-- while it runs (POST /v1/jobs/{id}/stdin, Piston's WebSocket /api/v2/connect) until that is
-- closed. The bytes written are not stored: only the flag is, so that the run knows to wait.
ALTER TABLE jobs ADD COLUMN interactive INTEGER NOT NULL DEFAULT 0
    CHECK (interactive IN (0, 1));
