"""SQL of display devices and their tokens."""

from __future__ import annotations

import asyncpg

from app.db.pool import database_errors

_COLUMNS = "id, name, scopes, created_by, created_at, revoked_at, revoked_by, last_seen_at"


async def insert(
    pool: asyncpg.Pool, hospital_id: str, name: str, scopes: list[str], token_hash: str, created_by: int | None
) -> asyncpg.Record:
    async with database_errors():
        row: asyncpg.Record = await pool.fetchrow(
            f"""INSERT INTO display_device (hospital_id, name, scopes, token_hash, created_by)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            hospital_id,
            name,
            scopes,
            token_hash,
            created_by,
        )
        return row


async def list_all(pool: asyncpg.Pool, hospital_id: str) -> list[asyncpg.Record]:
    async with database_errors():
        return await pool.fetch(
            f"SELECT {_COLUMNS} FROM display_device WHERE hospital_id = $1 ORDER BY id", hospital_id
        )


async def revoke(pool: asyncpg.Pool, device_id: int, revoked_by: int | None) -> asyncpg.Record | None:
    async with database_errors():
        return await pool.fetchrow(
            f"""UPDATE display_device SET revoked_at = now(), revoked_by = $2
                 WHERE id = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            device_id,
            revoked_by,
        )


async def seen(pool: asyncpg.Pool, token_hash: str, ip: str) -> asyncpg.Record | None:
    """The live (not revoked) device with this token, marked as seen now."""
    async with database_errors():
        return await pool.fetchrow(
            f"""UPDATE display_device SET last_seen_at = now(), last_seen_ip = $2
                 WHERE token_hash = $1 AND revoked_at IS NULL RETURNING {_COLUMNS}""",
            token_hash,
            ip,
        )


async def is_live(pool: asyncpg.Pool, device_id: int) -> bool:
    async with database_errors():
        return bool(
            await pool.fetchval("SELECT revoked_at IS NULL FROM display_device WHERE id = $1", device_id) or False
        )
