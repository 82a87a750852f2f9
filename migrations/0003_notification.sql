-- 0003_notification.sql - ping and push delivery: the request's delivery mode, its sealed
-- notification secrets, and the outbox of notifications waiting for delivery
--
-- A notification row is inserted by the same statement that decides the request
-- (approval, denial, expiry, SMS failure), so a crash after the decision cannot lose
-- it. Any instance delivers due rows: it claims them with FOR UPDATE SKIP LOCKED and
-- moves next_attempt_at past its attempt, which works as a lease. The secrets column
-- holds the auth_req_id and the client_notification_token, and payload the pushed token
-- response; both are sealed with AES-256-GCM under a key derived from the server
-- secret, never stored in clear.

ALTER TABLE client ADD CONSTRAINT client_notification_endpoint_required
    CHECK (backchannel_token_delivery_mode = 'poll'
           OR backchannel_client_notification_endpoint IS NOT NULL);

ALTER TABLE auth_req
    ADD COLUMN delivery_mode text NOT NULL DEFAULT 'poll'
        CHECK (delivery_mode IN ('poll', 'ping', 'push')),
    -- Sealed JSON {"auth_req_id", "client_notification_token"}; ping and push only.
    ADD COLUMN notification_secrets text,
    ADD CONSTRAINT auth_req_notification_secrets_required
        CHECK (delivery_mode = 'poll' OR notification_secrets IS NOT NULL);

CREATE TABLE notification (
    id bigserial PRIMARY KEY,
    auth_req_id_hash text NOT NULL,     -- no foreign key: the sweep may purge the request first
    client_id text NOT NULL REFERENCES client ON DELETE CASCADE,
    mode text NOT NULL CHECK (mode IN ('ping', 'push')),
    event text NOT NULL CHECK (event IN ('approved', 'denied', 'expired', 'failed')),
    detail text,                        -- why a request was denied or failed; never a secret
    secrets text NOT NULL,              -- auth_req.notification_secrets, copied
    payload text,                       -- sealed pushed token response; push approvals only
    request_id text,                    -- the HTTP request that made the decision
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text
);

CREATE INDEX notification_due ON notification (next_attempt_at);
