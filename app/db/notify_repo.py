"""SQL of patient notifications: claiming due notices from the outbox in per-patient order,
recording what became of them, queueing new ones (deduplicated by sql/0008's trigger), the rows
the reminder and notice sweeps start from, and the development sender's log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Any

import asyncpg

from app.db.pool import database_errors

# The topic is written into the statements as a literal (not a parameter), so their plans can use
# the partial index outbox_notice_pending: a generic plan cannot match a parameter to its predicate.
TOPIC = "patient.notice"
# Notices whose text is a secret (an SMS login code): once delivered or set aside, the row keeps
# only this in place of the text, so the outbox (and every backup of it) holds no usable code.
LOGIN_CODE_KIND = "login_code"
SECRET_KINDS = frozenset({LOGIN_CODE_KIND})
REDACTED = "（验证码短信：正文发送后不留存）"


async def claim_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Lock, until the caller's transaction ends, the oldest undelivered notice of each patient
    whose turn it is (due, and nothing older of that patient still waiting). A row another relay
    holds is skipped -- and with it that patient's later rows, which are not the oldest."""
    async with database_errors():
        return await conn.fetch(
            """SELECT o.id, o.aggregate_id, o.payload, o.attempts
                 FROM outbox o
                WHERE o.topic = 'patient.notice' AND o.delivered_at IS NULL AND o.dead_at IS NULL
                  AND o.next_attempt_at <= $1
                  AND NOT EXISTS (SELECT 1 FROM outbox e
                                   WHERE e.topic = 'patient.notice' AND e.aggregate_id = o.aggregate_id AND e.id < o.id
                                     AND e.delivered_at IS NULL AND e.dead_at IS NULL)
                ORDER BY o.id
                LIMIT $2
                FOR UPDATE OF o SKIP LOCKED""",
            now,
            limit,
        )


async def recipients(
    conn: asyncpg.Connection, outbox_ids: Sequence[int], patient_ids: Sequence[int], appointment_ids: Sequence[int]
) -> dict[int, asyncpg.Record]:
    """Per claimed notice: the patient's phone and openid, and the state of the appointment it is
    about (None when it names none)."""
    async with database_errors():
        rows = await conn.fetch(
            """SELECT c.id, p.phone, p.phone_enc, p.wechat_openid, a.status AS appointment_status
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS c(id, patient_id, appointment_id)
                 LEFT JOIN patient p ON p.id = c.patient_id
                 LEFT JOIN appointment a ON a.id = c.appointment_id""",
            list(outbox_ids),
            list(patient_ids),
            list(appointment_ids),
        )
    return {r["id"]: r for r in rows}


async def record_outcomes(
    conn: asyncpg.Connection,
    now: datetime,
    delivered: Sequence[int],
    retries: Sequence[tuple[int, datetime, str]],
    dead: Sequence[tuple[int, str]],
) -> None:
    async with database_errors():
        if delivered:
            await conn.execute(
                "UPDATE outbox SET delivered_at = $2, last_error = NULL WHERE id = ANY($1::bigint[])",
                list(delivered),
                now,
            )
        finished = [*delivered, *(d[0] for d in dead)]
        if finished:
            await conn.execute(
                """UPDATE outbox SET payload = payload || jsonb_build_object('message', $2::text)
                    WHERE id = ANY($1::bigint[]) AND payload ->> 'kind' = ANY($3::text[])""",
                finished,
                REDACTED,
                sorted(SECRET_KINDS),
            )
        if retries:
            await conn.execute(
                """UPDATE outbox o SET attempts = o.attempts + 1, next_attempt_at = r.next_at, last_error = r.error
                     FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS r(id, next_at, error)
                    WHERE o.id = r.id""",
                [r[0] for r in retries],
                [r[1] for r in retries],
                [r[2] for r in retries],
            )
        if dead:
            await conn.execute(
                """UPDATE outbox o SET attempts = o.attempts + 1, dead_at = $3, last_error = r.error
                     FROM unnest($1::bigint[], $2::text[]) AS r(id, error)
                    WHERE o.id = r.id""",
                [d[0] for d in dead],
                [d[1] for d in dead],
                now,
            )


async def queue_notice(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, payload: dict[str, Any]) -> int | None:
    """Queue a message for the patient; the outbox id, or None when its `dedupe` key was queued
    before (the same row booking_repo.insert_notice writes)."""
    async with database_errors():
        return await conn.fetchval(
            "INSERT INTO outbox (topic, aggregate_id, payload) VALUES ($1, $2, $3) RETURNING id",
            TOPIC,
            str(patient_id),
            payload,
        )


