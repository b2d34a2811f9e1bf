"""SQL for the department heads' utilisation wall: one hospital-day's figures, read in one
repeatable-read snapshot so the charts agree with each other."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from app.db.pool import database_errors


async def day_figures(pool: asyncpg.Pool, hospital_id: str, day: date, tz: str) -> dict[str, list[asyncpg.Record]]:
    async with database_errors(), pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        out: dict[str, Any] = {}
        # Bookings made that day (by when they were made, whatever day the exam is on).
        out["bookings"] = await conn.fetch(
            """SELECT e.department_id, a.channel, count(*)::int AS n
                 FROM appointment a JOIN exam_type e ON e.code = a.exam_code
                WHERE a.hospital_id = $1 AND (a.booked_at AT TIME ZONE $3)::date = $2
                GROUP BY 1, 2 ORDER BY 1, 2""",
            hospital_id,
            day,
            tz,
        )
        # Per device / room on the exam day: open minutes, exam minutes booked, places.
        out["resources"] = await conn.fetch(
            """WITH s AS (
                 SELECT resource_id,
                        coalesce(sum(extract(epoch FROM ends_at - starts_at) / 60)
                                 FILTER (WHERE status = 'open'), 0)::int AS open_min,
                        coalesce(sum(capacity) FILTER (WHERE status = 'open'), 0)::int AS released,
                        coalesce(sum(booked), 0)::int AS booked
                   FROM slot WHERE hospital_id = $1 AND day = $2 GROUP BY resource_id),
               x AS (
                 SELECT a.resource_id, sum(e.duration_min)::int AS exam_min
                   FROM appointment a JOIN exam_type e ON e.code = a.exam_code
                  WHERE a.hospital_id = $1 AND a.day = $2 AND a.status = 'booked' GROUP BY a.resource_id)
               SELECT r.id, r.name, r.department_id, r.modality, s.open_min, s.released, s.booked,
                      coalesce(x.exam_min, 0) AS exam_min
                 FROM s JOIN resource r ON r.id = s.resource_id LEFT JOIN x ON x.resource_id = r.id
                ORDER BY r.department_id, r.id""",
            hospital_id,
            day,
        )
        # Appointments for the exam day by how they ended up: live, cancelled (moves are not cancels).
        out["outcomes"] = await conn.fetch(
            """SELECT e.department_id,
                      count(*) FILTER (WHERE a.status = 'booked')::int AS live,
                      count(*) FILTER (WHERE a.status = 'cancelled')::int AS cancelled,
                      count(*) FILTER (WHERE a.status = 'no_show')::int AS no_show
                 FROM appointment a JOIN exam_type e ON e.code = a.exam_code
                WHERE a.hospital_id = $1 AND a.day = $2 GROUP BY 1 ORDER BY 1""",
            hospital_id,
            day,
        )
        # Days from order to exam, per modality, for the exams of the day.
        out["waits"] = await conn.fetch(
            """SELECT e.modality, count(*)::int AS n,
                      avg(a.day - (o.ordered_at AT TIME ZONE $3)::date)::float AS avg_days
                 FROM appointment a JOIN exam_order o ON o.id = a.order_id JOIN exam_type e ON e.code = a.exam_code
                WHERE a.hospital_id = $1 AND a.day = $2 AND a.status = 'booked'
                GROUP BY 1 ORDER BY 1""",
            hospital_id,
            day,
            tz,
        )
        # Outpatients examined on the day their exam was ordered.
        out["same_day"] = await conn.fetch(
            """SELECT count(*)::int AS n,
                      count(*) FILTER (WHERE (o.ordered_at AT TIME ZONE $3)::date = a.day)::int AS same_day
                 FROM appointment a JOIN exam_order o ON o.id = a.order_id
                WHERE a.hospital_id = $1 AND a.day = $2 AND a.status = 'booked'
                  AND o.patient_class = 'outpatient'""",
            hospital_id,
            day,
            tz,
        )
        # From the closed loop's event log (sql/0007): exams started that day — wait from check-in to
        # start, and started within 15 minutes of the appointment time.
        out["punctuality"] = await conn.fetch(
            """SELECT count(*)::int AS n,
                      avg(extract(epoch FROM ev.at - q.checked_in_at) / 60)::float AS avg_wait_min,
                      count(*) FILTER (WHERE ev.at <= a.starts_at + interval '15 minutes')::int AS on_time
                 FROM order_event ev
                 JOIN appointment a ON a.id = ev.appointment_id
                 JOIN queue_entry q ON q.appointment_id = a.id
                WHERE ev.event = 'started' AND a.hospital_id = $1
                  AND ev.at >= ($2::date::timestamp AT TIME ZONE $3)
                  AND ev.at < (($2::date + 1)::timestamp AT TIME ZONE $3)""",
            hospital_id,
            day,
            tz,
        )
        # Outpatient exams finished that day, and how many of them were ordered that same day.
        out["completed"] = await conn.fetch(
            """SELECT count(*)::int AS n,
                      count(*) FILTER (WHERE (o.ordered_at AT TIME ZONE $3)::date = $2)::int AS same_day
                 FROM order_event ev JOIN exam_order o ON o.id = ev.order_id
                WHERE ev.event = 'done' AND o.hospital_id = $1 AND o.patient_class = 'outpatient'
                  AND ev.at >= ($2::date::timestamp AT TIME ZONE $3)
                  AND ev.at < (($2::date + 1)::timestamp AT TIME ZONE $3)""",
            hospital_id,
            day,
            tz,
        )
        # Reports verified that day: minutes from the end of the exam, against report_target.
        out["reports"] = await conn.fetch(
            """WITH v AS (
                 SELECT order_id, min(at) AS verified_at FROM order_event
                  WHERE event = 'verified'
                    AND at >= ($2::date::timestamp AT TIME ZONE $3) AND at < (($2::date + 1)::timestamp AT TIME ZONE $3)
                  GROUP BY order_id),
               d AS (SELECT order_id, max(at) AS done_at FROM order_event
                      WHERE event = 'done' AND order_id IN (SELECT order_id FROM v) GROUP BY order_id)
               SELECT e.modality, o.patient_class, count(*)::int AS n,
                      avg(extract(epoch FROM v.verified_at - d.done_at) / 60)::float AS avg_min,
                      count(t.minutes)::int AS with_target,
                      count(*) FILTER (WHERE v.verified_at - d.done_at <= make_interval(mins => t.minutes))::int
                        AS on_target,
                      min(t.minutes) AS target_min
                 FROM v JOIN d USING (order_id)
                 JOIN exam_order o ON o.id = v.order_id JOIN exam_type e ON e.code = o.exam_code
                 LEFT JOIN report_target t ON t.patient_class = o.patient_class AND t.modality = e.modality
                WHERE o.hospital_id = $1
                GROUP BY 1, 2 ORDER BY 1, 2""",
            hospital_id,
            day,
            tz,
        )
        return out
