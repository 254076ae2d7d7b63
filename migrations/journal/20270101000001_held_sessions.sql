-- The session journal, in a database file of its own (`<settings file>.sessions.db`):
-- its writes, tens of thousands of rows a second at full load, hold only this file's
-- write lock, so a settings or webhook-outbox write never waits behind them. The
-- table is the settings database's `held_sessions` as the held_sessions_by_age
-- migration left it: keyed by (created_at, session_id) WITHOUT ROWID, so new rows go
-- to the last pages and sessions mostly end oldest first.
CREATE TABLE held_sessions (
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
