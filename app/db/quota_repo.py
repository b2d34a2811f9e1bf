"""SQL of the quota release: rules, and releasing one (day, channel) once."""

from __future__ import annotations

from datetime import date

import asyncpg

from app.db.pool import database_errors


async def active_rules(pool: asyncpg.Pool, hospital_id: str) -> list[asyncpg.Record]:
    async with database_errors():
        return await pool.fetch(
            "SELECT channel, days_before, at_time FROM quota_release_rule WHERE hospital_id = $1 AND active",
            hospital_id,
        )


async def done_days(pool: asyncpg.Pool, hospital_id: str, first: date, last: date) -> set[tuple[date, str]]:
    async with database_errors():
        rows = await pool.fetch(
            "SELECT day, channel FROM quota_release_done WHERE hospital_id = $1 AND day BETWEEN $2 AND $3",
            hospital_id,
            first,
            last,
        )
    return {(r["day"], r["channel"]) for r in rows}


async def release(pool: asyncpg.Pool, hospital_id: str, day: date, channel: str) -> int | None:
    """Shrink the channel's reserved quota of every slot of the day to what it has used, in one
    transaction that also records the release; None when it was released already. The slots' row
    locks order it with concurrent bookings (hy_book updates the same rows)."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        first = await conn.fetchval(
            """INSERT INTO quota_release_done (hospital_id, day, channel, places) VALUES ($1, $2, $3, 0)
               ON CONFLICT DO NOTHING RETURNING true""",
            hospital_id,
            day,
            channel,
        )
        if not first:
            return None
        released: int = await conn.fetchval(
            """WITH used AS (
                   SELECT slot_id, count(*)::int AS n FROM appointment
                    WHERE hospital_id = $1 AND day = $2 AND status = 'booked' AND pool = $3 GROUP BY slot_id),
               target AS (
                   SELECT s.id, (s.quotas ->> $3)::int AS reserved, coalesce(u.n, 0) AS used
                     FROM slot s LEFT JOIN used u ON u.slot_id = s.id
                    WHERE s.hospital_id = $1 AND s.day = $2 AND s.quotas ? $3
                    ORDER BY s.id FOR UPDATE OF s),
               changed AS (
                   UPDATE slot s SET quotas = jsonb_set(s.quotas, ARRAY[$3], to_jsonb(LEAST(t.used, t.reserved)))
                     FROM target t WHERE s.id = t.id AND t.reserved > t.used
                   RETURNING t.reserved - t.used AS freed)
               SELECT coalesce(sum(freed), 0)::int FROM changed""",
            hospital_id,
            day,
            channel,
        )
        await conn.execute(
            "UPDATE quota_release_done SET places = $4 WHERE hospital_id = $1 AND day = $2 AND channel = $3",
            hospital_id,
            day,
            channel,
            released,
        )
        return released
