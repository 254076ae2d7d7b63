-- The outbox writer's batches, one row per batch and publisher, in the packed form
-- SQLite's outbox stages (issue 13: webhooks must not slow a saturated node). Writing
-- each event as its own webhook_outbox row cost the writer a rendered body and seven
-- array elements an event, and PostgreSQL a heap row and four index entries (one keyed
-- by the random session id) an event; a staged batch is one row. The delivery moves
-- staged batches into webhook_outbox (rows with rendered bodies, which a node of any
-- version delivers), in id order and one node at a time, before it claims: an event is
-- durable once staged, and its order per session is the order of the batches.
CREATE TABLE webhook_outbox_staged (
    id           BIGSERIAL PRIMARY KEY,
    publisher_id TEXT NOT NULL,
    -- How many events `batch` holds (the cap counts them).
    events       BIGINT NOT NULL,
    batch        BYTEA NOT NULL,
    -- The batch's layout (src/store/outbox/staged.rs): 4, packed.
    form         BIGINT NOT NULL
);

CREATE INDEX webhook_outbox_staged_publisher ON webhook_outbox_staged (publisher_id);

-- Staged events count against the publisher's cap like rows do; moving a batch into
-- webhook_outbox adds its rows there and takes them off here. Per statement, as the
-- rows' counts are.
CREATE FUNCTION webhook_outbox_staged_count_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_outbox_counts (publisher_id, held)
        SELECT publisher_id, SUM(events) FROM inserted GROUP BY publisher_id
        ON CONFLICT (publisher_id) DO UPDATE SET held = webhook_outbox_counts.held + excluded.held;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION webhook_outbox_staged_count_deleted() RETURNS trigger AS $$
BEGIN
    UPDATE webhook_outbox_counts c SET held = c.held - d.n
        FROM (SELECT publisher_id, SUM(events) AS n FROM deleted GROUP BY publisher_id) d
        WHERE c.publisher_id = d.publisher_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER webhook_outbox_staged_counted_insert AFTER INSERT ON webhook_outbox_staged
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_staged_count_inserted();

CREATE TRIGGER webhook_outbox_staged_counted_delete AFTER DELETE ON webhook_outbox_staged
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_staged_count_deleted();
