"""SQL of staff accounts and sessions."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.db.pool import database_errors


async def user_by_username(conn: asyncpg.Connection | asyncpg.Pool, username: str) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT u.id, u.username, u.display_name, u.password_hash, u.department_id, u.patient_id, u.active,
                      COALESCE(array_agg(r.role_code) FILTER (WHERE r.role_code IS NOT NULL), '{}') AS roles
                 FROM staff_user u LEFT JOIN staff_role r ON r.user_id = u.id
                WHERE u.username = $1 GROUP BY u.id""",
            username,
        )


async def insert_session(
    conn: asyncpg.Connection | asyncpg.Pool, token_hash: str, user_id: int, expires_at: datetime, terminal: str, ip: str
) -> None:
    async with database_errors():
        await conn.execute(
            "INSERT INTO staff_session (token_hash, user_id, expires_at, terminal, ip) VALUES ($1, $2, $3, $4, $5)",
            token_hash,
            user_id,
            expires_at,
            terminal,
            ip,
        )


async def live_session(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT s.expires_at, s.terminal, u.id AS user_id, u.username, u.department_id, u.patient_id,
                      COALESCE(array_agg(r.role_code) FILTER (WHERE r.role_code IS NOT NULL), '{}') AS roles
                 FROM staff_session s JOIN staff_user u ON u.id = s.user_id
                 LEFT JOIN staff_role r ON r.user_id = u.id
                WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.active
                GROUP BY s.token_hash, u.id""",
            token_hash,
        )


async def revoke_session(conn: asyncpg.Connection | asyncpg.Pool, token_hash: str) -> None:
    async with database_errors():
        await conn.execute("UPDATE staff_session SET revoked_at = now() WHERE token_hash = $1", token_hash)


async def ensure_patient_user(conn: asyncpg.Pool, hospital_id: str, patient_id: int, display_name: str) -> int:
    """The account a patient acts through at a kiosk or on the phone (role patient, no password:
    it is reached only through an identity check). Created on first use."""
    async with database_errors(), conn.acquire() as c, c.transaction():
        user_id = await c.fetchval(
            """INSERT INTO staff_user (hospital_id, username, display_name, password_hash, patient_id)
               VALUES ($1, $2, $3, '!', $4)
               ON CONFLICT (username) DO UPDATE SET display_name = EXCLUDED.display_name
               RETURNING id""",
            hospital_id,
            f"p:{patient_id}",
            display_name,
            patient_id,
        )
        await c.execute(
            "INSERT INTO staff_role (user_id, role_code) VALUES ($1, 'patient') ON CONFLICT DO NOTHING", user_id
        )
        return int(user_id)
