"""SQL of staff authentication hardening (sql/0016_staff_security.sql): lockout counters, password
history, TOTP secrets, session activity and replacement, patients' SMS login codes, client
certificates. Times come from the caller (its clock), so tests can move them."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.db.pool import database_errors
from app.security.crypto import pii_keys

_USER = """SELECT u.id, u.username, u.display_name, u.password_hash, u.department_id, u.patient_id, u.active,
                  u.password_changed_at, u.failed_logins, u.last_failed_at, u.locked_until,
                  u.totp_secret, u.totp_pending_secret, u.totp_last_step,
                  COALESCE(array_agg(r.role_code) FILTER (WHERE r.role_code IS NOT NULL), '{}') AS roles
             FROM staff_user u LEFT JOIN staff_role r ON r.user_id = u.id"""


async def user_for_login(conn: asyncpg.Connection | asyncpg.Pool, username: str) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(_USER + " WHERE u.username = $1 GROUP BY u.id", username)


async def user_by_id(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(_USER + " WHERE u.id = $1 GROUP BY u.id", user_id)


async def record_failure(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: int, now: datetime, max_failures: int, window_s: int, lock_s: int
) -> datetime | None:
    """Count a failed login (failures older than `window_s` start the count afresh); the
    `max_failures`-th locks the account for `lock_s`. Returns the lock's end when it locks."""
    async with database_errors():
        return await conn.fetchval(
            """WITH n AS (
                   SELECT id,
                          CASE WHEN last_failed_at IS NULL
                                 OR last_failed_at < $2::timestamptz - make_interval(secs => $4::float8)
                               THEN 1 ELSE failed_logins + 1 END AS failures
                     FROM staff_user WHERE id = $1 FOR UPDATE)
               UPDATE staff_user u
                  SET failed_logins = CASE WHEN n.failures >= $3 THEN 0 ELSE n.failures END,
                      last_failed_at = CASE WHEN n.failures >= $3 THEN NULL ELSE $2 END,
                      locked_until = CASE WHEN n.failures >= $3 THEN $2::timestamptz + make_interval(secs => $5::float8)
                                          ELSE u.locked_until END
                 FROM n WHERE u.id = n.id
            RETURNING CASE WHEN n.failures >= $3 THEN u.locked_until END""",
            user_id,
            now,
            max_failures,
            float(window_s),
            float(lock_s),
        )


async def clear_failures(conn: asyncpg.Connection | asyncpg.Pool, user_id: int) -> None:
    async with database_errors():
        await conn.execute(
            """UPDATE staff_user SET failed_logins = 0, last_failed_at = NULL, locked_until = NULL
                WHERE id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)""",
            user_id,
        )


async def recent_password_hashes(conn: asyncpg.Connection | asyncpg.Pool, user_id: int, limit: int) -> list[str]:
    async with database_errors():
        rows = await conn.fetch(
            "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2", user_id, limit
        )
    return [r["password_hash"] for r in rows]


async def set_password(conn: asyncpg.Pool, user_id: int, password_hash: str, old_hash: str, now: datetime) -> list[str]:
    """The new password, the old one into the history, and every session of the account ended;
    returns the ended sessions' token hashes (their cache entries go too)."""
    async with database_errors(), conn.acquire() as c, c.transaction():
        await c.execute(
            "UPDATE staff_user SET password_hash = $2, password_changed_at = $3 WHERE id = $1",
            user_id,
            password_hash,
            now,
        )
        await c.execute(
            "INSERT INTO password_history (user_id, password_hash, set_at) VALUES ($1, $2, $3)",
            user_id,
            old_hash,
            now,
        )
        rows = await c.fetch(
            """UPDATE staff_session SET revoked_at = $2, revoke_reason = 'password_changed'
                WHERE user_id = $1 AND revoked_at IS NULL RETURNING token_hash""",
            user_id,
            now,
        )
    return [r["token_hash"] for r in rows]


