"""SQL of the de-identified statistics export: appointments with nothing that names the patient.

Only what the export needs leaves PostgreSQL: the patient's id (turned into a keyed pseudonym by
the caller, never written out), his age in whole years on the exam day (not the birth date), his
sex, and the appointment's exam, department, channel, class, status and times truncated to the
hour in the hospital's zone. No name, MRN, ID number, phone, order number, bed or free text."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import date

import asyncpg

from app.db.pool import database_errors

_EXPORT = """
SELECT a.patient_id,
       date_part('year', age(a.day, p.birth_date))::int AS age,
       p.gender,
       a.exam_code,
       e.name AS exam_name,
       e.modality,
       e.department_id,
       a.channel,
       o.patient_class,
       a.status,
       a.day AS exam_day,
       date_trunc('hour', a.starts_at AT TIME ZONE $5) AS exam_hour,
       date_trunc('hour', a.booked_at AT TIME ZONE $5) AS booked_hour,
       date_trunc('hour', a.ended_at AT TIME ZONE $5) AS ended_hour,
       a.day - (a.booked_at AT TIME ZONE $5)::date AS lead_days
  FROM appointment a
  JOIN patient p ON p.id = a.patient_id
  JOIN exam_type e ON e.code = a.exam_code
  JOIN exam_order o ON o.id = a.order_id
 WHERE a.hospital_id = $1 AND a.day BETWEEN $2 AND $3 AND ($4::text IS NULL OR e.department_id = $4)
 ORDER BY a.day, a.starts_at, a.id
"""


async def appointment_rows(
    pool: asyncpg.Pool, hospital_id: str, day_from: date, day_to: date, department_id: str | None, tz: str
) -> AsyncGenerator[asyncpg.Record, None]:
    """The appointments whose exam day is in [day_from, day_to], streamed from one read-only
    snapshot (a cursor: a year of a large hospital never sits in memory)."""
    async with (
        database_errors(),
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        async for row in conn.cursor(_EXPORT, hospital_id, day_from, day_to, department_id, tz, prefetch=1000):
            yield row
