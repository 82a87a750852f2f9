-- 0002_client_auth.sql - client authentication by signed JWT (RFC 7523): private_key_jwt
-- and client_secret_jwt, and the jti values of client assertions already used
--
-- private_key_jwt clients have no secret: their public keys are registered inline
-- (jwks) or published by the client (jwks_uri). client_secret_jwt needs the secret
-- itself, because the client's HMAC can only be checked with it, so that secret is
-- stored sealed with AES-256-GCM under a key derived from the server secret, as signing
-- keys are, and never as a plain value.

ALTER TABLE client ALTER COLUMN secret_hash DROP NOT NULL;

ALTER TABLE client DROP CONSTRAINT client_token_endpoint_auth_method_check;
ALTER TABLE client ADD CONSTRAINT client_token_endpoint_auth_method_check
    CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post',
                                          'client_secret_jwt', 'private_key_jwt'));

ALTER TABLE client
    ADD COLUMN jwks jsonb,                          -- {"keys":[...]}, public keys only
    ADD COLUMN jwks_uri text,                       -- https:// URL of the client's JWKS
    ADD COLUMN token_endpoint_auth_signing_alg text
        CHECK (token_endpoint_auth_signing_alg IN ('ES256', 'PS256', 'RS256', 'HS256')),
    ADD COLUMN client_secret_sealed text;           -- client_secret_jwt only

-- Each method has exactly the credentials it uses. coalesce turns the NULL of a
-- comparison with a missing value into a failed check.
ALTER TABLE client ADD CONSTRAINT client_auth_credentials CHECK (coalesce(
    CASE token_endpoint_auth_method
        WHEN 'private_key_jwt' THEN
            (jwks IS NULL) <> (jwks_uri IS NULL) AND secret_hash IS NULL
            AND client_secret_sealed IS NULL
            AND token_endpoint_auth_signing_alg IN ('ES256', 'PS256', 'RS256')
        WHEN 'client_secret_jwt' THEN
            client_secret_sealed IS NOT NULL AND secret_hash IS NULL
            AND jwks IS NULL AND jwks_uri IS NULL
            AND token_endpoint_auth_signing_alg = 'HS256'
        ELSE
            secret_hash IS NOT NULL AND client_secret_sealed IS NULL
            AND jwks IS NULL AND jwks_uri IS NULL
            AND token_endpoint_auth_signing_alg IS NULL
    END, false));

-- The jti of every client assertion accepted, kept until the assertion has expired, so
-- each one is used once (OpenID Connect Core 1.0 section 9). The sweep deletes expired
-- rows.
CREATE TABLE client_assertion_jti (
    client_id text NOT NULL REFERENCES client ON DELETE CASCADE,
    jti text NOT NULL CHECK (length(jti) BETWEEN 1 AND 256),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE INDEX client_assertion_jti_expiry ON client_assertion_jti (expires_at);
