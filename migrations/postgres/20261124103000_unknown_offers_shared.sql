-- unknownOffers gains "shared" (the new default: a customer's unknown offers share
-- ONE pool) and "each" (the old "default": a pool per unknown offer). Rows that
-- say "default" become "each", so stored publishers keep their behaviour; the
-- CHECK still admits "default" so a node running the previous release can go on
-- writing during a rolling upgrade (it is read back as "each").

ALTER TABLE publishers DROP CONSTRAINT IF EXISTS publishers_unknown_offers_check;
UPDATE publishers SET unknown_offers = 'each' WHERE unknown_offers = 'default';
ALTER TABLE publishers
    ADD CONSTRAINT publishers_unknown_offers_check
        CHECK (unknown_offers IN ('shared', 'each', 'reject', 'default')),
    ALTER COLUMN unknown_offers SET DEFAULT 'shared';
