"""seed_demo against a real PostgreSQL. `db_conn` (tests/conftest.py) is an asyncpg connection to a freshly
migrated, empty database."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from app.demo import data
from app.demo.seed import demo_accounts, seed_demo
from app.security.crypto import pii_keys
from app.security.idcard import is_valid_id_number
from app.security.passwords import verify_password

if TYPE_CHECKING:
    import asyncpg

EXPECTED_RESOURCES_BY_PREFIX = {"CT": 3, "MR": 2, "DR": 2, "US": 8, "GS": 3, "CS": 2, "ECG": 3}


def _quotas(value: object) -> dict[str, int]:
    # Works with or without a jsonb codec on the connection.
    return json.loads(value) if isinstance(value, str) else dict(value)  # type: ignore[arg-type]


async def test_seed_demo_loads_a_consistent_hospital(db_conn: asyncpg.Connection) -> None:
    summary = await seed_demo(db_conn)
    assert not summary.already_seeded
    assert summary.accounts == demo_accounts()

    # Resources: exact numbers per kind.
    resource_ids = [r["id"] for r in await db_conn.fetch("SELECT id FROM resource")]
    by_prefix = {
        prefix: sum(1 for rid in resource_ids if rid.rstrip("0123456789") == prefix)
        for prefix in EXPECTED_RESOURCES_BY_PREFIX
    }
    assert by_prefix == EXPECTED_RESOURCES_BY_PREFIX
    assert len(resource_ids) == sum(EXPECTED_RESOURCES_BY_PREFIX.values()) == summary.resources
    modalities = dict(await db_conn.fetch("SELECT modality, count(*) FROM resource GROUP BY modality"))
    assert modalities == {"CT": 3, "MR": 2, "DX": 2, "US": 8, "ES": 5, "ECG": 3}

    # Exam types: enough of them, each performable somewhere.
    assert await db_conn.fetchval("SELECT count(*) FROM exam_type") >= 38
    assert (
        await db_conn.fetchval(
            "SELECT count(*) FROM exam_type e"
            " WHERE NOT EXISTS (SELECT 1 FROM exam_capability c WHERE c.exam_code = e.code)"
        )
        == 0
    )
    assert await db_conn.fetchval(
        "SELECT array_agg(resource_id ORDER BY resource_id) FROM exam_capability WHERE exam_code = 'CTA-CORO'"
    ) == ["CT1"]

    # Templates: every resource has some, quotas always leave an open pool and use known channels.
    assert (
        await db_conn.fetchval(
            "SELECT count(*) FROM resource r"
            " WHERE NOT EXISTS (SELECT 1 FROM slot_template t WHERE t.resource_id = r.id)"
        )
        == 0
    )
    templates = await db_conn.fetch("SELECT capacity, quotas FROM slot_template")
    assert len(templates) == summary.slot_templates
    for row in templates:
        quotas = _quotas(row["quotas"])
        assert set(quotas) <= data.QUOTA_CHANNELS
        assert sum(quotas.values()) < row["capacity"]

    # Patients and orders.
    patients = await db_conn.fetch("SELECT id_number, phone, id_number_enc FROM patient")
    assert len(patients) == summary.patients == 60
    keys = pii_keys()
    assert all(is_valid_id_number(keys.open_id_number(p["id_number_enc"]) or "") for p in patients)
    assert all(p["id_number"] is None and p["phone"] is None for p in patients)  # stored encrypted only
    assert await db_conn.fetchval("SELECT count(*) FROM exam_order WHERE status = 'ordered'") == summary.orders
    assert summary.orders >= 140
    assert (
        await db_conn.fetchval(
            "SELECT count(*) FROM exam_order WHERE patient_class = 'inpatient' AND (ward_id IS NULL OR bed_no IS NULL)"
        )
        == 0
    )

    # Accounts: one per role, all with the demo password; the patient account is linked.
    rows = await db_conn.fetch(
        "SELECT u.username, r.role_code, u.display_name, u.password_hash, u.patient_id"
        " FROM staff_user u JOIN staff_role r ON r.user_id = u.id ORDER BY u.id"
    )
    assert [(r["username"], r["role_code"], r["display_name"]) for r in rows] == demo_accounts()
    assert len({r["password_hash"] for r in rows}) == 1
    assert verify_password(rows[0]["password_hash"], data.DEMO_PASSWORD)
    assert {r["username"] for r in rows if r["patient_id"] is not None} == {"patient"}

    # A second run changes nothing.
    counts_before = await _table_counts(db_conn)
    again = await seed_demo(db_conn)
    assert again.already_seeded
    assert await _table_counts(db_conn) == counts_before


async def _table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = (
        "hospital",
        "campus",
        "department",
        "resource",
        "exam_type",
        "exam_capability",
        "slot_template",
        "patient",
        "exam_order",
        "staff_user",
        "staff_role",
    )
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
