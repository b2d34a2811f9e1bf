"""SQL of the HL7 inbound listener: the message record (dedupe by sender and MSH-10), patients by
MRN, orders by placer order number, and the reference data an order must name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import asyncpg

from app.db.patient_repo import PII_COLUMNS, decrypt_pii
from app.db.pool import database_errors
from app.security.actor import Actor
from app.security.crypto import KeyRing


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection in one transaction; connection failures become DatabaseUnavailable."""
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def savepoint(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A nested transaction: a refused message's partial effects roll back, its record stays."""
    async with database_errors(), conn.transaction():
        yield


# -- the message record --------------------------------------------------------------------------


async def stored_ack(
    conn: asyncpg.Connection | asyncpg.Pool, facility: str, application: str, control_id: str
) -> asyncpg.Record | None:
    """The ACK a message with this sender and MSH-10 got when it was applied or refused."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT id, status, ack, charset, received_at FROM hl7_inbound_message
                WHERE sending_facility = $1 AND sending_application = $2 AND control_id = $3
                  AND status IN ('AA', 'AE')""",
            facility,
            application,
            control_id,
        )


async def claim(
    conn: asyncpg.Connection,
    *,
    hospital_id: str,
    facility: str,
    application: str,
    control_id: str,
    message_type: str,
    charset: str,
    peer: str,
) -> int | None:
    """Record the message inside the caller's transaction; None when another copy got there first
    (a concurrent copy waits here until the first one's transaction ends)."""
    async with database_errors():
        return await conn.fetchval(
            """INSERT INTO hl7_inbound_message (hospital_id, sending_facility, sending_application, control_id,
                                               message_type, charset, status, ack, peer)
               VALUES ($1, $2, $3, $4, $5, $6, 'AA', '', $7)
               ON CONFLICT (sending_facility, sending_application, control_id) WHERE status IN ('AA', 'AE')
               DO NOTHING RETURNING id""",
            hospital_id,
            facility,
            application,
            control_id,
            message_type,
            charset,
            peer,
        )


async def finish(
    conn: asyncpg.Connection,
    message_id: int,
    *,
    status: str,
    ack: str,
    error_code: str | None,
    error: str | None,
    patient_id: int | None,
    detail: Mapping[str, Any],
) -> None:
    async with database_errors():
        await conn.execute(
            """UPDATE hl7_inbound_message
                  SET status = $2, ack = $3, error_code = $4, error = $5, patient_id = $6, detail = $7
                WHERE id = $1""",
            message_id,
            status,
            ack,
            error_code,
            error,
            patient_id,
            dict(detail),
        )


async def log_rejected(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    hospital_id: str,
    facility: str,
    application: str,
    control_id: str,
    message_type: str,
    charset: str,
    error_code: str,
    error: str,
    ack: str,
    peer: str,
) -> None:
    """A rejected (AR) message: a log row only, not a dedupe entry."""
    async with database_errors():
        await conn.execute(
            """INSERT INTO hl7_inbound_message (hospital_id, sending_facility, sending_application, control_id,
                                               message_type, charset, status, error_code, error, ack, peer)
               VALUES ($1, $2, $3, $4, $5, $6, 'AR', $7, $8, $9, $10)""",
            hospital_id,
            facility[:100],
            application[:100],
            control_id[:200],
            message_type[:40],
            charset,
            error_code,
            error,
            ack,
            peer,
        )


# -- patients ------------------------------------------------------------------------------------


async def patient_by_mrn(conn: asyncpg.Connection, keys: KeyRing, mrn: str) -> dict[str, Any] | None:
    """The patient, locked for the rest of the transaction, with his ID number and phone decrypted."""
    async with database_errors():
        row = await conn.fetchrow(
            f"""SELECT id, hospital_id, mrn, name, gender, birth_date, {PII_COLUMNS} FROM patient
                WHERE mrn = $1 FOR UPDATE""",
            mrn,
        )
    if row is None:
        return None
    id_number, phone = decrypt_pii(keys, row)
    out = {k: row[k] for k in ("id", "hospital_id", "mrn", "name", "gender", "birth_date")}
    return {**out, "id_number": id_number, "phone": phone}


async def insert_patient(
    conn: asyncpg.Connection,
    keys: KeyRing,
    *,
    hospital_id: str,
    mrn: str,
    name: str,
    gender: str,
    birth_date: date,
    id_number: str | None,
    phone: str | None,
) -> int | None:
    """The new patient's id (ID number and phone stored encrypted); None when the MRN was
    registered meanwhile."""
    id_number_enc, id_number_idx = keys.seal_id_number(id_number)
    phone_enc, phone_idx = keys.seal_phone(phone)
    async with database_errors():
        return await conn.fetchval(
            """INSERT INTO patient (hospital_id, mrn, name, gender, birth_date, id_number_enc, id_number_idx,
                                    phone_enc, phone_idx)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (mrn) DO NOTHING RETURNING id""",
            hospital_id,
            mrn,
            name,
            gender,
            birth_date,
            id_number_enc,
            id_number_idx,
            phone_enc,
            phone_idx,
        )


