"""SQL for patients, their orders and appointments, and the audit log of access to them."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.db.pool import database_errors
from app.security.actor import Actor


async def patient_by_id(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> asyncpg.Record | None:
    async with database_errors():
        return await conn.fetchrow(
            "SELECT id, mrn, name, gender, birth_date, id_number, phone FROM patient WHERE id = $1", patient_id
        )


async def orders_of(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT o.id, o.order_no, o.exam_code, e.name AS exam_name, o.status, o.patient_class, o.priority,
                      o.ordering_department_id, o.ordering_doctor, o.ordered_at
                 FROM exam_order o JOIN exam_type e ON e.code = o.exam_code
                WHERE o.patient_id = $1 ORDER BY o.ordered_at, o.id""",
            patient_id,
        )


async def appointments_of(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> list[asyncpg.Record]:
    async with database_errors():
        return await conn.fetch(
            """SELECT a.id, a.order_id, a.slot_id, a.exam_code, e.name AS exam_name, a.resource_id,
                      r.name AS resource_name, r.location, a.starts_at, a.ends_at, a.channel, a.pool, a.status,
                      a.booked_at, e.prep_text, o.status AS order_status, a.day
                 FROM appointment a JOIN exam_type e ON e.code = a.exam_code JOIN resource r ON r.id = a.resource_id
                 JOIN exam_order o ON o.id = a.order_id
                WHERE a.patient_id = $1 ORDER BY a.starts_at, a.id""",
            patient_id,
        )


async def audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    patient_id: int | None,
    detail: dict[str, Any] | None = None,
) -> None:
    async with database_errors():
        await conn.execute(
            """INSERT INTO audit_log (actor_id, actor_role, action, object_type, object_id, patient_id, ip, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            actor.user_id,
            actor.role,
            action,
            object_type,
            object_id,
            patient_id,
            actor.ip,
            detail or {},
        )


async def ward_inpatients(conn: asyncpg.Connection | asyncpg.Pool, ward_id: str) -> list[asyncpg.Record]:
    """The ward's inpatients with pending exam orders, one row per order, by bed."""
    async with database_errors():
        return await conn.fetch(
            """SELECT p.id AS patient_id, p.name, p.gender, p.birth_date, o.bed_no, o.id AS order_id,
                      o.exam_code, e.name AS exam_name, o.priority, o.ordered_at
                 FROM exam_order o JOIN patient p ON p.id = o.patient_id JOIN exam_type e ON e.code = o.exam_code
                WHERE o.ward_id = $1 AND o.patient_class = 'inpatient' AND o.status IN ('ordered', 'no_show')
                ORDER BY o.bed_no NULLS LAST, p.id, o.id""",
            ward_id,
        )


async def find_patient(
    conn: asyncpg.Connection | asyncpg.Pool, mrn: str | None, id_number: str | None
) -> asyncpg.Record | None:
    """By visit card / barcode (MRN) or by ID number."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT id, mrn, name, gender, birth_date, id_number, phone FROM patient
                WHERE ($1::text IS NOT NULL AND mrn = $1) OR ($2::text IS NOT NULL AND upper(id_number) = $2)
                ORDER BY id LIMIT 1""",
            mrn,
            id_number,
        )
