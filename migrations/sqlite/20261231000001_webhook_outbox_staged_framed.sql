-- The form of a staged batch (issue 13, round three). 1: the JSON array the first
-- version wrote, every body escaped again inside it. 2: the events framed one after
-- the other, each a header line "message_id ordering_key event_type created_at length"
-- and then its body's bytes as they are (see store/outbox/sqlite.rs, `frame`): no
-- escaping on the way in, no JSON to parse on the way out. Rows already staged keep
-- form 1 and are read as such.
ALTER TABLE webhook_outbox_staged ADD COLUMN form INTEGER NOT NULL DEFAULT 1;