_PATIENT_COLUMNS = frozenset({"name", "gender", "birth_date", "id_number", "phone"})


def _stored(keys: KeyRing, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The columns to set for `changes`: the ID number and phone encrypted (their plaintext emptied)."""
    out = {c: v for c, v in changes.items() if c not in ("id_number", "phone")}
    if "id_number" in changes:
        out["id_number_enc"], out["id_number_idx"] = keys.seal_id_number(changes["id_number"])
        out["id_number"] = None
    if "phone" in changes:
        out["phone_enc"], out["phone_idx"] = keys.seal_phone(changes["phone"])
        out["phone"] = None
    return out


async def update_patient(conn: asyncpg.Connection, keys: KeyRing, patient_id: int, changes: Mapping[str, Any]) -> None:
    if not changes:
        return
    if not set(changes) <= _PATIENT_COLUMNS:
        raise ValueError(f"patient columns must be among {sorted(_PATIENT_COLUMNS)}, got {sorted(changes)}")
    stored = _stored(keys, changes)
    columns = sorted(stored)
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    async with database_errors():
        await conn.execute(
            f"UPDATE patient SET {assignments}, updated_at = now() WHERE id = $1",
            patient_id,
            *(stored[c] for c in columns),
        )


# -- orders --------------------------------------------------------------------------------------


async def order_by_no(conn: asyncpg.Connection, order_no: str) -> asyncpg.Record | None:
    """The order with its patient's MRN, locked for the rest of the transaction."""
    async with database_errors():
        return await conn.fetchrow(
            """SELECT o.id, o.order_no, o.hospital_id, o.patient_id, p.mrn, o.exam_code, o.status, o.priority,
                      o.clinical_note
                 FROM exam_order o JOIN patient p ON p.id = o.patient_id
                WHERE o.order_no = $1 FOR UPDATE OF o""",
            order_no,
        )


async def live_appointment(conn: asyncpg.Connection, order_id: int) -> int | None:
    async with database_errors():
        return await conn.fetchval(
            "SELECT id FROM appointment WHERE order_id = $1 AND status = 'booked'",
            order_id,
        )


async def insert_order(
    conn: asyncpg.Connection,
    *,
    order_no: str,
    hospital_id: str,
    patient_id: int,
    exam_code: str,
    department_id: str,
    doctor: str,
    patient_class: str,
    priority: str,
    ward_id: str | None,
    bed_no: str | None,
    clinical_note: str,
) -> int | None:
    """The new order's id; None when the order number exists already."""
    async with database_errors():
        return await conn.fetchval(
            """INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                       ordering_doctor, patient_class, priority, ward_id, bed_no, clinical_note)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (order_no) DO NOTHING RETURNING id""",
            order_no,
            hospital_id,
            patient_id,
            exam_code,
            department_id,
            doctor,
            patient_class,
            priority,
            ward_id,
            bed_no,
            clinical_note,
        )


_ORDER_COLUMNS = frozenset({"exam_code", "priority", "clinical_note"})


async def update_order(conn: asyncpg.Connection, order_id: int, changes: Mapping[str, Any]) -> None:
    columns = sorted(changes)
    if not columns:
        return
    if not set(columns) <= _ORDER_COLUMNS:
        raise ValueError(f"order columns must be among {sorted(_ORDER_COLUMNS)}, got {columns}")
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    async with database_errors():
        await conn.execute(
            f"UPDATE exam_order SET {assignments}, updated_at = now() WHERE id = $1",
            order_id,
            *(changes[c] for c in columns),
        )


async def order_event(
    conn: asyncpg.Connection,
    *,
    order_id: int,
    event: str,
    from_status: str | None,
    to_status: str,
    actor: Actor,
    channel: str,
    reason: str,
    detail: Mapping[str, Any],
) -> None:
    """An event of the order's timeline that the HIS itself sent (no outbox message back to it)."""
    async with database_errors():
        await conn.execute(
            """INSERT INTO order_event (order_id, event, from_status, to_status, actor_id, actor_role, channel,
                                        terminal, reason, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            order_id,
            event,
            from_status,
            to_status,
            actor.user_id,
            actor.role,
            channel,
            actor.terminal,
            reason,
            dict(detail),
        )


# -- reference data ------------------------------------------------------------------------------


async def exam_codes(conn: asyncpg.Connection, codes: list[str]) -> set[str]:
    """Those of `codes` that name an active exam type."""
    async with database_errors():
        rows = await conn.fetch("SELECT code FROM exam_type WHERE code = ANY($1::text[]) AND active", codes)
    return {r["code"] for r in rows}


async def departments(conn: asyncpg.Connection, hospital_id: str, ids: list[str]) -> dict[str, str]:
    """Department id -> category, for those of `ids` the hospital has."""
    async with database_errors():
        rows = await conn.fetch(
            "SELECT id, category FROM department WHERE hospital_id = $1 AND id = ANY($2::text[])",
            hospital_id,
            ids,
        )
    return {r["id"]: r["category"] for r in rows}
