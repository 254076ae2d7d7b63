-- The outbox writer's batches, one row per batch and publisher (issue 13: webhooks must
-- not slow a saturated node). Writing each event as its own webhook_outbox row inserts
-- into an index on a random key (the session), which dirtied a page per event and wrote
-- each page to the WAL on every commit; a staged batch is one row appended at the end.
-- The delivery moves staged batches into webhook_outbox, in id order, as it claims: an
-- event is durable once staged, and its order per session is the order of the batches.
CREATE TABLE webhook_outbox_staged (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    publisher_id TEXT NOT NULL,
    -- How many events `batch` holds (the cap counts them).
    events       INTEGER NOT NULL,
    -- A JSON array of [message_id, ordering_key, event_type, body, created_at].
    batch        TEXT NOT NULL
);

CREATE INDEX webhook_outbox_staged_publisher ON webhook_outbox_staged (publisher_id);

-- Staged events count against the publisher's cap like rows do; moving a batch into
-- webhook_outbox adds its rows there and takes them off here.
CREATE TRIGGER webhook_outbox_staged_counted AFTER INSERT ON webhook_outbox_staged
BEGIN
    INSERT INTO webhook_outbox_counts (publisher_id, held) VALUES (NEW.publisher_id, NEW.events)
        ON CONFLICT (publisher_id) DO UPDATE SET held = held + NEW.events;
END;

CREATE TRIGGER webhook_outbox_staged_uncounted AFTER DELETE ON webhook_outbox_staged
BEGIN
    UPDATE webhook_outbox_counts SET held = held - OLD.events WHERE publisher_id = OLD.publisher_id;
END;
