-- Publisher and offer settings (PROTOCOL part 3), the server's own secrets, and
-- the sessions saved across a graceful restart.

CREATE TABLE publishers (
    id                    TEXT PRIMARY KEY NOT NULL,
    enabled               INTEGER NOT NULL DEFAULT 1,
    takeover_enabled      INTEGER NOT NULL DEFAULT 1,
    default_session_limit INTEGER NOT NULL DEFAULT 1 CHECK (default_session_limit >= 0),
    unknown_offers        TEXT NOT NULL DEFAULT 'default' CHECK (unknown_offers IN ('default', 'reject')),
    -- HMAC secret or PEM public key verifying this publisher's customer tokens.
    verification_key      TEXT,
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE offers (
    publisher_id     TEXT NOT NULL REFERENCES publishers (id) ON DELETE CASCADE,
    id               TEXT NOT NULL,
    session_limit    INTEGER NOT NULL CHECK (session_limit >= 0),
    -- JSON array of strings.
    tags             TEXT NOT NULL DEFAULT '[]',
    -- NULL: the publisher's setting applies.
    takeover_enabled INTEGER,
    PRIMARY KEY (publisher_id, id)
);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Written at graceful shutdown, read and emptied at start.
CREATE TABLE held_sessions (
    session_id   TEXT PRIMARY KEY NOT NULL,
    publisher_id TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    offer_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
