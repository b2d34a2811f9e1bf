"""SQL for patients, their orders and appointments, and the audit log of access to them.

The ID number and phone are stored encrypted (sql/0015_encrypted_identifiers.sql): reads that need
them decrypt with the key ring they are given (`PatientPii`), look-ups by ID number match the blind
index, and `protect_pii` / `reencrypt_pii` move rows to the current key."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import asyncpg
import msgspec

from app.db import audit_repo
from app.db.pool import connect, database_errors
from app.security.crypto import KeyRing

# The columns PatientPii is read from: the encrypted ones, and the legacy plaintext ones for a row
# the start-up step has not reached yet (written by an older version, or by a writer outside app/).
PII_COLUMNS = "id_number_enc, phone_enc, id_number, phone"


class PatientPii(msgspec.Struct, frozen=True):
    """A patient with his ID number and phone decrypted: for masking on the way out, never logged."""

    id: int
    mrn: str
    name: str
    gender: str
    birth_date: date
    id_number: str | None
    phone: str | None


def _legacy(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def decrypt_pii(keys: KeyRing, row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(ID number, phone) of a row carrying PII_COLUMNS. A plaintext value is newer than the
    ciphertext beside it (only a writer outside app/, or an older version, still writes plaintext)."""
    id_number = _legacy(row["id_number"])
    if id_number is None and row["id_number_enc"] is not None:
        id_number = keys.open_id_number(row["id_number_enc"])
    phone = _legacy(row["phone"])
    if phone is None and row["phone_enc"] is not None:
        phone = keys.open_phone(row["phone_enc"])
    return id_number, phone


def _patient_pii(keys: KeyRing, row: Mapping[str, Any]) -> PatientPii:
    id_number, phone = decrypt_pii(keys, row)
    return PatientPii(row["id"], row["mrn"], row["name"], row["gender"], row["birth_date"], id_number, phone)


async def patient_by_id(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int) -> asyncpg.Record | None:
    """The patient without his ID number and phone (whether he exists, his name and birth date)."""
    async with database_errors():
        return await conn.fetchrow("SELECT id, mrn, name, gender, birth_date FROM patient WHERE id = $1", patient_id)


async def patient_with_pii(
    conn: asyncpg.Connection | asyncpg.Pool, keys: KeyRing, patient_id: int
) -> PatientPii | None:
    async with database_errors():
        row = await conn.fetchrow(
            f"SELECT id, mrn, name, gender, birth_date, {PII_COLUMNS} FROM patient WHERE id = $1", patient_id
        )
    return None if row is None else _patient_pii(keys, row)


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


# Audit rows of access to a patient's data: written by the audit log's one writer (who, role,
# address, terminal, what), under the name the routes have always called.
audit = audit_repo.record


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
    conn: asyncpg.Connection | asyncpg.Pool, keys: KeyRing, mrn: str | None, id_number: str | None
) -> PatientPii | None:
    """By visit card / barcode (MRN) or by ID number (through its blind index)."""
    index = keys.id_number_index(id_number) if id_number else None
    async with database_errors():
        row = await conn.fetchrow(
            f"""SELECT id, mrn, name, gender, birth_date, {PII_COLUMNS} FROM patient
                WHERE ($1::text IS NOT NULL AND mrn = $1) OR ($2::bytea IS NOT NULL AND id_number_idx = $2)
                ORDER BY id LIMIT 1""",
            mrn,
            index,
        )
    return None if row is None else _patient_pii(keys, row)


# -- encryption at rest: the start-up step and key rotation ----------------------------------------


class PiiReport(msgspec.Struct, frozen=True):
    encrypted: int = 0  # rows whose plaintext was encrypted and emptied
    reencrypted: int = 0  # rows moved to the current key (or re-indexed)


_BATCH = 500


