-- Each outbox row was indexed four times (issue 13): the primary key, due (claims),
-- key (order per session) and publisher (publisher_id, dead, id). The last served
-- only rare paths: a webhook's deletion, the counts an operator reads, and making
-- room from a full publisher's dead letters. Every row still went into it on insert
-- and came out on delete. Now only dead letters are indexed by publisher (a
-- partial index a live row never enters); the pending count is the kept count
-- (webhook_outbox_counts.held) less the dead letters; a webhook's deletion scans
-- the table, as an operator's rare action may.
CREATE INDEX webhook_outbox_dead_by_publisher ON webhook_outbox (publisher_id, id) WHERE dead;
DROP INDEX webhook_outbox_publisher;
