-- 0007_mtls_client_auth.sql - client authentication by TLS client certificate (RFC 8705
-- section 2): tls_client_auth and self_signed_tls_client_auth, and the certificate
-- thumbprint that binds a pushed access token
--
-- A tls_client_auth client registers exactly one expected subject member of its
-- certificate (RFC 8705 section 2.1.2): the subject DN (stored as cibad prints it, in
-- RFC 2253 order) or one subjectAltName entry. A self_signed_tls_client_auth client
-- registers its certificate's public key in jwks or jwks_uri (section 2.2). Neither has
-- a secret or a signing alg.

ALTER TABLE client
    ADD COLUMN tls_client_auth_subject_dn text,
    ADD COLUMN tls_client_auth_san_dns text,
    ADD COLUMN tls_client_auth_san_uri text,
    ADD COLUMN tls_client_auth_san_ip text,    -- as inet_ntop writes it
    ADD COLUMN tls_client_auth_san_email text;

ALTER TABLE client DROP CONSTRAINT client_token_endpoint_auth_method_check;
ALTER TABLE client ADD CONSTRAINT client_token_endpoint_auth_method_check
    CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post',
                                          'client_secret_jwt', 'private_key_jwt',
                                          'tls_client_auth',
                                          'self_signed_tls_client_auth'));

-- Each method has exactly the credentials it uses, as in 0002_client_auth.sql, and only
-- tls_client_auth has a subject member. coalesce turns the NULL of a comparison with a
-- missing value into a failed check.
ALTER TABLE client DROP CONSTRAINT client_auth_credentials;
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
        WHEN 'tls_client_auth' THEN
            num_nonnulls(tls_client_auth_subject_dn, tls_client_auth_san_dns,
                         tls_client_auth_san_uri, tls_client_auth_san_ip,
                         tls_client_auth_san_email) = 1
            AND secret_hash IS NULL AND client_secret_sealed IS NULL
            AND jwks IS NULL AND jwks_uri IS NULL
            AND token_endpoint_auth_signing_alg IS NULL
        WHEN 'self_signed_tls_client_auth' THEN
            (jwks IS NULL) <> (jwks_uri IS NULL) AND secret_hash IS NULL
            AND client_secret_sealed IS NULL
            AND token_endpoint_auth_signing_alg IS NULL
        ELSE
            secret_hash IS NOT NULL AND client_secret_sealed IS NULL
            AND jwks IS NULL AND jwks_uri IS NULL
            AND token_endpoint_auth_signing_alg IS NULL
    END
    AND (token_endpoint_auth_method = 'tls_client_auth'
         OR num_nonnulls(tls_client_auth_subject_dn, tls_client_auth_san_dns,
                         tls_client_auth_san_uri, tls_client_auth_san_ip,
                         tls_client_auth_san_email) = 0), false));

-- The x5t#S256 (base64url of the SHA-256 of the DER certificate) of the certificate the
-- client authenticated with at the backchannel endpoint. A push client never calls the
-- token endpoint, so the access token pushed to it is bound to this certificate.
ALTER TABLE auth_req
    ADD COLUMN cnf_x5t_s256 text CHECK (cnf_x5t_s256 ~ '^[A-Za-z0-9_-]{43}$');
