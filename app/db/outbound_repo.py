"""SQL of outbound delivery (sql/0011): the destinations (HL7 peers, webhook subscriptions), their
per-outbox-row deliveries claimed in per-order sequence, the facts an SIU message is built from,
and the webhook subscriptions themselves."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from app.db.pool import database_errors


async def sync_hl7_destinations(
    conn: asyncpg.Connection | asyncpg.Pool, names: Sequence[str], topics: Sequence[str]
) -> None:
    """Make exactly the configured peers' destinations active (new ones hear events from now on;
    a peer taken out of the settings keeps its waiting messages until it comes back)."""
    async with database_errors():
        await conn.execute(
            """WITH wanted AS (SELECT unnest($1::text[]) AS name),
                    upserted AS (
                        INSERT INTO outbound_destination (name, kind, topics)
                        SELECT name, 'hl7', $2::text[] FROM wanted
                        ON CONFLICT (name) DO UPDATE SET active = true, topics = EXCLUDED.topics, updated_at = now()
                         WHERE NOT outbound_destination.active OR outbound_destination.topics <> EXCLUDED.topics
                        RETURNING name)
               UPDATE outbound_destination d SET active = false, updated_at = now()
                WHERE d.kind = 'hl7' AND d.active AND d.name NOT IN (SELECT name FROM wanted)""",
            list(names),
            list(topics),
        )


async def destination(conn: asyncpg.Connection, name: str, now: datetime) -> asyncpg.Record | None:
    """The destination's state; `paused` when it looked down and its pause has not run out at `now`."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT name, active, failures, coalesce(paused_until > $2, false) AS paused, last_error
                 FROM outbound_destination WHERE name = $1""",
            name,
            now,
        )


async def claim_due(conn: asyncpg.Connection, destination_name: str, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Lock, until the caller's transaction ends, the oldest waiting delivery of each order whose
    turn it is (due, and nothing older of that order still waiting for this destination). A row
    another relay holds is skipped, and with it that order's later rows."""
    async with database_errors():
        return await conn.fetch(
            """SELECT d.outbox_id, d.order_key, d.attempts, d.refusals,
                      o.topic, o.aggregate_id, o.payload, o.created_at
                 FROM outbox_delivery d JOIN outbox o ON o.id = d.outbox_id
                WHERE d.destination = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2
                  AND NOT EXISTS (SELECT 1 FROM outbox_delivery e
                                   WHERE e.destination = d.destination AND e.order_key = d.order_key
                                     AND e.state = 'pending' AND e.outbox_id < d.outbox_id)
                ORDER BY d.outbox_id
                LIMIT $3
                FOR UPDATE OF d SKIP LOCKED""",
            destination_name,
            now,
            limit,
        )


async def record_outcomes(
    conn: asyncpg.Connection,
    destination_name: str,
    now: datetime,
    done: Sequence[tuple[int, str, str | None]],
    retries: Sequence[tuple[int, datetime, str, bool]],
) -> None:
    """done: (outbox id, 'delivered' | 'skipped' | 'failed', note); retries: (outbox id, next
    attempt, error, refused by the peer)."""
    async with database_errors():
        if done:
            await conn.execute(
                """UPDATE outbox_delivery d
                      SET state = r.state, done_at = $2, last_error = r.note,
                          attempts = d.attempts + (r.state <> 'skipped')::int,
                          refusals = d.refusals + (r.state = 'failed')::int
                     FROM unnest($3::bigint[], $4::text[], $5::text[]) AS r(id, state, note)
                    WHERE d.destination = $1 AND d.outbox_id = r.id""",
                destination_name,
                now,
                [d[0] for d in done],
                [d[1] for d in done],
                [d[2] for d in done],
            )
        if retries:
            await conn.execute(
                """UPDATE outbox_delivery d
                      SET attempts = d.attempts + 1, refusals = d.refusals + r.refused::int,
                          next_attempt_at = r.next_at, last_error = r.error
                     FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::boolean[])
                          AS r(id, next_at, error, refused)
                    WHERE d.destination = $1 AND d.outbox_id = r.id""",
                destination_name,
                [r[0] for r in retries],
                [r[1] for r in retries],
                [r[2] for r in retries],
                [r[3] for r in retries],
            )