async def reminder_candidates(
    conn: asyncpg.Connection | asyncpg.Pool,
    hospital_id: str,
    now: datetime,
    days: tuple[date, date],
    timezone: str,
    evening_at: time,
    before: timedelta,
) -> list[asyncpg.Record]:
    """Live appointments of the days whose evening or shortly-before reminder is due by `now` and
    not queued yet (a prefilter: render.reminders_due decides)."""
    async with database_errors():
        return await conn.fetch(
            """WITH c AS (
                   SELECT a.id, a.patient_id, a.starts_at, a.booked_at, a.exam_code, a.resource_id,
                          ((a.starts_at AT TIME ZONE $5)::date - 1 + $6::time) AT TIME ZONE $5 AS evening_due,
                          a.starts_at - $7::interval AS soon_due
                     FROM appointment a
                    WHERE a.hospital_id = $1 AND a.status = 'booked' AND a.day BETWEEN $3 AND $4
                      AND a.starts_at > $2)
               SELECT c.id, c.patient_id, c.starts_at, c.booked_at, e.name AS exam_name, e.prep_text,
                      r.name AS resource_name, r.location
                 FROM c JOIN exam_type e ON e.code = c.exam_code JOIN resource r ON r.id = c.resource_id
                WHERE (c.evening_due <= $2 AND $2 < c.soon_due AND c.booked_at < c.evening_due
                       AND NOT EXISTS (SELECT 1 FROM notice_dedupe d WHERE d.key = 'reminder_evening:' || c.id))
                   OR (c.soon_due <= $2 AND c.booked_at < c.soon_due
                       AND NOT EXISTS (SELECT 1 FROM notice_dedupe d WHERE d.key = 'reminder_soon:' || c.id))
                ORDER BY c.starts_at, c.id""",
            hospital_id,
            now,
            days[0],
            days[1],
            timezone,
            evening_at,
            before,
        )


async def recent_cancellations(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, now: datetime, since: datetime
) -> list[asyncpg.Record]:
    """Appointments cancelled since `since` that were still ahead, with no cancellation notice yet."""
    async with database_errors():
        return await conn.fetch(
            """SELECT a.id, a.patient_id, a.starts_at, e.name AS exam_name, e.prep_text,
                      r.name AS resource_name, r.location
                 FROM appointment a JOIN exam_type e ON e.code = a.exam_code JOIN resource r ON r.id = a.resource_id
                WHERE a.status = 'cancelled' AND a.ended_at >= $3 AND a.hospital_id = $1 AND a.starts_at > $2
                  AND NOT EXISTS (SELECT 1 FROM notice_dedupe d WHERE d.key = 'appointment_cancelled:' || a.id)
                ORDER BY a.ended_at, a.id""",
            hospital_id,
            now,
            since,
        )


async def recent_published_reports(
    conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str, since: datetime
) -> list[asyncpg.Record]:
    """Orders whose report was published since `since`, with no report notice yet: the order, its
    patient, exam, and the day of its last appointment (the exam day)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT DISTINCT ON (o.id) o.id AS order_id, o.patient_id, t.name AS exam_name,
                      COALESCE(a.day, ev.at::date) AS exam_day, ev.at AS published_at
                 FROM order_event ev
                 JOIN exam_order o ON o.id = ev.order_id
                 JOIN exam_type t ON t.code = o.exam_code
                 LEFT JOIN appointment a ON a.id = ev.appointment_id
                WHERE ev.to_status = 'published' AND ev.at >= $2 AND o.hospital_id = $1
                  AND NOT EXISTS (SELECT 1 FROM notice_dedupe d WHERE d.key = 'report_ready:' || o.id)
                ORDER BY o.id, ev.at""",
            hospital_id,
            since,
        )


async def log_dev_message(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    message_id: str,
    patient_id: int,
    channel: str,
    destination: str,
    kind: str,
    text: str,
) -> bool:
    """Record what the development sender 'sent'; False when this message id was recorded before."""
    async with database_errors():
        return bool(
            await conn.fetchval(
                """INSERT INTO notice_log (message_id, patient_id, channel, destination, kind, text)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING RETURNING true""",
                message_id,
                patient_id,
                channel,
                destination,
                kind,
                text,
            )
        )


async def latest_dev_messages(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int = 50, patient_id: int | None = None
) -> list[asyncpg.Record]:
    """The development sender's latest messages, newest first (destinations are stored masked)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT id, message_id, patient_id, channel, destination, kind, text, sent_at
                 FROM notice_log WHERE ($2::bigint IS NULL OR patient_id = $2)
                ORDER BY sent_at DESC, id DESC LIMIT $1""",
            limit,
            patient_id,
        )


async def backlog(conn: asyncpg.Connection | asyncpg.Pool, now: datetime) -> asyncpg.Record:
    """How the notices stand: waiting, due now, set aside for good, the oldest waiting one, the
    highest attempt count (a gateway outage shows here first)."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS pending,
                      count(*) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $1) AS due,
                      count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead,
                      min(created_at) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL) AS oldest_pending_at,
                      COALESCE(max(attempts) FILTER (WHERE delivered_at IS NULL AND dead_at IS NULL), 0) AS max_attempts
                 FROM outbox WHERE topic = 'patient.notice'""",
            now,
        )
