"""SQL of the booking core: the booking functions, slot and order look-ups, the day's index rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from app.booking.index import BookedRow, DayIndex, LockRow, SlotRow
from app.db.pool import acquired, database_errors, unavailable_errors
from app.security.actor import Actor


async def book(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    hold_id: str,
    patient_id: int,
    channel: str,
    items: Sequence[dict[str, Any]],
    deadline: datetime,
    actor: Actor,
    reason: str,
    version: int | None = None,
    overrides: Sequence[dict[str, Any]] = (),
) -> list[asyncpg.Record]:
    async with acquired(conn) as c, database_errors():
        return await c.fetch(
            "SELECT * FROM hy_book($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            hold_id,
            patient_id,
            channel,
            list(items),
            deadline,
            actor.user_id,
            actor.role,
            actor.terminal,
            reason,
            version,
            list(overrides),
        )


async def book_batch(conn: asyncpg.Connection | asyncpg.Pool, batch: Sequence[dict[str, Any]]) -> list[asyncpg.Record]:
    """Several bookings in one transaction (sql/0018_group_commit.sql): rows (k, the appointment's
    columns) per committed booking, one row (k, err_*) per refused one. Errors of the whole call
    (PostgreSQL gone) are translated as usual."""
    async with acquired(conn) as c, database_errors():
        return await c.fetch("SELECT * FROM hy_book_batch($1)", list(batch))


async def book_set(conn: asyncpg.Connection | asyncpg.Pool, batch: Sequence[dict[str, Any]]) -> list[asyncpg.Record]:
    """book_batch's contract, set-based (hy_book_set, sql/0018): single-slot bookings of distinct
    patients and orders only. An error of the call other than a lost server is raised as asyncpg
    raised it: the batch is then undecided, and nothing of it was written."""
    async with acquired(conn) as c, unavailable_errors():
        return await c.fetch("SELECT * FROM hy_book_set($1)", list(batch))


async def cancel(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    appointment_id: int,
    patient_id: int | None,
    channel: str,
    actor: Actor,
    reason: str,
) -> asyncpg.Record:
    async with database_errors():
        row = await conn.fetchrow(
            "SELECT * FROM hy_cancel($1, $2, $3, $4, $5, $6, $7)",
            appointment_id,
            patient_id,
            actor.user_id,
            actor.role,
            channel,
            actor.terminal,
            reason,
        )
    assert row is not None
    return row


async def reschedule(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    appointment_id: int,
    patient_id: int | None,
    new_slot_id: int,
    pool: str,
    hold_id: str,
    deadline: datetime,
    channel: str,
    actor: Actor,
    reason: str,
    version: int | None = None,
    overrides: Sequence[dict[str, Any]] = (),
) -> asyncpg.Record:
    async with acquired(conn) as c, database_errors():
        row = await c.fetchrow(
            "SELECT * FROM hy_reschedule($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            appointment_id,
            patient_id,
            new_slot_id,
            pool,
            hold_id,
            deadline,
            actor.user_id,
            actor.role,
            channel,
            actor.terminal,
            reason,
            version,
            list(overrides),
        )
    assert row is not None
    return row


async def orders_by_id(conn: asyncpg.Connection | asyncpg.Pool, order_ids: Sequence[int]) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT id, order_no, patient_id, exam_code, status, patient_class, priority, ward_id,
                      ordering_department_id
                 FROM exam_order WHERE id = ANY($1::bigint[])""",
            list(order_ids),
        )


async def slots_by_id(conn: asyncpg.Connection | asyncpg.Pool, slot_ids: Sequence[int]) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT id, hospital_id, resource_id, day, starts_at, ends_at, capacity, booked, status
                 FROM slot WHERE id = ANY($1::bigint[])""",
            list(slot_ids),
        )


async def appointment_by_id(conn: asyncpg.Connection | asyncpg.Pool, appointment_id: int) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT a.*, o.order_no FROM appointment a JOIN exam_order o ON o.id = a.order_id
                WHERE a.id = $1""",
            appointment_id,
        )


