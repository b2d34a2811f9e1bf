"""Load the demo data set (app.demo.data) into an empty, migrated database.

Slots are not created here: the slot generator builds them from the templates.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import msgspec

from app.demo import data
from app.security.crypto import KeyRing, pii_keys
from app.security.passwords import hash_password

if TYPE_CHECKING:
    import asyncpg

# Serialises concurrent seeders (two app instances starting at once); any constant bigint works.
_ADVISORY_LOCK_KEY = 0x6875_6979_7565  # "huiyue"


class DemoSummary(msgspec.Struct, frozen=True):
    """Counts of the demo data set and its accounts; already_seeded means nothing was inserted."""

    already_seeded: bool
    campuses: int
    departments: int
    resources: int
    exam_types: int
    capabilities: int
    slot_templates: int
    patients: int
    orders: int
    accounts: list[tuple[str, str, str]]


def demo_accounts() -> list[tuple[str, str, str]]:
    """(username, role, display_name) of every demo account; all share data.DEMO_PASSWORD."""
    return [(a.username, a.role, a.display_name) for a in data.STAFF_ACCOUNTS]


def _summary(already_seeded: bool) -> DemoSummary:
    return DemoSummary(
        already_seeded=already_seeded,
        campuses=len(data.CAMPUSES),
        departments=len(data.DEPARTMENTS),
        resources=len(data.RESOURCES),
        exam_types=len(data.EXAM_TYPES),
        capabilities=len(data.CAPABILITIES),
        slot_templates=len(data.SLOT_TEMPLATES),
        patients=len(data.PATIENTS),
        orders=len(data.ORDERS),
        accounts=demo_accounts(),
    )


async def seed_demo(conn: asyncpg.Connection, keys: KeyRing | None = None) -> DemoSummary:
    """Insert the demo hospital in one transaction; a no-op if hospital 'h1' already exists.

    Patients' ID numbers and phones are encrypted with `keys` (default: the key ring of the
    process environment, HY_PII_KEYS or the development key file)."""
    hid = data.HOSPITAL_ID
    ring = keys if keys is not None else pii_keys()
    if await conn.fetchval("SELECT 1 FROM hospital WHERE id = $1", hid):
        return _summary(already_seeded=True)
    # argon2 is slow on purpose: hash once, off the event loop, and share the hash.
    password_hash = await asyncio.to_thread(hash_password, data.DEMO_PASSWORD)

    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_KEY)
        if await conn.fetchval("SELECT 1 FROM hospital WHERE id = $1", hid):  # lost a race
            return _summary(already_seeded=True)

        h = data.HOSPITAL
        await conn.execute(
            "INSERT INTO hospital (id, name, short_name, timezone) VALUES ($1, $2, $3, $4)",
            h.id,
            h.name,
            h.short_name,
            h.timezone,
        )
        await conn.copy_records_to_table(
            "campus",
            columns=("id", "hospital_id", "name", "address"),
            records=[(c.id, hid, c.name, c.address) for c in data.CAMPUSES],
        )
        await conn.copy_records_to_table(
            "department",
            columns=("id", "hospital_id", "campus_id", "name", "category", "sensitive", "location"),
            records=[(d.id, hid, d.campus_id, d.name, d.category, d.sensitive, d.location) for d in data.DEPARTMENTS],
        )
        await conn.copy_records_to_table(
            "resource",
            columns=(
                "id",
                "hospital_id",
                "department_id",
                "campus_id",
                "kind",
                "modality",
                "name",
                "location",
                "ae_title",
            ),
            # Each modality's DICOM AE title (its worklist station) is its id in the demo hospital.
            records=[
                (r.id, hid, r.department_id, r.campus_id, r.kind, r.modality, r.name, r.location, r.id)
                for r in data.RESOURCES
            ],
        )
        await conn.copy_records_to_table(
            "exam_type",
            columns=(
                "code",
                "name",
                "modality",
                "department_id",
                "body_part",
                "duration_min",
                "fasting",
                "full_bladder",
                "contrast",
                "anaesthesia",
                "prep_text",
                "noshow_grace_min",
            ),
            records=[
                (
                    e.code,
                    e.name,
                    e.modality,
                    e.department_id,
                    e.body_part,
                    e.duration_min,
                    e.fasting,
                    e.full_bladder,
                    e.contrast,
                    e.anaesthesia,
                    e.prep_text,
                    e.noshow_grace_min,
                )
                for e in data.EXAM_TYPES
            ],
        )
        await conn.copy_records_to_table(
            "exam_capability",
            columns=("exam_code", "resource_id"),
            records=list(data.CAPABILITIES),
        )
        # quotas is passed as text and cast in SQL, so this works whether or not the caller's
        # connection has a jsonb codec installed.
        await conn.executemany(
            "INSERT INTO slot_template (resource_id, weekday, start_time, end_time, window_min, capacity, quotas)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)",
            [
                (
                    t.resource_id,
                    t.weekday,
                    t.start_time,
                    t.end_time,
                    t.window_min,
                    t.capacity,
                    json.dumps(t.quotas, sort_keys=True),
                )
                for t in data.SLOT_TEMPLATES
            ],
        )
        # The ID number and phone are stored encrypted, with the number's blind index (migration 0015).
        await conn.copy_records_to_table(
            "patient",
            columns=(
                "hospital_id",
                "mrn",
                "name",
                "gender",
                "birth_date",
                "id_number_enc",
                "id_number_idx",
                "phone_enc",
                "phone_idx",
                "insurance_no",
            ),
            records=[
                (
                    hid,
                    p.mrn,
                    p.name,
                    p.gender,
                    p.birth_date,
                    *ring.seal_id_number(p.id_number),
                    *ring.seal_phone(p.phone),
                    p.insurance_no,
                )
                for p in data.PATIENTS
            ],
        )
        patient_ids: dict[str, int] = {
            row["mrn"]: row["id"]
            for row in await conn.fetch(
                "SELECT id, mrn FROM patient WHERE mrn = ANY($1::text[])", [p.mrn for p in data.PATIENTS]
            )
        }
        await conn.copy_records_to_table(
            "exam_order",
            columns=(
                "order_no",
                "hospital_id",
                "patient_id",
                "exam_code",
                "ordering_department_id",
                "ordering_doctor",
                "patient_class",
                "priority",
                "ward_id",
                "bed_no",
                "clinical_note",
            ),
            records=[
                (
                    o.order_no,
                    hid,
                    patient_ids[o.patient_mrn],
                    o.exam_code,
                    o.ordering_department_id,
                    o.ordering_doctor,
                    o.patient_class,
                    o.priority,
                    o.ward_id,
                    o.bed_no,
                    o.clinical_note,
                )
                for o in data.ORDERS
            ],
        )
        await conn.copy_records_to_table(
            "staff_user",
            columns=("hospital_id", "username", "display_name", "password_hash", "department_id", "patient_id"),
            records=[
                (
                    hid,
                    a.username,
                    a.display_name,
                    password_hash,
                    a.department_id,
                    patient_ids[a.patient_mrn] if a.patient_mrn else None,
                )
                for a in data.STAFF_ACCOUNTS
            ],
        )
        await conn.execute(
            "INSERT INTO staff_role (user_id, role_code)"
            " SELECT u.id, a.role FROM unnest($1::text[], $2::text[]) AS a (username, role)"
            " JOIN staff_user u ON u.username = a.username",
            [a.username for a in data.STAFF_ACCOUNTS],
            [a.role for a in data.STAFF_ACCOUNTS],
        )
        await _seed_rules_and_facts(conn, hid, patient_ids)
    return _summary(already_seeded=False)


async def _seed_rules_and_facts(conn: asyncpg.Connection, hospital_id: str, patient_ids: dict[str, int]) -> None:
    """The default rule table, the exam categories it selects by, and the demo patients' facts."""
    from app.db import rules_repo
    from app.planning.rules import load_default_rules

    await rules_repo.set_exam_tags(conn, data.EXAM_TAGS)
    await rules_repo.replace_rules(conn, hospital_id, load_default_rules(), actor_id=None)
    for mrn, facts in sorted(data.PATIENT_FACTS.items()):
        await rules_repo.add_facts(conn, patient_ids[mrn], facts, "his", actor_id=None)
    # DOMAIN §3: the ward's reserve of a day goes to every channel at 16:00 the day before.
    await conn.execute(
        """INSERT INTO quota_release_rule (hospital_id, channel, days_before, at_time)
           VALUES ($1, 'ward', 1, TIME '16:00') ON CONFLICT DO NOTHING""",
        hospital_id,
    )
