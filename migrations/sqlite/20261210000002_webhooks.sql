-- Session events as signed webhooks (issue 13): one webhook per publisher, and the
-- durable outbox its events wait in until delivered.

CREATE TABLE webhooks (
    publisher_id TEXT PRIMARY KEY NOT NULL REFERENCES publishers (id) ON DELETE CASCADE,
    url          TEXT NOT NULL,
    -- "whsec_" and the base64 of the signing key (Standard Webhooks).
    secret       TEXT NOT NULL,
    -- Event types, comma-separated (session.granted,session.ended, ...).
    events       TEXT NOT NULL,
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per event to deliver. Rows of one ordering_key (a session) go out in id
-- order: only the oldest undelivered row of a key is due (next_attempt_at); the
-- others wait at the largest integer until the one before leaves.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT NOT NULL,
    publisher_id    TEXT NOT NULL,
    ordering_key    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- 1: given up on (dead letter), kept until newer events need the room.
    dead            INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (dead, next_attempt_at);
CREATE INDEX webhook_outbox_key ON webhook_outbox (ordering_key, dead, id);
CREATE INDEX webhook_outbox_publisher ON webhook_outbox (publisher_id, dead, id);

-- Rows per publisher, kept by triggers: the cap is checked on every batch, and a
-- COUNT(*) over a backlog of 100k rows on each would cost more than the batch.
CREATE TABLE webhook_outbox_counts (
    publisher_id TEXT PRIMARY KEY NOT NULL,
    held         INTEGER NOT NULL DEFAULT 0
);

CREATE TRIGGER webhook_outbox_counted AFTER INSERT ON webhook_outbox
BEGIN
    INSERT INTO webhook_outbox_counts (publisher_id, held) VALUES (NEW.publisher_id, 1)
        ON CONFLICT (publisher_id) DO UPDATE SET held = held + 1;
END;

CREATE TRIGGER webhook_outbox_uncounted AFTER DELETE ON webhook_outbox
BEGIN
    UPDATE webhook_outbox_counts SET held = held - 1 WHERE publisher_id = OLD.publisher_id;
END;