async def _rewrite(conn: asyncpg.Connection, keys: KeyRing, rows: list[tuple[int, str | None, str | None]]) -> None:
    """Store (id, ID number, phone) encrypted under the current key and empty the plaintext."""
    sealed = [(pid, *keys.seal_id_number(idn), *keys.seal_phone(phone)) for pid, idn, phone in rows]
    await conn.execute(
        """UPDATE patient p SET id_number_enc = r.enc, id_number_idx = r.idx, phone_enc = r.phone_enc,
                  phone_idx = r.phone_idx, id_number = NULL, phone = NULL
             FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[])
                  AS r(id, enc, idx, phone_enc, phone_idx)
            WHERE p.id = r.id""",
        *([r[i] for r in sealed] for i in range(5)),
    )


async def protect_pii(conn: asyncpg.Connection, keys: KeyRing) -> PiiReport:
    """Encrypt every row still holding a plaintext ID number or phone, and empty those columns.

    Idempotent and resumable (batches of 500, each its own transaction, rows locked while
    rewritten); with nothing to do it costs one query. A plaintext value replaces the ciphertext
    beside it (see `decrypt_pii`); an empty one ('') counts as none."""
    done = 0
    last = 0
    async with database_errors():
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    f"""SELECT id, {PII_COLUMNS} FROM patient
                         WHERE id > $1 AND (id_number IS NOT NULL OR phone IS NOT NULL)
                         ORDER BY id LIMIT $2 FOR UPDATE""",
                    last,
                    _BATCH,
                )
                if not rows:
                    return PiiReport(encrypted=done)
                await _rewrite(conn, keys, [(r["id"], *decrypt_pii(keys, r)) for r in rows])
            done += len(rows)
            last = rows[-1]["id"]


async def reencrypt_pii(conn: asyncpg.Connection, keys: KeyRing, *, reindex: bool = False) -> PiiReport:
    """Move every ciphertext not made with the current key to it (after a new key was put first in
    HY_PII_KEYS); with `reindex`, every row (after a change of HY_PII_INDEX_KEY). The old keys must
    still be in the ring; a row that does not decrypt stops the run with PiiKeyError /
    PiiDecryptError (the rows before it are done). Plaintext leftovers are encrypted on the way."""
    header = keys.header()
    done = 0
    last = 0
    async with database_errors():
        while True:
            async with conn.transaction():
                rows = await conn.fetch(
                    f"""SELECT id, {PII_COLUMNS} FROM patient
                         WHERE id > $1
                           AND ($3 OR id_number IS NOT NULL OR phone IS NOT NULL
                                OR (id_number_enc IS NOT NULL AND substring(id_number_enc FROM 1 FOR $4) <> $5)
                                OR (phone_enc IS NOT NULL AND substring(phone_enc FROM 1 FOR $4) <> $5))
                         ORDER BY id LIMIT $2 FOR UPDATE""",
                    last,
                    _BATCH,
                    reindex,
                    len(header),
                    header,
                )
                if not rows:
                    return PiiReport(reencrypted=done)
                await _rewrite(conn, keys, [(r["id"], *decrypt_pii(keys, r)) for r in rows])
            done += len(rows)
            last = rows[-1]["id"]


async def protect_database(
    database_url: str, keys: KeyRing, *, reencrypt: bool = False, reindex: bool = False
) -> PiiReport:
    """The start-up step on its own connection: `protect_pii`, then (on request) `reencrypt_pii`."""
    conn = await connect(database_url)
    try:
        report = await protect_pii(conn, keys)
        if reencrypt or reindex:
            moved = await reencrypt_pii(conn, keys, reindex=reindex)
            report = PiiReport(encrypted=report.encrypted, reencrypted=moved.reencrypted)
        return report
    finally:
        await conn.close()


async def in_ward(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, ward_id: str) -> bool:
    """Whether the patient has an inpatient order from the ward."""
    async with database_errors():
        return bool(
            await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM exam_order
                                   WHERE patient_id = $1 AND ward_id = $2 AND patient_class = 'inpatient')""",
                patient_id,
                ward_id,
            )
        )
