-- Session events as signed webhooks (issue 13): one webhook per publisher, and the
-- durable outbox its events wait in until delivered.

CREATE TABLE webhooks (
    publisher_id TEXT PRIMARY KEY NOT NULL REFERENCES publishers (id) ON DELETE CASCADE,
    url          TEXT NOT NULL,
    -- "whsec_" and the base64 of the signing key (Standard Webhooks).
    secret       TEXT NOT NULL,
    -- Event types, comma-separated (session.granted,session.ended, ...).
    events       TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per event to deliver. Rows of one ordering_key (a session) go out in id
-- order: only the oldest undelivered row of a key is due (next_attempt_at); the
-- others wait at the largest bigint until the one before leaves.
CREATE TABLE webhook_outbox (
    id              BIGSERIAL PRIMARY KEY,
    message_id      TEXT NOT NULL,
    publisher_id    TEXT NOT NULL,
    ordering_key    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- Given up on (dead letter), kept until newer events need the room.
    dead            BOOLEAN NOT NULL DEFAULT FALSE,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (dead, next_attempt_at);
CREATE INDEX webhook_outbox_key ON webhook_outbox (ordering_key, dead, id);
CREATE INDEX webhook_outbox_publisher ON webhook_outbox (publisher_id, dead, id);
