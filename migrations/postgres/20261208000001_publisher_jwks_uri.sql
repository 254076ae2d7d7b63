-- A publisher may have its customer tokens verified by a JWKS (file:// or https://
-- URI, keys chosen by the token's kid) instead of one verification_key.
ALTER TABLE publishers ADD COLUMN jwks_uri TEXT;
