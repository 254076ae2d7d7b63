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

-- Rows per publisher, kept by a trigger: the cap is checked on every batch, and a
-- COUNT(*) over a backlog of 100k rows on each would cost more than the batch.
CREATE TABLE webhook_outbox_counts (
    publisher_id TEXT PRIMARY KEY NOT NULL,
    held         BIGINT NOT NULL DEFAULT 0
);

CREATE FUNCTION webhook_outbox_count() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO webhook_outbox_counts (publisher_id, held) VALUES (NEW.publisher_id, 1)
            ON CONFLICT (publisher_id) DO UPDATE SET held = webhook_outbox_counts.held + 1;
        RETURN NEW;
    END IF;
    UPDATE webhook_outbox_counts SET held = held - 1 WHERE publisher_id = OLD.publisher_id;
    RETURN OLD;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER webhook_outbox_counted AFTER INSERT OR DELETE ON webhook_outbox
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_count();
