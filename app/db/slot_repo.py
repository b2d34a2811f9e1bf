"""SQL for slot templates, slot generation and locks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from app.booking.generation import PlannedSlot, Template
from app.db.pool import database_errors


class GenerationCounts(msgspec.Struct):
    inserted: int = 0
    updated: int = 0


async def active_templates(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> list[Template]:
    async with database_errors():
        rows = await conn.fetch(
            """SELECT t.* FROM slot_template t JOIN resource r ON r.id = t.resource_id
                WHERE t.active AND r.active AND r.hospital_id = $1 ORDER BY t.id""",
            hospital_id,
        )
    return [
        Template(
            r["id"],
            r["resource_id"],
            r["weekday"],
            r["start_time"],
            r["end_time"],
            r["window_min"],
            r["capacity"],
            dict(r["quotas"]),
            r["valid_from"],
            r["valid_to"],
        )
        for r in rows
    ]


async def upsert_slots(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, planned: Sequence[PlannedSlot]
) -> GenerationCounts:
    """Insert missing slots; refresh capacity and quotas of slots nobody has booked yet. A slot
    with a booking, with places added by hand (加号), or whose day's reserves were released already
    is never changed here."""
    if not planned:
        return GenerationCounts()
    async with database_errors():
        rows = await conn.fetch(
            """INSERT INTO slot (hospital_id, resource_id, template_id, day, starts_at, ends_at, capacity, quotas)
               SELECT $1, r, t, d, s, e, c, q::jsonb
                 FROM unnest($2::text[], $3::bigint[], $4::date[], $5::timestamptz[], $6::timestamptz[],
                             $7::int[], $8::text[]) AS p(r, t, d, s, e, c, q)
               ON CONFLICT (resource_id, starts_at) DO UPDATE
                  SET capacity = EXCLUDED.capacity, quotas = EXCLUDED.quotas, ends_at = EXCLUDED.ends_at,
                      template_id = EXCLUDED.template_id
                WHERE slot.booked = 0 AND slot.overbooked = 0
                  AND NOT EXISTS (SELECT 1 FROM quota_release_done r
                                   WHERE r.hospital_id = slot.hospital_id AND r.day = slot.day)
                  AND (slot.capacity, slot.quotas, slot.ends_at, slot.template_id)
                      IS DISTINCT FROM (EXCLUDED.capacity, EXCLUDED.quotas, EXCLUDED.ends_at, EXCLUDED.template_id)
               RETURNING (xmax = 0) AS inserted""",
            hospital_id,
            [p.resource_id for p in planned],
            [p.template_id for p in planned],
            [p.day for p in planned],
            [p.starts_at for p in planned],
            [p.ends_at for p in planned],
            [p.capacity for p in planned],
            [msgspec.json.encode(p.quotas).decode() for p in planned],
        )
    inserted = sum(1 for r in rows if r["inserted"])
    return GenerationCounts(inserted=inserted, updated=len(rows) - inserted)


async def insert_lock(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    hospital_id: str,
    resource_id: str,
    starts_at: datetime,
    ends_at: datetime,
    channels: list[str] | None,
    kind: str,
    reason: str,
    created_by: int | None,
) -> asyncpg.Record:
    async with database_errors():
        row = await conn.fetchrow(
            """INSERT INTO slot_lock (hospital_id, resource_id, starts_at, ends_at, channels, kind, reason, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
            hospital_id,
            resource_id,
            starts_at,
            ends_at,
            channels,
            kind,
            reason,
            created_by,
        )
    assert row is not None
    return row


async def release_lock(
    conn: asyncpg.Connection | asyncpg.Pool, lock_id: int, released_by: int | None
) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """UPDATE slot_lock SET released_at = now(), released_by = $2
                WHERE id = $1 AND released_at IS NULL RETURNING *""",
            lock_id,
            released_by,
        )


async def slots_in_window(
    conn: asyncpg.Connection | asyncpg.Pool, resource_id: str, starts_at: datetime, ends_at: datetime
) -> list[asyncpg.Record]:
    """Slots of the resource overlapping the window, with their live booking counts."""
    async with database_errors():
        return await conn.fetch(
            """SELECT id, day, booked FROM slot
                WHERE resource_id = $1 AND starts_at < $3 AND $2 < ends_at ORDER BY starts_at""",
            resource_id,
            starts_at,
            ends_at,
        )


async def list_locks(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, resource_id: str | None
) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT * FROM slot_lock WHERE hospital_id = $1 AND released_at IS NULL
                  AND ($2::text IS NULL OR resource_id = $2) ORDER BY starts_at""",
            hospital_id,
            resource_id,
        )


async def lock_by_id(conn: asyncpg.Connection | asyncpg.Pool, lock_id: int) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow("SELECT * FROM slot_lock WHERE id = $1", lock_id)


async def overbook(
    pool: asyncpg.Pool, slot_id: int, places: int, reason: str, actor_id: int | None, actor_role: str
) -> asyncpg.Record | None:
    """Add `places` to the slot's capacity (they join the open pool), recorded with who and why."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE slot SET capacity = capacity + $2, overbooked = overbooked + $2
                WHERE id = $1 RETURNING id, day, resource_id, capacity, overbooked""",
            slot_id,
            places,
        )
        if row is not None:
            await conn.execute(
                "INSERT INTO slot_overbook (slot_id, places, reason, actor_id, actor_role) VALUES ($1, $2, $3, $4, $5)",
                slot_id,
                places,
                reason,
                actor_id,
                actor_role,
            )
        return row


async def slot_resource(pool: asyncpg.Pool, slot_id: int) -> str | None:
    async with database_errors():
        rid: str | None = await pool.fetchval("SELECT resource_id FROM slot WHERE id = $1", slot_id)
        return rid


async def templates_of(pool: asyncpg.Pool, hospital_id: str, resource_ids: list[str]) -> list[asyncpg.Record]:
    async with database_errors():
        return await pool.fetch(
            """SELECT t.id, t.resource_id, t.weekday, t.start_time, t.end_time, t.window_min, t.capacity, t.quotas,
                      t.active
                 FROM slot_template t JOIN resource r ON r.id = t.resource_id
                WHERE r.hospital_id = $1 AND t.resource_id = ANY($2::text[])
                ORDER BY t.resource_id, t.weekday, t.start_time""",
            hospital_id,
            resource_ids,
        )


async def update_template(
    pool: asyncpg.Pool, template_id: int, capacity: int, quotas: dict[str, int], active: bool
) -> asyncpg.Record | None:
    async with database_errors():
        return await pool.fetchrow(
            """UPDATE slot_template SET capacity = $2, quotas = $3, active = $4 WHERE id = $1
               RETURNING id, resource_id, weekday, start_time, end_time, window_min, capacity, quotas, active""",
            template_id,
            capacity,
            quotas,
            active,
        )


async def template_resource(pool: asyncpg.Pool, template_id: int) -> str | None:
    async with database_errors():
        rid: str | None = await pool.fetchval("SELECT resource_id FROM slot_template WHERE id = $1", template_id)
        return rid
