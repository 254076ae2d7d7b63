-- Publisher and offer settings (PROTOCOL part 3), the server's own secrets, and
-- the sessions saved across a graceful restart. The same schema as
-- migrations/sqlite, in PostgreSQL's own types; shared by every node of a cluster.
--
-- Session limits are `u32` in the server, so they are BIGINT checked to the u32
-- range: INTEGER would refuse limits above 2^31 - 1 that SQLite accepts.

CREATE TABLE publishers (
    id                    TEXT PRIMARY KEY,
    enabled               BOOLEAN NOT NULL DEFAULT TRUE,
    takeover_enabled      BOOLEAN NOT NULL DEFAULT TRUE,
    default_session_limit BIGINT NOT NULL DEFAULT 1
        CHECK (default_session_limit BETWEEN 0 AND 4294967295),
    unknown_offers        TEXT NOT NULL DEFAULT 'default'
        CHECK (unknown_offers IN ('default', 'reject')),
    -- HMAC secret or PEM public key verifying this publisher's customer tokens.
    verification_key      TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE offers (
    publisher_id     TEXT NOT NULL REFERENCES publishers (id) ON DELETE CASCADE,
    id               TEXT NOT NULL,
    session_limit    BIGINT NOT NULL CHECK (session_limit BETWEEN 0 AND 4294967295),
    tags             TEXT[] NOT NULL DEFAULT '{}',
    -- NULL: the publisher's setting applies.
    takeover_enabled BOOLEAN,
    PRIMARY KEY (publisher_id, id)
);

CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Written at graceful shutdown, read and emptied at start. Times are Unix milliseconds,
-- as the session store keeps them.
CREATE TABLE held_sessions (
    session_id   TEXT PRIMARY KEY,
    publisher_id TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    offer_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL,
    expires_at   BIGINT NOT NULL CHECK (expires_at >= 0),
    created_at   BIGINT NOT NULL CHECK (created_at >= 0)
);
