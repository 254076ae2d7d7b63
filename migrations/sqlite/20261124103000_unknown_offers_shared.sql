-- unknownOffers gains "shared" (the new default: a customer's unknown offers share
-- ONE pool) and "each" (the old "default": a pool per unknown offer). Rows that
-- say "default" become "each", so stored publishers keep their behaviour; the
-- CHECK still admits "default" so a node running the previous release can go on
-- writing during a rolling upgrade (it is read back as "each").
--
-- SQLite cannot alter a CHECK constraint: both tables are rebuilt. offers is copied
-- aside and dropped first, because dropping publishers while offers references it
-- would delete every offer through ON DELETE CASCADE (and PRAGMA foreign_keys
-- cannot be switched off inside the migration's transaction).

CREATE TABLE publishers_before_shared AS SELECT * FROM publishers;
CREATE TABLE offers_before_shared AS SELECT * FROM offers;
DROP TABLE offers;
DROP TABLE publishers;

CREATE TABLE publishers (
    id                    TEXT PRIMARY KEY NOT NULL,
    enabled               INTEGER NOT NULL DEFAULT 1,
    takeover_enabled      INTEGER NOT NULL DEFAULT 1,
    default_session_limit INTEGER NOT NULL DEFAULT 1 CHECK (default_session_limit >= 0),
    unknown_offers        TEXT NOT NULL DEFAULT 'shared'
        CHECK (unknown_offers IN ('shared', 'each', 'reject', 'default')),
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

INSERT INTO publishers
    (id, enabled, takeover_enabled, default_session_limit, unknown_offers, verification_key,
     created_at, updated_at)
SELECT id, enabled, takeover_enabled, default_session_limit,
       CASE unknown_offers WHEN 'default' THEN 'each' ELSE unknown_offers END,
       verification_key, created_at, updated_at
FROM publishers_before_shared;

INSERT INTO offers (publisher_id, id, session_limit, tags, takeover_enabled)
SELECT publisher_id, id, session_limit, tags, takeover_enabled FROM offers_before_shared;

DROP TABLE offers_before_shared;
DROP TABLE publishers_before_shared;
