"""SQL of the DICOM interfaces: the Modality Worklist's live appointments and the MPPS instances
(sql/0013_dicom.sql)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import asyncpg

from app.db.pool import database_errors

# Orders on the worklist: booked (paid or not) or checked in, not yet started.
WORKLIST_ORDER_STATES = ("booked", "paid", "checked_in")

_WORKLIST_SQL = """
SELECT a.id AS appointment_id, a.order_id, a.resource_id, a.day, a.starts_at, a.ends_at, a.channel,
       o.order_no, o.status AS order_status, o.accession_no, o.study_uid, o.priority, o.patient_class,
       o.ordering_doctor, COALESCE(od.name, '') AS ordering_department, COALESCE(o.bed_no, '') AS bed_no,
       COALESCE(w.name, '') AS ward_name,
       p.id AS patient_id, p.mrn, p.name AS patient_name, p.gender, p.birth_date,
       t.code AS exam_code, t.name AS exam_name, t.modality, t.body_part,
       COALESCE(r.ae_title, '') AS ae_title, r.name AS resource_name, r.location AS resource_location
  FROM appointment a
  JOIN exam_order o ON o.id = a.order_id
  JOIN patient p ON p.id = a.patient_id
  JOIN exam_type t ON t.code = a.exam_code
  JOIN resource r ON r.id = a.resource_id
  LEFT JOIN department od ON od.id = o.ordering_department_id
  LEFT JOIN department w ON w.id = o.ward_id
 WHERE a.hospital_id = $1 AND a.status = 'booked' AND o.status = ANY($2::text[])
   AND ($3::date IS NULL OR a.day >= $3) AND ($4::date IS NULL OR a.day <= $4)
   AND ($5::timestamptz IS NULL OR a.starts_at >= $5) AND ($6::timestamptz IS NULL OR a.starts_at <= $6)
   AND ($7::text IS NULL OR r.ae_title = $7)
   AND ($8::text IS NULL OR o.accession_no = $8)
   AND ($9::text IS NULL OR p.mrn = $9)
   AND ($10::text IS NULL OR t.modality = $10)
 ORDER BY a.starts_at, a.id
 LIMIT $11
"""


async def worklist(
    conn: asyncpg.Connection | asyncpg.Pool,
    hospital_id: str,
    *,
    day_from: date | None = None,
    day_to: date | None = None,
    start_from: datetime | None = None,
    start_to: datetime | None = None,
    ae_title: str | None = None,
    accession_no: str | None = None,
    mrn: str | None = None,
    modality: str | None = None,
    limit: int = 1000,
) -> list[asyncpg.Record]:
    """Live appointments of orders not yet started, narrowed by the exact keys given (the caller
    applies the DICOM matching of every key on the rows)."""
    async with database_errors():
        return await conn.fetch(
            _WORKLIST_SQL,
            hospital_id,
            list(WORKLIST_ORDER_STATES),
            day_from,
            day_to,
            start_from,
            start_to,
            ae_title,
            accession_no,
            mrn,
            modality,
            limit,
        )


async def order_for_step(
    conn: asyncpg.Connection | asyncpg.Pool,
    hospital_id: str,
    *,
    study_uid: str | None,
    accession_no: str | None,
    appointment_id: int | None,
) -> asyncpg.Record | None:
    """The order a performed step refers to — by its Study Instance UID, else its accession number,
    else the scheduled step's appointment — with its live appointment (the one checked in and in
    the room's queue: an appointment stays 'booked' through the exam)."""
    async with database_errors():
        return await conn.fetchrow(
            """WITH target AS (
                   SELECT COALESCE(
                       (SELECT id FROM exam_order WHERE hospital_id = $1 AND study_uid = $2),
                       (SELECT id FROM exam_order WHERE hospital_id = $1 AND accession_no = $3),
                       (SELECT order_id FROM appointment WHERE hospital_id = $1 AND id = $4)) AS order_id)
               SELECT o.id AS order_id, o.status AS order_status, o.accession_no, o.study_uid,
                      a.id AS appointment_id, a.resource_id, a.day, a.channel,
                      COALESCE(r.ae_title, '') AS ae_title
                 FROM target
                 JOIN exam_order o ON o.id = target.order_id
                 JOIN appointment a ON a.order_id = o.id AND a.status = 'booked'
                 JOIN resource r ON r.id = a.resource_id""",
            hospital_id,
            study_uid,
            accession_no,
            appointment_id,
        )