async def insert_session(
    conn: asyncpg.Connection | asyncpg.Pool,
    token_hash: str,
    user_id: int,
    now: datetime,
    expires_at: datetime,
    terminal: str,
    ip: str,
    idle_timeout_s: int,
    restriction: str,
) -> None:
    async with database_errors():
        await conn.execute(
            """INSERT INTO staff_session (token_hash, user_id, created_at, expires_at, terminal, ip, last_seen_at,
                                          idle_timeout_s, restriction)
               VALUES ($1, $2, $3, $4, $5, $6, $3, $7, $8)""",
            token_hash,
            user_id,
            now,
            expires_at,
            terminal,
            ip,
            idle_timeout_s,
            restriction,
        )


async def replace_sessions(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: int, keep: str, now: datetime
) -> list[str]:
    """End every other live session of the account (one live session per account); returns their
    token hashes. Pending second-factor sessions are left to expire: they reach nothing."""
    async with database_errors():
        rows = await conn.fetch(
            """UPDATE staff_session SET revoked_at = $3, revoke_reason = 'replaced'
                WHERE user_id = $1 AND revoked_at IS NULL AND token_hash <> $2 AND restriction <> 'totp_pending'
            RETURNING token_hash""",
            user_id,
            keep,
            now,
        )
    return [r["token_hash"] for r in rows]


async def session_row(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str) -> asyncpg.Record | None:
    """A session and its account, live or not (the caller says why it is refused)."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT s.user_id, s.created_at, s.expires_at, s.revoked_at, s.revoke_reason, s.terminal,
                      s.last_seen_at, s.idle_timeout_s, s.restriction, u.username, u.department_id,
                      u.patient_id, u.active,
                      COALESCE(array_agg(r.role_code) FILTER (WHERE r.role_code IS NOT NULL), '{}') AS roles
                 FROM staff_session s JOIN staff_user u ON u.id = s.user_id
                 LEFT JOIN staff_role r ON r.user_id = u.id
                WHERE s.token_hash = $1
                GROUP BY s.token_hash, u.id""",
            token_hash,
        )


async def touch_session(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str, seen_at: datetime) -> bool:
    """Record activity on a live session; False when it is no longer live (ended elsewhere)."""
    async with database_errors():
        status = await conn.execute(
            """UPDATE staff_session SET last_seen_at = GREATEST(last_seen_at, $2)
                WHERE token_hash = $1 AND revoked_at IS NULL""",
            token_hash,
            seen_at,
        )
    return str(status).endswith(" 1")


async def end_session(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str, now: datetime, reason: str) -> None:
    async with database_errors():
        await conn.execute(
            "UPDATE staff_session SET revoked_at = $2, revoke_reason = $3 WHERE token_hash = $1 AND revoked_at IS NULL",
            token_hash,
            now,
            reason,
        )


async def lift_restriction(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str) -> None:
    async with database_errors():
        await conn.execute(
            "UPDATE staff_session SET restriction = '' WHERE token_hash = $1 AND restriction = 'totp_enrol'", token_hash
        )


async def set_totp_pending(conn: asyncpg.Connection | asyncpg.Pool, user_id: int, secret: str) -> None:
    async with database_errors():
        await conn.execute("UPDATE staff_user SET totp_pending_secret = $2 WHERE id = $1", user_id, secret)


async def activate_totp(conn: asyncpg.Connection | asyncpg.Pool, user_id: int, secret: str, step: int) -> bool:
    """The pending secret becomes the account's second factor (if it is still the pending one)."""
    async with database_errors():
        status = await conn.execute(
            """UPDATE staff_user SET totp_secret = totp_pending_secret, totp_pending_secret = NULL,
                      totp_last_step = $3
                WHERE id = $1 AND totp_pending_secret = $2""",
            user_id,
            secret,
            step,
        )
    return str(status).endswith(" 1")


async def use_totp_step(conn: asyncpg.Connection | asyncpg.Pool, user_id: int, step: int) -> bool:
    """Record `step` as used; False when it (or a later one) was used already (a replayed code)."""
    async with database_errors():
        status = await conn.execute(
            """UPDATE staff_user SET totp_last_step = $2
                WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)""",
            user_id,
            step,
        )
    return str(status).endswith(" 1")


