-- 0005_trusted_issuer.sql - issuers of login_hint_token that the operator trusts, and
-- an email address per user for the issuers that name users by email
--
-- A login_hint_token (CIBA Core 1.0 section 7.1) is a JWT signed by another party, for
-- example an enterprise identity provider, that names the user. cibad accepts one only
-- from an issuer registered here with `cibad issuer add`: its iss value, its public keys
-- (inline, or an https jwks_uri fetched and cached) and the claim that names the user.

CREATE TABLE trusted_issuer (
    issuer text PRIMARY KEY CHECK (length(issuer) BETWEEN 1 AND 255),
    jwks jsonb,                                  -- {"keys":[...]}, public keys only
    jwks_uri text CHECK (length(jwks_uri) BETWEEN 1 AND 2048),
    user_claim text NOT NULL CHECK (user_claim IN ('sub', 'phone_number', 'email')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT trusted_issuer_one_key_source CHECK ((jwks IS NULL) <> (jwks_uri IS NULL))
);

-- Stored lower-cased, so a lookup by the lower-cased claim is exact.
ALTER TABLE app_user
    ADD COLUMN email text UNIQUE
        CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254
               AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$');
