-- kiln schema for PostgreSQL, migration 6: the request rate of each API token, shared by every
-- node. A token limited to N requests a second may send them to any node, and the cluster as a
-- whole must answer 429 past the limit, as one server does. Each token's bucket is a row: how
-- many requests it may still make at once, and when that was last worked out. A node charges a
-- request in one call of kiln_take_token, which locks the row, refills it for the time gone by
-- (on the database's clock, so the nodes' clocks need not agree), and takes one request if there
-- is one. Rows are small and one per token ever charged; a revoked token's row is simply unused.
CREATE TABLE rate_buckets (
    token_hash text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);
COMMENT ON TABLE rate_buckets IS 'The token bucket of each API token charged with --token-rate, shared by the nodes.';
COMMENT ON COLUMN rate_buckets.token_hash IS 'The SHA-256 of the token in hex, as tokens.hash holds it.';
COMMENT ON COLUMN rate_buckets.tokens IS 'Requests the token could make at once at updated_at (at most the burst; below 1: none).';
COMMENT ON COLUMN rate_buckets.updated_at IS 'When tokens was last worked out (the database''s clock).';

-- Charges one request of the token whose hash is `hash`, for a limit of `rate` requests a second
-- and `burst` at once. Returns 0 if the request may go ahead, otherwise the seconds until it
-- could. A refused request takes nothing, so a client that retries early is not punished past
-- the limit itself.
CREATE FUNCTION kiln_take_token(hash text, rate double precision, burst double precision)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    have  double precision;
    since timestamptz;
    now_at timestamptz;
BEGIN
    INSERT INTO rate_buckets (token_hash, tokens, updated_at)
    VALUES (hash, burst, clock_timestamp())
    ON CONFLICT (token_hash) DO NOTHING;
    SELECT tokens, updated_at INTO have, since
    FROM rate_buckets WHERE token_hash = hash FOR UPDATE;
    -- Read after the lock: a charge that waited for another must count the time it waited.
    now_at := greatest(clock_timestamp(), since);
    have := least(burst, have + rate * extract(epoch FROM now_at - since));
    IF have >= 1 THEN
        UPDATE rate_buckets SET tokens = have - 1, updated_at = now_at WHERE token_hash = hash;
        RETURN 0;
    END IF;
    UPDATE rate_buckets SET tokens = have, updated_at = now_at WHERE token_hash = hash;
    RETURN (1 - have) / rate;
END
$$;
COMMENT ON FUNCTION kiln_take_token(text, double precision, double precision) IS 'Charges one request to a token''s shared bucket: 0 if it may go ahead, otherwise the seconds until it could.';
