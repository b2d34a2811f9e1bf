"""The SQL the FHIR facade reads: patients, orders, slots and appointments, each with the columns
its resource needs. Every query is bounded to the hospital; searches over personal data are
bounded to one patient (or one order, or one id) by the callers. asyncpg errors are translated at
this boundary like everywhere else (`database_errors`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.db.pool import Pool, Record, database_errors


async def patients(
    pool: Pool, hospital_id: str, *, patient_id: int | None = None, mrn: str | None = None
) -> list[Record]:
    async with database_errors():
        rows: list[Record] = await pool.fetch(
            """SELECT id, mrn, name, gender, birth_date, updated_at FROM patient
                WHERE hospital_id = $1 AND ($2::bigint IS NULL OR id = $2) AND ($3::text IS NULL OR mrn = $3)
                ORDER BY id LIMIT 1000""",
            hospital_id,
            patient_id,
            mrn,
        )
    return rows


_ORDER_COLUMNS = """o.id, o.order_no, o.accession_no, o.patient_id, o.exam_code, t.name AS exam_name, o.status,
       o.priority, o.patient_class, o.ordering_department_id, d.name AS ordering_department_name,
       o.ordering_doctor, o.clinical_note, o.ordered_at, o.updated_at"""


async def orders(
    pool: Pool,
    hospital_id: str,
    *,
    order_id: int | None = None,
    patient_id: int | None = None,
    number: str | None = None,
    states: Sequence[str] | None = None,
) -> list[Record]:
    """Orders by id, patient, placer order number or accession number, in the given states."""
    async with database_errors():
        rows: list[Record] = await pool.fetch(
            f"""SELECT {_ORDER_COLUMNS}
                  FROM exam_order o JOIN exam_type t ON t.code = o.exam_code
                  JOIN department d ON d.id = o.ordering_department_id
                 WHERE o.hospital_id = $1 AND ($2::bigint IS NULL OR o.id = $2)
                   AND ($3::bigint IS NULL OR o.patient_id = $3)
                   AND ($4::text IS NULL OR o.order_no = $4 OR o.accession_no = $4)
                   AND ($5::text[] IS NULL OR o.status = ANY($5::text[]))
                 ORDER BY o.ordered_at, o.id LIMIT 1000""",
            hospital_id,
            order_id,
            patient_id,
            number,
            list(states) if states is not None else None,
        )
    return rows


async def slots(
    pool: Pool,
    hospital_id: str,
    *,
    slot_id: int | None = None,
    resource_ids: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 5000,
) -> list[Record]:
    """Slots with their lock state: `locked_all` (a lock for every channel covers it) and
    `locked_some` (a lock for some channels)."""
    async with database_errors():
        rows: list[Record] = await pool.fetch(
            """SELECT s.id, s.resource_id, s.day, s.starts_at, s.ends_at, s.capacity, s.booked, s.status,
                      EXISTS (SELECT 1 FROM slot_lock l
                               WHERE l.resource_id = s.resource_id AND l.released_at IS NULL
                                 AND l.starts_at < s.ends_at AND s.starts_at < l.ends_at
                                 AND l.channels IS NULL) AS locked_all,
                      EXISTS (SELECT 1 FROM slot_lock l
                               WHERE l.resource_id = s.resource_id AND l.released_at IS NULL
                                 AND l.starts_at < s.ends_at AND s.starts_at < l.ends_at
                                 AND l.channels IS NOT NULL) AS locked_some
                 FROM slot s
                WHERE s.hospital_id = $1 AND ($2::bigint IS NULL OR s.id = $2)
                  AND ($3::text[] IS NULL OR s.resource_id = ANY($3::text[]))
                  AND ($4::timestamptz IS NULL OR s.starts_at >= $4)
                  AND ($5::timestamptz IS NULL OR s.starts_at < $5)
                ORDER BY s.starts_at, s.resource_id, s.id LIMIT $6""",
            hospital_id,
            slot_id,
            list(resource_ids) if resource_ids is not None else None,
            start,
            end,
            limit,
        )
    return rows


async def appointments(
    pool: Pool,
    hospital_id: str,
    *,
    appointment_id: int | None = None,
    patient_id: int | None = None,
    order_id: int | None = None,
    hold_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[Record]:
    async with database_errors():
        rows: list[Record] = await pool.fetch(
            """SELECT a.id, a.order_id, a.patient_id, a.slot_id, a.exam_code, t.name AS exam_name, a.resource_id,
                      a.starts_at, a.ends_at, a.status, a.channel, a.booked_at, a.end_reason, a.replaced_by,
                      o.status AS order_status
                 FROM appointment a JOIN exam_order o ON o.id = a.order_id JOIN exam_type t ON t.code = a.exam_code
                WHERE a.hospital_id = $1 AND ($2::bigint IS NULL OR a.id = $2)
                  AND ($3::bigint IS NULL OR a.patient_id = $3) AND ($4::bigint IS NULL OR a.order_id = $4)
                  AND ($5::text IS NULL OR a.hold_id = $5)
                  AND ($6::timestamptz IS NULL OR a.starts_at >= $6) AND ($7::timestamptz IS NULL OR a.starts_at < $7)
                ORDER BY a.starts_at, a.id LIMIT 1000""",
            hospital_id,
            appointment_id,
            patient_id,
            order_id,
            hold_id,
            start,
            end,
        )
    return rows


def as_dict(row: Record) -> dict[str, Any]:
    return dict(row.items())