async def order_status(conn: asyncpg.Connection | asyncpg.Pool, order_id: int) -> str | None:
    async with database_errors():
        status: str | None = await conn.fetchval("SELECT status FROM exam_order WHERE id = $1", order_id)
    return status


async def create_instance(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    sop_instance_uid: str,
    hospital_id: str,
    order_id: int,
    appointment_id: int,
    station_ae: str,
    calling_ae: str,
    attributes: Mapping[str, Any],
) -> bool:
    """Claim the SOP Instance UID for this step (IN PROGRESS); False when it exists already."""
    async with database_errors():
        row = await conn.fetchval(
            """INSERT INTO mpps_instance (sop_instance_uid, hospital_id, order_id, appointment_id, station_ae,
                                          calling_ae, attributes)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (sop_instance_uid) DO NOTHING
               RETURNING 1""",
            sop_instance_uid,
            hospital_id,
            order_id,
            appointment_id,
            station_ae,
            calling_ae,
            dict(attributes),
        )
    return row is not None


async def drop_instance(conn: asyncpg.Connection | asyncpg.Pool, sop_instance_uid: str) -> None:
    """Undo a claim whose order transition was refused."""
    async with database_errors():
        await conn.execute(
            "DELETE FROM mpps_instance WHERE sop_instance_uid = $1 AND status = 'IN PROGRESS'", sop_instance_uid
        )


async def instance(conn: asyncpg.Connection | asyncpg.Pool, sop_instance_uid: str) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            """SELECT m.*, a.resource_id, a.day, o.status AS order_status
                 FROM mpps_instance m
                 JOIN appointment a ON a.id = m.appointment_id
                 JOIN exam_order o ON o.id = m.order_id
                WHERE m.sop_instance_uid = $1""",
            sop_instance_uid,
        )


async def update_instance(
    conn: asyncpg.Connection | asyncpg.Pool,
    sop_instance_uid: str,
    *,
    expect: str,
    status: str,
    attributes: Mapping[str, Any],
    reason: str = "",
) -> bool:
    """Move the step from `expect` to `status` with the merged attributes (compare and set: of two
    concurrent N-SETs only one moves it); False when it was not in `expect` any more."""
    async with database_errors():
        row = await conn.fetchval(
            """UPDATE mpps_instance
                  SET status = $3, attributes = $4, reason = CASE WHEN $5 = '' THEN reason ELSE $5 END,
                      updated_at = now(), ended_at = CASE WHEN $3 = 'IN PROGRESS' THEN NULL ELSE now() END
                WHERE sop_instance_uid = $1 AND status = $2
            RETURNING 1""",
            sop_instance_uid,
            expect,
            status,
            dict(attributes),
            reason,
        )
    return row is not None


async def sibling_states(conn: asyncpg.Connection | asyncpg.Pool, order_id: int, sop_instance_uid: str) -> list[str]:
    """The states of the order's other performed steps."""
    async with database_errors():
        rows = await conn.fetch(
            "SELECT status FROM mpps_instance WHERE order_id = $1 AND sop_instance_uid <> $2",
            order_id,
            sop_instance_uid,
        )
    return [str(r["status"]) for r in rows]


async def station_ae_titles(conn: asyncpg.Connection | asyncpg.Pool, hospital_id: str) -> list[str]:
    """The AE titles of the hospital's modalities (resource.ae_title)."""
    async with database_errors():
        rows = await conn.fetch(
            "SELECT ae_title FROM resource WHERE hospital_id = $1 AND ae_title IS NOT NULL ORDER BY ae_title",
            hospital_id,
        )
    return [str(r["ae_title"]) for r in rows]