async def hold_committed(conn: asyncpg.Connection | asyncpg.Pool, hold_id: str) -> bool:
    """True when a booking made under this hold is in PostgreSQL (whatever happened to it since)."""
    async with database_errors():
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM appointment WHERE hold_id = $1)", hold_id))


async def hold_outcome(conn: asyncpg.Connection | asyncpg.Pool, hold_id: str) -> tuple[int, int]:
    """The appointments PostgreSQL holds under this hold: (how many, how many still booked)."""
    async with database_errors():
        row = await conn.fetchrow(
            "SELECT count(*) AS made, count(*) FILTER (WHERE status = 'booked') AS live FROM appointment"
            " WHERE hold_id = $1",
            hold_id,
        )
    return int(row["made"]), int(row["live"])


async def day_index(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, day: date) -> DayIndex:
    """Everything the Redis index of one day is rebuilt from, read in one snapshot."""
    async with database_errors():
        if isinstance(conn, asyncpg.Pool):
            async with conn.acquire() as c:
                return await day_index(c, hospital_id, day)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            slots = await conn.fetch(
                """SELECT s.id, s.resource_id, extract(epoch FROM s.starts_at)::bigint AS s,
                          extract(epoch FROM s.ends_at)::bigint AS e, s.capacity, s.quotas, s.booked, s.status,
                          r.department_id
                     FROM slot s JOIN resource r ON r.id = s.resource_id
                    WHERE s.hospital_id = $1 AND s.day = $2 ORDER BY s.resource_id, s.starts_at""",
                hospital_id,
                day,
            )
            booked = await conn.fetch(
                """SELECT slot_id, patient_id, exam_code, order_id, pool, hold_id FROM appointment
                    WHERE hospital_id = $1 AND day = $2 AND status = 'booked'""",
                hospital_id,
                day,
            )
            locks = await conn.fetch(
                """SELECT s.id AS slot_id, l.channels FROM slot_lock l
                     JOIN slot s ON s.resource_id = l.resource_id AND s.starts_at < l.ends_at
                                AND l.starts_at < s.ends_at
                    WHERE l.hospital_id = $1 AND s.day = $2 AND l.released_at IS NULL""",
                hospital_id,
                day,
            )
    return DayIndex(
        day=day,
        slots=[
            SlotRow(
                r["id"],
                r["resource_id"],
                r["s"],
                r["e"],
                r["capacity"],
                dict(r["quotas"]),
                r["booked"],
                r["status"],
                r["department_id"],
            )
            for r in slots
        ],
        booked=[
            BookedRow(r["slot_id"], r["patient_id"], r["exam_code"], r["order_id"], r["pool"], r["hold_id"])
            for r in booked
        ],
        locks=[LockRow(r["slot_id"], list(r["channels"]) if r["channels"] is not None else None) for r in locks],
    )


async def slot_counts(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, start: date, end: date
) -> list[asyncpg.Record]:
    """Every slot of the days from `start` to `end`: day, id, booked, capacity, status (the
    counters the Redis index mirrors; app/booking/reconcile.py's drift check)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT day, id, booked, capacity, status FROM slot
                WHERE hospital_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, id""",
            hospital_id,
            start,
            end,
        )


async def days_with_slots(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, start: date, end: date
) -> list[date]:
    async with database_errors():
        rows = await conn.fetch(
            "SELECT DISTINCT day FROM slot WHERE hospital_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
            hospital_id,
            start,
            end,
        )
    return [r["day"] for r in rows]


async def check_request(
    conn: asyncpg.Connection | asyncpg.Pool, order_ids: Sequence[int], slot_ids: Sequence[int]
) -> list[asyncpg.Record]:
    """Per requested (order, slot) pair, in request order: the order's patient, exam and status,
    the slot's day, and whether the slot's resource can perform the exam (NULLs when not found)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT req.n, o.patient_id, o.exam_code, o.status, s.day, s.resource_id,
                      extract(epoch FROM s.starts_at)::bigint AS s, extract(epoch FROM s.ends_at)::bigint AS e,
                      EXISTS (SELECT 1 FROM exam_capability c
                               WHERE c.exam_code = o.exam_code AND c.resource_id = s.resource_id) AS capable
                 FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS req(order_id, slot_id, n)
                 LEFT JOIN exam_order o ON o.id = req.order_id
                 LEFT JOIN slot s ON s.id = req.slot_id
                ORDER BY req.n""",
            list(order_ids),
            list(slot_ids),
        )


