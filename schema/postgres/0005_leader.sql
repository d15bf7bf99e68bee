-- kiln schema for PostgreSQL, migration 5: one leader among the nodes, for the maintenance that
-- needs doing once per cluster rather than once per node (today the rescue of jobs whose lease
-- ran out). River's design: a row holding the leader's name and when its term ends. Every node
-- tries to take or extend the term a few times per term, in one statement that succeeds only
-- for the node already leading or once the term has run out; the database's clock decides, so
-- the nodes' clocks need not agree. A leader that stops cleanly gives the row up, and another
-- node takes over at once; one that dies holds it until its term runs out.
CREATE TABLE leader (
    name       text PRIMARY KEY CHECK (name = 'maintenance'),
    node       text NOT NULL,
    elected_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
COMMENT ON TABLE leader IS 'The node that leads the cluster''s maintenance (the rescuer), and until when: one row, or none while nobody leads.';
COMMENT ON COLUMN leader.name IS 'What is led: maintenance.';
COMMENT ON COLUMN leader.node IS 'The leading process: its --node-id and instance, as in the lease owners of jobs (node/instance/).';
COMMENT ON COLUMN leader.elected_at IS 'When this node''s term began, ms since the Unix epoch (the database''s clock).';
COMMENT ON COLUMN leader.expires_at IS 'When the term ends unless the leader extends it, ms since the Unix epoch (the database''s clock).';
