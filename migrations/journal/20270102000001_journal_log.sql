-- The session journal as a log (src/store/sqlite_journal.rs): each write of the
-- journal appends one row, its changes packed (a put holds a session, a delete ends
-- it), where held_sessions took a row per session, inserted and then deleted.
-- `count`: the changes in the row. The server moves the rows of held_sessions into
-- the log when it opens the file, and empties that table.
CREATE TABLE journal_log (
    seq     INTEGER PRIMARY KEY,
    changes BLOB NOT NULL,
    count   INTEGER NOT NULL
);
