-- The session journal inserts a row for every session granted and deletes it when
-- the session ends, thousands a second under load. Keyed by the session's random id
-- (with a hidden rowid and a second B-tree for the key), each of those lands on a
-- random page of both trees, so every flush rewrote most of the table's pages into
-- the WAL once the table held a few hundred thousand rows (bench/analysis.md,
-- "Round three: the session journal"). Keyed by (created_at, session_id) WITHOUT
-- ROWID, new rows go to the last pages and sessions mostly end oldest first, so a
-- flush touches a few pages at both ends of one tree.
CREATE TABLE held_sessions_by_age (
    created_at   INTEGER NOT NULL,
    session_id   TEXT NOT NULL,
    publisher_id TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    offer_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (created_at, session_id)
) WITHOUT ROWID;

INSERT INTO held_sessions_by_age
    (created_at, session_id, publisher_id, customer_id, offer_id, name, state, expires_at)
SELECT created_at, session_id, publisher_id, customer_id, offer_id, name, state, expires_at
FROM held_sessions;

DROP TABLE held_sessions;
ALTER TABLE held_sessions_by_age RENAME TO held_sessions;
