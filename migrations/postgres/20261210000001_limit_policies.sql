-- Limit policies (issue 13, drisc extensions); the same as migrations/sqlite's:
-- - on_limit: what a full pool does with one more session ('reject', 'evict_oldest',
--   'monitor'); on a publisher its default, on an offer NULL means "the publisher's".
--   No CHECK: a later release may add a policy, and a node of this one reads an
--   unknown value as 'reject' (the DRISC behaviour) during a rolling upgrade.
-- - customer_session_limit: the household cap, sessions of one customer across all
--   offers; NULL: no cap.
-- - customer_overrides: one customer's own limit on one offer, until expires_at
--   (Unix milliseconds; NULL: until removed). Removed with its offer.

ALTER TABLE publishers ADD COLUMN on_limit TEXT NOT NULL DEFAULT 'reject';
ALTER TABLE publishers ADD COLUMN customer_session_limit BIGINT
    CHECK (customer_session_limit IS NULL OR customer_session_limit BETWEEN 0 AND 4294967295);
ALTER TABLE offers ADD COLUMN on_limit TEXT;

CREATE TABLE customer_overrides (
    publisher_id  TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    offer_id      TEXT NOT NULL,
    session_limit BIGINT NOT NULL CHECK (session_limit BETWEEN 0 AND 4294967295),
    expires_at    BIGINT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (publisher_id, customer_id, offer_id),
    FOREIGN KEY (publisher_id, offer_id) REFERENCES offers (publisher_id, id) ON DELETE CASCADE
);
-- "Does this publisher have any override?" is asked on every catalog load.
CREATE INDEX customer_overrides_by_offer ON customer_overrides (publisher_id, offer_id);
