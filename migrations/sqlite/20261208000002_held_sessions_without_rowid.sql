-- The session journal (storage.journal) writes a row when a session is granted and
-- deletes it when the session ends, a batch every second. With a TEXT primary key,
-- a rowid table keeps two b-trees (the rows and an index on session_id) and every
-- write touches both; WITHOUT ROWID keeps one, keyed by session_id.
--
-- The rows are the sessions held: written as they come and go (or at a graceful
-- shutdown with the journal off), read at start.
CREATE TABLE held_sessions_by_id (
    session_id   TEXT PRIMARY KEY NOT NULL,
    publisher_id TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    offer_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO held_sessions_by_id
    (session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at)
SELECT session_id, publisher_id, customer_id, offer_id, name, state, expires_at, created_at
FROM held_sessions;

DROP TABLE held_sessions;
ALTER TABLE held_sessions_by_id RENAME TO held_sessions;