# A booking's check rows, and its rule context: (booking version, latest facts, live appointments).
BookingContext = tuple[list[asyncpg.Record], tuple[int, dict[str, Any], list[dict[str, Any]]]]


async def booking_context(
    conn: asyncpg.Connection | asyncpg.Pool,
    patient_id: int,
    order_ids: Sequence[int],
    slot_ids: Sequence[int],
    reach: timedelta,
) -> BookingContext:
    """One round trip for a booking's checks (hy_booking_context_batch, sql/0018, with one element):
    `check_request`'s rows (per requested pair, in request order) and `rules_repo.rule_context`'s
    (booking version, latest facts, live appointments) over the requested slots' span widened by
    `reach` on both sides."""
    (context,) = await booking_contexts(conn, [(patient_id, order_ids, slot_ids, reach)])
    return context


def context_of(rows: list[asyncpg.Record]) -> BookingContext:
    first = rows[0] if rows else None
    if first is None or first["booking_version"] is None:
        return rows, (0, {}, [])
    return rows, (int(first["booking_version"]), dict(first["facts"]), list(first["appointments"]))


async def booking_contexts(
    conn: asyncpg.Connection | asyncpg.Pool, batch: Sequence[tuple[int, Sequence[int], Sequence[int], timedelta]]
) -> list[BookingContext]:
    """booking_context for one or several bookings in one query (hy_booking_context_batch, sql/0018):
    per (patient, order ids, slot ids, reach), in order."""
    async with database_errors():
        rows = await conn.fetch(
            "SELECT * FROM hy_booking_context_batch($1)",
            [
                {"k": k, "patient_id": p, "order_ids": list(o), "slot_ids": list(s), "reach": f"{r.total_seconds()} s"}
                for k, (p, o, s, r) in enumerate(batch)
            ],
        )
    got: list[list[asyncpg.Record]] = [[] for _ in batch]
    for r in rows:
        got[r["k"]].append(r)
    return [context_of(g) for g in got]


async def slip_rows(conn: asyncpg.Connection | asyncpg.Pool, appointment_ids: list[int]) -> list[asyncpg.Record]:
    """What a slip prints for each appointment, in time order."""
    async with database_errors():
        return await conn.fetch(
            """SELECT a.id, a.patient_id, a.status, a.starts_at, a.ends_at, e.name AS exam_name, e.prep_text,
                      r.name AS resource_name, r.location, p.name AS patient_name, p.mrn, h.name AS hospital_name
                 FROM appointment a
                 JOIN exam_type e ON e.code = a.exam_code
                 JOIN resource r ON r.id = a.resource_id
                 JOIN patient p ON p.id = a.patient_id
                 JOIN hospital h ON h.id = a.hospital_id
                WHERE a.id = ANY($1::bigint[]) ORDER BY a.starts_at, a.id""",
            appointment_ids,
        )


async def live_in_window(
    conn: asyncpg.Connection | asyncpg.Pool,
    resource_id: str,
    starts_at: datetime,
    ends_at: datetime,
    channels: list[str] | None,
) -> list[asyncpg.Record]:
    """Live appointments on the resource overlapping the window (of the channels, or all)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT id, patient_id, order_id, exam_code, slot_id, day, starts_at, ends_at, channel
                 FROM appointment
                WHERE resource_id = $1 AND status = 'booked' AND starts_at < $3 AND $2 < ends_at
                  AND ($4::text[] IS NULL OR channel = ANY($4::text[]))
                ORDER BY starts_at, id""",
            resource_id,
            starts_at,
            ends_at,
            channels,
        )


async def insert_notice(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, payload: dict[str, Any]) -> None:
    """A message for the patient (SMS / WeChat), delivered by the outbox relay."""
    async with database_errors():
        await conn.execute(
            "INSERT INTO outbox (topic, aggregate_id, payload) VALUES ('patient.notice', $1, $2)",
            str(patient_id),
            payload,
        )
