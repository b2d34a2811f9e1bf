"""SQL of the closed loop: order transitions, timelines, check-in, the room queues' records,
no-shows and the credit rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from app.db.pool import database_errors
from app.security.actor import Actor


async def transition(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    order_id: int,
    event: str,
    moves: Mapping[str, str],
    actor: Actor,
    channel: str,
    reason: str = "",
    appointment_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> str:
    """Apply one transition under the order's row lock; returns the state it left."""
    async with database_errors():
        state: str = await conn.fetchval(
            "SELECT hy_transition($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            order_id,
            event,
            dict(moves),
            appointment_id,
            actor.user_id,
            actor.role,
            channel,
            actor.terminal,
            reason,
            dict(detail or {}),
        )
    return state


async def order_row(conn: asyncpg.Connection | asyncpg.Pool, order_id: int) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT o.id, o.order_no, o.patient_id, o.exam_code, t.name AS exam_name, o.status,
                      o.patient_class, o.priority, o.paid_at, o.ordered_at, o.ordering_department_id
                 FROM exam_order o JOIN exam_type t ON t.code = o.exam_code WHERE o.id = $1""",
            order_id,
        )


async def timeline(conn: asyncpg.Connection | asyncpg.Pool, order_id: int) -> dict[str, list[asyncpg.Record]]:
    async with database_errors():
        events = await conn.fetch(
            """SELECT id, event, from_status, to_status, appointment_id, actor_id, actor_role, channel, terminal,
                      reason, detail, at
                 FROM order_event WHERE order_id = $1 ORDER BY id""",
            order_id,
        )
        appointments = await conn.fetch(
            """SELECT a.id, a.status, a.slot_id, a.resource_id, r.name AS resource_name, a.starts_at, a.ends_at,
                      a.channel, a.booked_at, a.ended_at, a.end_reason, a.replaced_by
                 FROM appointment a JOIN resource r ON r.id = a.resource_id
                WHERE a.order_id = $1 ORDER BY a.id""",
            order_id,
        )
        queue = await conn.fetch(
            """SELECT q.appointment_id, q.resource_id, q.day, q.ticket, q.priority_class, q.mark, q.checked_in_at,
                      q.state, q.calls, q.passes
                 FROM queue_entry q JOIN appointment a ON a.id = q.appointment_id
                WHERE a.order_id = $1 ORDER BY q.checked_in_at""",
            order_id,
        )
        queue_events = await conn.fetch(
            """SELECT e.appointment_id, e.action, e.actor_role, e.terminal, e.detail, e.at
                 FROM queue_event e JOIN appointment a ON a.id = e.appointment_id
                WHERE a.order_id = $1 ORDER BY e.id""",
            order_id,
        )
        overrides = await conn.fetch(
            "SELECT rule_id, reason, actor_role, at FROM rule_override WHERE order_id = $1 ORDER BY id", order_id
        )
    return {
        "events": events,
        "appointments": appointments,
        "queue": queue,
        "queue_events": queue_events,
        "overrides": overrides,
    }


# -- check-in ------------------------------------------------------------------------------------


async def checkin_context(conn: asyncpg.Connection | asyncpg.Pool, appointment_id: int) -> asyncpg.Record | None:
    """Everything check-in decides on: the appointment, its order, exam type, patient, room."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT a.id, a.status AS appointment_status, a.order_id, a.patient_id, a.resource_id, a.day,
                      a.starts_at, a.ends_at, a.channel,
                      o.status AS order_status, o.patient_class, o.priority, o.paid_at,
                      t.name AS exam_name, t.duration_min, t.checkin_early_min, t.noshow_grace_min,
                      p.name AS patient_name, p.birth_date,
                      r.name AS resource_name, r.location,
                      (od.sensitive OR ed.sensitive) AS sensitive,
                      (SELECT f.value FROM patient_fact f WHERE f.patient_id = a.patient_id AND f.fact = 'military'
                        ORDER BY f.recorded_at DESC, f.id DESC LIMIT 1) AS military,
                      q.ticket, q.state AS queue_state
                 FROM appointment a
                 JOIN exam_order o ON o.id = a.order_id
                 JOIN exam_type t ON t.code = a.exam_code
                 JOIN patient p ON p.id = a.patient_id
                 JOIN resource r ON r.id = a.resource_id
                 JOIN department ed ON ed.id = r.department_id
                 JOIN department od ON od.id = o.ordering_department_id
                 LEFT JOIN queue_entry q ON q.appointment_id = a.id
                WHERE a.id = $1""",
            appointment_id,
        )


async def check_in(
    pool: asyncpg.Pool,
    *,
    appointment_id: int,
    order_id: int,
    moves: Mapping[str, str],
    actor: Actor,
    channel: str,
    resource_id: str,
    hospital_id: str,
    day: date,
    appt_at: datetime,
    priority_class: int,
    mark: str,
    reason: str,
) -> asyncpg.Record:
    """The order checked in and the appointment in its room's queue with the next ticket of the
    room-day, in one transaction."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"queue:{resource_id}:{day}")
        ticket = await conn.fetchval(
            "SELECT COALESCE(max(ticket), 0) + 1 FROM queue_entry WHERE resource_id = $1 AND day = $2",
            resource_id,
            day,
        )
        row = await conn.fetchrow(
            """INSERT INTO queue_entry (appointment_id, hospital_id, resource_id, day, ticket, priority_class, mark,
                                        appt_at, checked_in_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp())
               RETURNING ticket, checked_in_at""",
            appointment_id,
            hospital_id,
            resource_id,
            day,
            ticket,
            priority_class,
            mark,
            appt_at,
        )
        await transition(
            conn,
            order_id=order_id,
            event="checked_in",
            moves=moves,
            actor=actor,
            channel=channel,
            reason=reason,
            appointment_id=appointment_id,
            detail={"ticket": ticket, "resource_id": resource_id, "priority_class": priority_class},
        )
    assert row is not None
    return row


