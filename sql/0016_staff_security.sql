-- 0016: staff authentication hardening (等保三级, DOMAIN.md section 7): password age and history,
-- failed-login lockout, TOTP second factor, idle timeout and one live session per account, patient
-- SMS login codes, client certificates of interface systems (mutual TLS).
--
-- Notes:
-- - staff_user.totp_secret holds the base32 TOTP secret as it is: it must be readable to check a
--   code, so a hash will not do. Encrypting it with the field encryption of app/security/crypto.py
--   (AES-GCM) is a follow-up once that module lands.
-- - SMS codes and phone numbers are kept only as SHA-256 digests (a 6-digit code or an 11-digit
--   number can be brute-forced from its digest: the digests keep live codes and numbers off casual
--   reads of the table, the expiry and attempt limits do the rest).

ALTER TABLE staff_user
    ADD COLUMN password_changed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN failed_logins       integer NOT NULL DEFAULT 0,
    ADD COLUMN last_failed_at      timestamptz,
    ADD COLUMN locked_until        timestamptz,
    ADD COLUMN totp_secret         text,   -- enrolled second factor (base32), see the note above
    ADD COLUMN totp_pending_secret text,   -- issued by enrolment, active once a code confirms it
    ADD COLUMN totp_last_step      bigint; -- the last 30 s step accepted: a code is used once

UPDATE staff_user SET password_changed_at = created_at;

-- The passwords an account had before its current one (a change adds the old one), for the rule that
-- a new password is none of the last five (the current one and the four before it).
CREATE TABLE password_history (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES staff_user (id),
    password_hash text NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_history_user ON password_history (user_id, id DESC);

-- restriction: '' a full session; 'totp_pending' the password passed, the code not yet (only
-- POST /api/v1/auth/totp takes it); 'totp_enrol' the role needs a second factor the account has
-- not enrolled; 'password_change' the password is older than 90 days. A restricted session reaches
-- only the routes that declare it (password change, TOTP enrolment, me, logout).
ALTER TABLE staff_session
    ADD COLUMN last_seen_at   timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN idle_timeout_s integer NOT NULL DEFAULT 1800,
    ADD COLUMN restriction    text NOT NULL DEFAULT ''
        CHECK (restriction IN ('', 'totp_pending', 'totp_enrol', 'password_change')),
    ADD COLUMN revoke_reason  text;  -- logout | replaced | idle | password_changed | totp_done
CREATE INDEX staff_session_live ON staff_session (user_id) WHERE revoked_at IS NULL;

-- Patients' SMS login codes (the mobile channel): the latest unexpired, unused one of a phone counts.
CREATE TABLE sms_login_code (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone_hash  text NOT NULL,          -- SHA-256 of the number
    patient_id  bigint NOT NULL REFERENCES patient (id),
    code_hash   text NOT NULL,          -- SHA-256 of salt + code
    salt        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    used_at     timestamptz
);
CREATE INDEX sms_login_code_phone ON sms_login_code (phone_hash, id DESC);

-- Interface systems (HIS, PACS, the insurance gateway...) calling with a client certificate issued by
-- the hospital CA: the certificate's SHA-256 fingerprint names the account (and so the roles) the
-- call acts as.
CREATE TABLE client_certificate (
    fingerprint_sha256 text PRIMARY KEY CHECK (fingerprint_sha256 ~ '^[0-9a-f]{64}$'),
    subject            text NOT NULL,
    user_id            bigint NOT NULL REFERENCES staff_user (id),
    active             boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- The role of interface systems' accounts (app/security/actor.py lists it with the others).
INSERT INTO role (code, name_zh) VALUES ('interface', '接口系统') ON CONFLICT (code) DO NOTHING;
