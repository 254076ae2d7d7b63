-- The outbox's rows per publisher are counted once per statement instead of once
-- per row: a writer's batch is one INSERT of hundreds of rows, and a row-level
-- trigger updated the publisher's count row once for each of them (hundreds of row
-- versions per transaction). The counts already kept stay right: only how they are
-- kept changes.

DROP TRIGGER webhook_outbox_counted ON webhook_outbox;
DROP FUNCTION webhook_outbox_count();

CREATE FUNCTION webhook_outbox_count_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_outbox_counts (publisher_id, held)
        SELECT publisher_id, COUNT(*) FROM inserted GROUP BY publisher_id
        ON CONFLICT (publisher_id) DO UPDATE SET held = webhook_outbox_counts.held + excluded.held;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION webhook_outbox_count_deleted() RETURNS trigger AS $$
BEGIN
    UPDATE webhook_outbox_counts c SET held = c.held - d.n
        FROM (SELECT publisher_id, COUNT(*) AS n FROM deleted GROUP BY publisher_id) d
        WHERE c.publisher_id = d.publisher_id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER webhook_outbox_counted_insert AFTER INSERT ON webhook_outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_count_inserted();

CREATE TRIGGER webhook_outbox_counted_delete AFTER DELETE ON webhook_outbox
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_count_deleted();
