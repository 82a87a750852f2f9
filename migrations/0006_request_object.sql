-- 0006_request_object.sql - signed authentication requests (CIBA Core 1.0 section 7.1.1):
-- the JWS algorithm a client registers for its request objects, and the jti values of
-- request objects already used
--
-- The request object is verified with the client's registered public keys (jwks or
-- jwks_uri), so a client that registers an algorithm must have keys. RS256 is allowed
-- here; whether the server accepts it is the setting request_object_allow_rs256.

ALTER TABLE client
    ADD COLUMN backchannel_authentication_request_signing_alg text
        CHECK (backchannel_authentication_request_signing_alg IN ('ES256', 'PS256', 'RS256'));

ALTER TABLE client ADD CONSTRAINT client_request_signing_keys CHECK (
    backchannel_authentication_request_signing_alg IS NULL
    OR jwks IS NOT NULL OR jwks_uri IS NOT NULL);

-- The jti of every request object accepted, kept until the request object has expired,
-- so each one is used once. The sweep deletes expired rows.
CREATE TABLE request_object_jti (
    client_id text NOT NULL REFERENCES client ON DELETE CASCADE,
    jti text NOT NULL CHECK (length(jti) BETWEEN 1 AND 256),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE INDEX request_object_jti_expiry ON request_object_jti (expires_at);
