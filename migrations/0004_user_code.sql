-- 0004_user_code.sql - user codes (CIBA Core 1.0 section 7.1): the clients that must send
-- one and each user's code, stored only as a salted PBKDF2-HMAC-SHA256 hash
--
-- user_code_failures counts wrong codes since the code was last set or matched; at the
-- limit (CIBA_USER_CODE_MAX_FAILURES in ciba/) every code is rejected until the operator
-- sets a new one with `cibad user set-code`.

ALTER TABLE client
    ADD COLUMN backchannel_user_code_parameter boolean NOT NULL DEFAULT false;

ALTER TABLE app_user
    ADD COLUMN user_code_hash text,
    ADD COLUMN user_code_failures integer NOT NULL DEFAULT 0
        CHECK (user_code_failures >= 0);