# -- queues --------------------------------------------------------------------------------------


async def queue_entries(conn: asyncpg.Connection | asyncpg.Pool, resource_id: str, day: date) -> list[asyncpg.Record]:
    """A room-day's queue as PostgreSQL records it, in the order a rebuilt line takes."""
    async with database_errors():
        return await conn.fetch(
            """SELECT q.appointment_id, q.ticket, q.priority_class, q.mark, q.appt_at, q.checked_in_at, q.state,
                      q.calls, q.passes, t.name AS exam_name, t.duration_min, p.name AS patient_name,
                      (od.sensitive OR ed.sensitive) AS sensitive
                 FROM queue_entry q
                 JOIN appointment a ON a.id = q.appointment_id
                 JOIN exam_order o ON o.id = a.order_id
                 JOIN exam_type t ON t.code = a.exam_code
                 JOIN patient p ON p.id = a.patient_id
                 JOIN resource r ON r.id = q.resource_id
                 JOIN department ed ON ed.id = r.department_id
                 JOIN department od ON od.id = o.ordering_department_id
                WHERE q.resource_id = $1 AND q.day = $2
                ORDER BY q.priority_class, q.appt_at, q.checked_in_at, q.appointment_id""",
            resource_id,
            day,
        )


async def queue_record(
    pool: asyncpg.Pool,
    *,
    appointment_id: int,
    action: str,
    state: str,
    actor: Actor,
    detail: Mapping[str, Any],
    transition: tuple[str, Mapping[str, str], str] | None = None,
    priority: tuple[int, str] | None = None,
) -> None:
    """Record a queue action: the entry's new state (and counters), the action, and the order's
    transition when the action is one (start, finish, abort) — in one transaction."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE queue_entry
                  SET state = $2, updated_at = now(),
                      calls = calls + CASE WHEN $3 IN ('call', 'recall') THEN 1 ELSE 0 END,
                      passes = passes + CASE WHEN $3 = 'pass' THEN 1 ELSE 0 END,
                      priority_class = COALESCE($4, priority_class), mark = COALESCE($5, mark)
                WHERE appointment_id = $1""",
            appointment_id,
            state,
            action,
            priority[0] if priority else None,
            priority[1] if priority else None,
        )
        await conn.execute(
            """INSERT INTO queue_event (appointment_id, action, actor_id, actor_role, terminal, detail)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            appointment_id,
            action,
            actor.user_id,
            actor.role,
            actor.terminal,
            dict(detail),
        )
        if transition is not None:
            event, moves, reason = transition
            await conn.execute(
                """SELECT hy_transition(a.order_id, $2, $3, a.id, $4, $5, a.channel, $6, $7, $8)
                     FROM appointment a WHERE a.id = $1""",
                appointment_id,
                event,
                dict(moves),
                actor.user_id,
                actor.role,
                actor.terminal,
                reason,
                dict(detail),
            )


async def queue_patients(conn: asyncpg.Connection | asyncpg.Pool, appointment_ids: Sequence[int]) -> dict[int, int]:
    """appointment id -> patient id."""
    async with database_errors():
        rows = await conn.fetch("SELECT id, patient_id FROM appointment WHERE id = ANY($1::bigint[])", appointment_ids)
    return {int(r["id"]): int(r["patient_id"]) for r in rows}


# -- no-shows and credit -------------------------------------------------------------------------


NO_SHOW_LOOKBACK_DAYS = 7


async def no_show_due(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, now: datetime) -> list[int]:
    """Live appointments not checked in by slot end + the exam type's grace, among those that ended
    in the last NO_SHOW_LOOKBACK_DAYS: the bounds on ends_at let the index skip every future booking
    and the long history of exams done (their appointments stay 'booked'); the sweep runs every
    minute, so only an outage longer than the look-back leaves a no-show unmarked."""
    async with database_errors():
        rows = await conn.fetch(
            """SELECT a.id FROM appointment a
                 JOIN exam_order o ON o.id = a.order_id
                 JOIN exam_type t ON t.code = a.exam_code
                WHERE a.hospital_id = $1 AND a.status = 'booked' AND o.status IN ('booked', 'paid')
                  AND a.ends_at < $2 AND a.ends_at > $2 - make_interval(days => $3)
                  AND a.ends_at + make_interval(mins => t.noshow_grace_min) < $2
                ORDER BY a.ends_at, a.id LIMIT 1000""",
            hospital_id,
            now,
            NO_SHOW_LOOKBACK_DAYS,
        )
    return [int(r["id"]) for r in rows]


async def credit_rule(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            "SELECT no_shows, window_days, suspend_days, channels FROM credit_rule WHERE hospital_id = $1", hospital_id
        )


async def put_credit_rule(
    conn: asyncpg.Connection | asyncpg.Pool,
    hospital_id: str,
    no_shows: int,
    window_days: int,
    suspend_days: int,
    channels: Sequence[str],
) -> None:
    async with database_errors():
        await conn.execute(
            """INSERT INTO credit_rule (hospital_id, no_shows, window_days, suspend_days, channels)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (hospital_id) DO UPDATE
                 SET no_shows = $2, window_days = $3, suspend_days = $4, channels = $5, updated_at = now()""",
            hospital_id,
            no_shows,
            window_days,
            suspend_days,
            list(channels),
        )


async def mark_no_show(
    pool: asyncpg.Pool,
    *,
    appointment_id: int,
    now: datetime,
    no_shows: int,
    window_days: int,
    suspend_days: int,
    channels: Sequence[str],
) -> tuple[asyncpg.Record | None, asyncpg.Record | None]:
    """Mark one appointment a no-show and apply the credit rule, in one transaction. Returns the
    no-show (None when the appointment was checked in, cancelled or moved meanwhile) and the
    suspension it started, if any."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM hy_no_show($1, $2)", appointment_id, "未按时签到")
        if row is None or not row["counts"]:
            return row, None
        patient_id = row["patient_id"]
        await conn.execute("SELECT 1 FROM patient WHERE id = $1 FOR UPDATE", patient_id)
        count = await conn.fetchval(
            """SELECT count(*) FROM appointment a JOIN exam_order o ON o.id = a.order_id
                WHERE a.patient_id = $1 AND a.status = 'no_show'
                  AND o.patient_class NOT IN ('inpatient', 'emergency')
                  AND a.ends_at > $2::timestamptz - make_interval(days => $3)""",
            patient_id,
            now,
            window_days,
        )
        if count < no_shows:
            return row, None
        active = await conn.fetchval(
            """SELECT 1 FROM patient_suspension
                WHERE patient_id = $1 AND lifted_at IS NULL AND ends_at > $2 LIMIT 1""",
            patient_id,
            now,
        )
        if active:
            return row, None
        suspension = await conn.fetchrow(
            """INSERT INTO patient_suspension (patient_id, channels, starts_at, ends_at, reason)
               VALUES ($1, $2, $3, $3::timestamptz + make_interval(days => $4), $5)
               RETURNING id, patient_id, channels, starts_at, ends_at""",
            patient_id,
            list(channels),
            now,
            suspend_days,
            f"{window_days}天内爽约{count}次",
        )
        return row, suspension


async def active_suspension(
    conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, now: datetime
) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT id, channels, starts_at, ends_at, reason FROM patient_suspension
                WHERE patient_id = $1 AND lifted_at IS NULL AND starts_at <= $2 AND ends_at > $2
                ORDER BY ends_at DESC LIMIT 1""",
            patient_id,
            now,
        )


async def lift_suspension(
    conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, now: datetime, actor: Actor, reason: str
) -> int:
    async with database_errors():
        rows = await conn.fetch(
            """UPDATE patient_suspension SET lifted_at = $2, lifted_by = $3, lift_reason = $4
                WHERE patient_id = $1 AND lifted_at IS NULL AND ends_at > $2 RETURNING id""",
            patient_id,
            now,
            actor.user_id,
            reason,
        )
    return len(rows)