async def patients_by_phone(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, phone: str
) -> list[asyncpg.Record]:
    """The patients whose record holds `phone`, found by its keyed blind index (phones are stored
    encrypted only, migration 0015)."""
    async with database_errors():
        return await conn.fetch(
            "SELECT id, name FROM patient WHERE hospital_id = $1 AND phone_idx = $2 ORDER BY id LIMIT 5",
            hospital_id,
            pii_keys().phone_index(phone),
        )


async def latest_sms_code_at(conn: asyncpg.Connection | asyncpg.Pool, phone_hash: str) -> datetime | None:
    async with database_errors():
        return await conn.fetchval(
            "SELECT created_at FROM sms_login_code WHERE phone_hash = $1 ORDER BY id DESC LIMIT 1", phone_hash
        )


async def insert_sms_code(
    conn: asyncpg.Connection,
    phone_hash: str,
    patient_id: int,
    code_hash: str,
    salt: str,
    now: datetime,
    expires_at: datetime,
) -> int:
    """A new code for the phone; earlier unused codes of the phone stop counting."""
    async with database_errors():
        await conn.execute(
            "UPDATE sms_login_code SET used_at = $2 WHERE phone_hash = $1 AND used_at IS NULL", phone_hash, now
        )
        return int(
            await conn.fetchval(
                """INSERT INTO sms_login_code (phone_hash, patient_id, code_hash, salt, created_at, expires_at)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
                phone_hash,
                patient_id,
                code_hash,
                salt,
                now,
                expires_at,
            )
        )


async def live_sms_code(conn: asyncpg.Connection, phone_hash: str, now: datetime) -> asyncpg.Record | None:
    """The phone's current code, locked for the check."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT id, patient_id, code_hash, salt, attempts FROM sms_login_code
                WHERE phone_hash = $1 AND used_at IS NULL AND expires_at > $2
                ORDER BY id DESC LIMIT 1 FOR UPDATE""",
            phone_hash,
            now,
        )


async def sms_code_failed(conn: asyncpg.Connection, code_id: int, max_attempts: int, now: datetime) -> None:
    async with database_errors():
        await conn.execute(
            """UPDATE sms_login_code SET attempts = attempts + 1,
                      used_at = CASE WHEN attempts + 1 >= $2 THEN $3 ELSE used_at END
                WHERE id = $1""",
            code_id,
            max_attempts,
            now,
        )


async def sms_code_used(conn: asyncpg.Connection, code_id: int, now: datetime) -> None:
    async with database_errors():
        await conn.execute("UPDATE sms_login_code SET used_at = $2 WHERE id = $1", code_id, now)


async def certificate_account(
    conn: asyncpg.Connection | asyncpg.Pool, fingerprint_sha256: str
) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT u.id AS user_id, u.username, u.department_id,
                      COALESCE(array_agg(r.role_code) FILTER (WHERE r.role_code IS NOT NULL), '{}') AS roles
                 FROM client_certificate c JOIN staff_user u ON u.id = c.user_id
                 LEFT JOIN staff_role r ON r.user_id = u.id
                WHERE c.fingerprint_sha256 = $1 AND c.active AND u.active
                GROUP BY u.id""",
            fingerprint_sha256,
        )


async def register_certificate(
    conn: asyncpg.Connection | asyncpg.Pool, fingerprint_sha256: str, subject: str, user_id: int
) -> None:
    async with database_errors():
        await conn.execute(
            """INSERT INTO client_certificate (fingerprint_sha256, subject, user_id) VALUES ($1, $2, $3)
               ON CONFLICT (fingerprint_sha256) DO UPDATE SET subject = EXCLUDED.subject,
                      user_id = EXCLUDED.user_id, active = true""",
            fingerprint_sha256.lower(),
            subject,
            user_id,
        )
