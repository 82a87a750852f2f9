-- 0001_initial.sql - clients, users, scopes, CIBA requests, SMS quotas, keys, audit log
--
-- Secrets are never stored in clear: client secrets, auth_req_id values, approval link
-- references and one-time codes appear only as hashes or HMACs computed by cibad.

CREATE TABLE client (
    client_id text PRIMARY KEY CHECK (length(client_id) BETWEEN 1 AND 128),
    client_name text NOT NULL CHECK (length(client_name) BETWEEN 1 AND 100),
    secret_hash text NOT NULL,
    token_endpoint_auth_method text NOT NULL
        CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post')),
    scope text NOT NULL,
    backchannel_token_delivery_mode text NOT NULL DEFAULT 'poll'
        CHECK (backchannel_token_delivery_mode IN ('poll', 'ping', 'push')),
    backchannel_client_notification_endpoint text,
    grant_types text NOT NULL DEFAULT 'urn:openid:params:grant-type:ciba',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app_user (
    subject text PRIMARY KEY CHECK (length(subject) BETWEEN 1 AND 255),
    username text UNIQUE CHECK (length(username) BETWEEN 1 AND 255),
    phone_number text NOT NULL UNIQUE CHECK (phone_number ~ '^\+[1-9][0-9]{7,14}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Plain-words descriptions shown on the approval page.
CREATE TABLE scope (
    name text PRIMARY KEY,
    description text NOT NULL
);

INSERT INTO scope (name, description) VALUES
    ('openid', 'Confirm that it is you'),
    ('profile', 'See your name and profile'),
    ('email', 'See your email address'),
    ('phone', 'See your phone number'),
    ('offline_access', 'Keep access while you are away');

CREATE TABLE auth_req (
    auth_req_id_hash text PRIMARY KEY,          -- SHA-256 hex of auth_req_id
    ref_hash text NOT NULL UNIQUE,              -- SHA-256 hex of the approval link reference
    client_id text NOT NULL REFERENCES client ON DELETE CASCADE,
    subject text NOT NULL REFERENCES app_user ON DELETE CASCADE,
    phone_number text NOT NULL,
    scope text NOT NULL,
    binding_message text,
    acr_values text,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'redeemed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    poll_interval integer NOT NULL CHECK (poll_interval > 0), -- CIBA "interval", seconds
    last_polled_at timestamptz,
    otp_hmac bytea NOT NULL,
    otp_generation integer NOT NULL DEFAULT 0,
    otp_expires_at timestamptz NOT NULL,
    otp_sent_at timestamptz NOT NULL DEFAULT now(),
    otp_attempts integer NOT NULL DEFAULT 0,
    decided_at timestamptz,                     -- approved or denied
    redeemed_at timestamptz
);

CREATE INDEX auth_req_open_expiry ON auth_req (expires_at)
    WHERE status IN ('pending', 'approved');
CREATE INDEX auth_req_expiry ON auth_req (expires_at);

-- Codes sent per phone number, for the per-number limit across all requests. Each row
-- keeps the send times inside the current window.
CREATE TABLE sms_quota (
    phone_number text PRIMARY KEY,
    sent_at timestamptz[] NOT NULL
);

CREATE TABLE signing_key (
    kid text PRIMARY KEY,
    alg text NOT NULL CHECK (alg IN ('ES256')),
    private_key text NOT NULL,                  -- sealed with the server secret
    public_jwk jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    retired_at timestamptz                      -- NULL for the current signing key
);

CREATE UNIQUE INDEX signing_key_one_current ON signing_key ((true)) WHERE retired_at IS NULL;

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id text,
    client_id text,
    subject text,
    scope text,
    action text NOT NULL,
    decision text NOT NULL,
    detail text,
    auth_req_id_hash text,
    -- How the user's consent was attested: 'sms_otp' once a code was checked, 'none'
    -- for decisions taken without the user (client errors, expiry, delivery failure).
    attestation text NOT NULL DEFAULT 'none'
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_client ON audit_log (client_id, at);