async def mark_destination(
    conn: asyncpg.Connection,
    name: str,
    *,
    reachable: bool,
    paused_until: datetime | None = None,
    error: str | None = None,
) -> None:
    """A destination that answered (failures reset), or one that looks down (paused until then)."""
    async with database_errors():
        if reachable:
            await conn.execute(
                """UPDATE outbound_destination SET failures = 0, paused_until = NULL, last_error = NULL,
                          updated_at = now()
                    WHERE name = $1 AND (failures <> 0 OR last_error IS NOT NULL)""",
                name,
            )
        else:
            await conn.execute(
                """UPDATE outbound_destination SET failures = failures + 1, paused_until = $2, last_error = $3,
                          updated_at = now()
                    WHERE name = $1""",
                name,
                paused_until,
                error,
            )


async def appointment_facts(conn: asyncpg.Connection, appointment_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    """Per appointment: what an SIU message says of it, with the first appointment of its chain of
    reschedules (appointment ids grow along a chain, so the root is the smallest)."""
    async with database_errors():
        rows = await conn.fetch(
            """WITH RECURSIVE chain (start_id, id) AS (
                   SELECT a.id, a.id FROM appointment a WHERE a.id = ANY($1::bigint[])
                   UNION ALL
                   SELECT c.start_id, p.id FROM chain c JOIN appointment p ON p.replaced_by = c.id),
               roots AS (SELECT start_id, min(id) AS root_id FROM chain GROUP BY start_id)
               SELECT a.id AS appointment_id, r.root_id AS root_appointment_id, a.order_id, o.order_no, o.accession_no,
                      a.starts_at, a.ends_at, p.mrn AS patient_mrn, p.name AS patient_name,
                      p.gender AS patient_gender, p.birth_date AS patient_birth_date, o.patient_class, o.priority,
                      o.ordering_doctor, o.ordering_department_id AS ordering_department, o.ward_id, o.bed_no,
                      e.code AS exam_code, e.name AS exam_name, e.duration_min AS exam_minutes, e.modality, e.prep_text,
                      res.id AS resource_id, res.name AS resource_name, res.kind AS resource_kind,
                      res.location AS resource_location, res.department_id AS resource_department,
                      res.campus_id, c.name AS campus_name, res.ae_title, a.booked_by
                 FROM appointment a
                 JOIN roots r ON r.start_id = a.id
                 JOIN exam_order o ON o.id = a.order_id
                 JOIN patient p ON p.id = a.patient_id
                 JOIN exam_type e ON e.code = a.exam_code
                 JOIN resource res ON res.id = a.resource_id
                 JOIN campus c ON c.id = res.campus_id""",
            list(appointment_ids),
        )
    return {r["appointment_id"]: r for r in rows}


async def last_appointment_of_order(conn: asyncpg.Connection, order_id: int) -> int | None:
    """The order's latest appointment (an order event such as `pay` does not always name one)."""
    async with database_errors():
        return await conn.fetchval("SELECT max(id) FROM appointment WHERE order_id = $1", order_id)


# Webhook subscriptions ---------------------------------------------------------------------------


async def insert_subscription(
    pool: asyncpg.Pool,
    hospital_id: str,
    name: str,
    url: str,
    secret: str,
    topics: Sequence[str],
    created_by: int | None,
) -> asyncpg.Record:
    """The subscription and its destination, in one transaction."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """INSERT INTO webhook_subscription (hospital_id, name, url, secret, topics, created_by)
               VALUES ($1, $2, $3, $4, $5, $6)
               RETURNING id, name, url, topics, created_at, deleted_at""",
            hospital_id,
            name,
            url,
            secret,
            list(topics),
            created_by,
        )
        await conn.execute(
            "INSERT INTO outbound_destination (name, kind, topics) VALUES ($1, 'webhook', $2)",
            f"webhook:{row['id']}",
            list(topics),
        )
    return row


async def list_subscriptions(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> list[asyncpg.Record]:
    """Live subscriptions (without their secrets), with how their deliveries stand."""
    async with database_errors():
        return await conn.fetch(
            """SELECT s.id, s.name, s.url, s.topics, s.created_at, s.deleted_at,
                      d.failures, d.paused_until, d.last_error,
                      (SELECT count(*) FROM outbox_delivery x WHERE x.destination = d.name AND x.state = 'pending')
                          AS pending,
                      (SELECT count(*) FROM outbox_delivery x WHERE x.destination = d.name AND x.state = 'failed')
                          AS failed
                 FROM webhook_subscription s JOIN outbound_destination d ON d.name = 'webhook:' || s.id
                WHERE s.hospital_id = $1 AND s.deleted_at IS NULL
                ORDER BY s.id""",
            hospital_id,
        )


async def delete_subscription(
    pool: asyncpg.Pool, hospital_id: str, subscription_id: int, deleted_by: int | None
) -> asyncpg.Record | None:
    """End a subscription: nothing more is queued for it and its waiting deliveries are dropped."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE webhook_subscription SET deleted_at = now(), deleted_by = $3
                WHERE id = $2 AND hospital_id = $1 AND deleted_at IS NULL
                RETURNING id, name, url, topics, created_at, deleted_at""",
            hospital_id,
            subscription_id,
            deleted_by,
        )
        if row is None:
            return None
        name = f"webhook:{subscription_id}"
        await conn.execute("UPDATE outbound_destination SET active = false, updated_at = now() WHERE name = $1", name)
        await conn.execute(
            """UPDATE outbox_delivery SET state = 'dropped', done_at = now(), last_error = 'subscription deleted'
                WHERE destination = $1 AND state = 'pending'""",
            name,
        )
    return row


async def active_webhooks(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every live subscription with what delivery needs (url, secret)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT s.id, s.url, s.secret FROM webhook_subscription s
                 JOIN outbound_destination d ON d.name = 'webhook:' || s.id
                WHERE s.deleted_at IS NULL AND d.active ORDER BY s.id"""
        )


