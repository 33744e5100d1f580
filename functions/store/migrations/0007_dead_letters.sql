-- 0007: dead letters — ingress messages whose handling failed permanently (a non-transient
-- database error, a bug) are parked here with the message as received instead of being
-- dropped after a log line. `edge-cloud dead-letters retry` feeds them through the handler
-- again once the cause is fixed; a retried message is de-duplicated by the ledger like any
-- redelivery, so a retry can never apply a batch twice.
CREATE TABLE IF NOT EXISTS edge_dead_letters (
    id          bigserial PRIMARY KEY,
    -- how the message arrived: 'sqs' (the ingest Lambda) or 'mqtt' (the local runner)
    transport   text        NOT NULL,
    -- the SQS message id, when there is one
    message_id  text,
    -- the envelope's topic, when the body parsed far enough to tell
    topic       text,
    -- the body exactly as received (the ingress envelope JSON)
    body        text        NOT NULL,
    error       text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- set when a retry succeeded; the row stays as the record of what happened
    resolved_at timestamptz,
    resolution  text
);
CREATE INDEX IF NOT EXISTS edge_dead_letters_open ON edge_dead_letters (id) WHERE resolved_at IS NULL;