# Operations --------------------------------------------------------------------------------------


async def backlog(conn: asyncpg.Connection | asyncpg.Pool, now: datetime) -> list[asyncpg.Record]:
    """Per active destination: waiting, due now, parked as failed, the oldest waiting row, the
    highest attempt count, and whether the destination is paused (a peer that is down)."""
    async with database_errors():
        return await conn.fetch(
            """SELECT d.name, d.kind, d.failures, coalesce(d.paused_until > $1, false) AS paused, d.paused_until,
                      d.last_error,
                      count(x.*) FILTER (WHERE x.state = 'pending') AS pending,
                      count(x.*) FILTER (WHERE x.state = 'pending' AND x.next_attempt_at <= $1) AS due,
                      count(x.*) FILTER (WHERE x.state = 'failed') AS failed,
                      min(x.created_at) FILTER (WHERE x.state = 'pending') AS oldest_pending,
                      coalesce(max(x.attempts) FILTER (WHERE x.state = 'pending'), 0) AS max_attempts
                 FROM outbound_destination d LEFT JOIN outbox_delivery x ON x.destination = d.name
                WHERE d.active
                GROUP BY d.name ORDER BY d.name""",
            now,
        )


async def failed_deliveries(
    conn: asyncpg.Connection | asyncpg.Pool, destination_name: str, limit: int = 100
) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT d.outbox_id, d.order_key, d.attempts, d.refusals, d.last_error, d.done_at, o.topic, o.payload
                 FROM outbox_delivery d JOIN outbox o ON o.id = d.outbox_id
                WHERE d.destination = $1 AND d.state = 'failed' ORDER BY d.outbox_id DESC LIMIT $2""",
            destination_name,
            limit,
        )


async def requeue(
    conn: asyncpg.Connection | asyncpg.Pool, destination_name: str, outbox_id: int, now: datetime
) -> bool:
    """Send a parked message again (after the peer's problem was fixed). It goes when its turn in
    its order comes; a later message of that order sent meanwhile is not taken back."""
    async with database_errors():
        row = await conn.fetchval(
            """UPDATE outbox_delivery SET state = 'pending', refusals = 0, next_attempt_at = $3, done_at = NULL
                WHERE destination = $1 AND outbox_id = $2 AND state = 'failed' RETURNING true""",
            destination_name,
            outbox_id,
            now,
        )
    return bool(row)
