"""Benchmark data for the booking load tests, written straight into the target database (asyncpg).

Every call creates its own bench resource, slots, patients and orders under a fresh tag, so it can
run again on the same database without clashing with earlier runs. After it the Redis
availability index of `day` must be rebuilt (POST /api/v1/admin/reconcile {"day": ...} as admin,
or `python -m app reconcile`): the booking path only sees slots that are in the index.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path

import asyncpg

HOSPITAL_ID = "h1"
EXAM_CODE = "CT-HEAD"  # a demo exam type; the bench resource is made capable of it
TIMEZONE = "Asia/Shanghai"
WINDOW_MIN = 30
FIRST_START = time(8, 0)
MAX_SLOTS = 32  # 08:00 + 32 x 30 min = midnight: every slot stays on `day`


@dataclass
class StormData:
    tag: str
    day: date
    resource_id: str
    slot_ids: list[int]
    capacity_per_slot: int
    pairs: list[tuple[int, int]] = field(repr=False)  # (patient_id, order_id)

    @property
    def total_capacity(self) -> int:
        return self.capacity_per_slot * len(self.slot_ids)

    def write_json(self, path: Path) -> Path:
        """The file the Locust users read (env HY_STORM_FILE)."""
        path.write_text(json.dumps({"pairs": self.pairs, "slot_ids": self.slot_ids, "day": self.day.isoformat()}))
        return path

    def write_pairs_txt(self, path: Path) -> Path:
        """The file wrk_book.lua reads: one "patient_id order_id" per line."""
        path.write_text("".join(f"{p} {o}\n" for p, o in self.pairs))
        return path


async def ensure_bench_resource(conn: asyncpg.Connection, resource_id: str) -> None:
    """A CT device of the main campus's radiology department that can do CT-HEAD."""
    await conn.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name, location)
           VALUES ($1, $2, 'RAD', 'main', 'device', 'CT', $3, 'bench')
           ON CONFLICT (id) DO NOTHING""",
        resource_id,
        HOSPITAL_ID,
        f"{resource_id} (load test)",
    )
    await conn.execute(
        "INSERT INTO exam_capability (exam_code, resource_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        EXAM_CODE,
        resource_id,
    )


async def create_slots(
    conn: asyncpg.Connection, resource_id: str, day: date, n_slots: int, capacity_per_slot: int
) -> list[int]:
    """`n_slots` consecutive 30-minute windows from 08:00 hospital time, no channel quotas."""
    if not 1 <= n_slots <= MAX_SLOTS:
        raise ValueError(f"n_slots must be 1..{MAX_SLOTS}, got {n_slots}")
    rows = await conn.fetch(
        """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity, quotas)
           SELECT $1, $2, $3::date,
                  (($3::date + $6::time) AT TIME ZONE $7) + (g - 1) * make_interval(mins => $8),
                  (($3::date + $6::time) AT TIME ZONE $7) + g * make_interval(mins => $8),
                  $5, '{}'::jsonb
             FROM generate_series(1, $4) AS g
           RETURNING id""",
        HOSPITAL_ID,
        resource_id,
        day,
        n_slots,
        capacity_per_slot,
        FIRST_START,
        TIMEZONE,
        WINDOW_MIN,
    )
    return sorted(r["id"] for r in rows)


async def create_patients_with_orders(conn: asyncpg.Connection, tag: str, n_patients: int) -> list[tuple[int, int]]:
    """`n_patients` new patients, each with one pending CT-HEAD order, in one statement."""
    rows = await conn.fetch(
        """WITH p AS (
               INSERT INTO patient (hospital_id, mrn, name, gender, birth_date)
               SELECT $1, 'BENCH-' || $2 || '-' || g, '压测患者' || g, 'U', DATE '1980-01-01'
                 FROM generate_series(1, $3) AS g
               RETURNING id
           )
           INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           SELECT 'BENCH-' || $2 || '-' || p.id, $1, p.id, $4, 'GI', '压测医生', 'outpatient' FROM p
           RETURNING patient_id, id""",
        HOSPITAL_ID,
        tag,
        n_patients,
        EXAM_CODE,
    )
    return sorted((r["patient_id"], r["id"]) for r in rows)


async def prepare_storm(
    conn: asyncpg.Connection,
    *,
    day: date,
    n_patients: int,
    n_slots: int,
    capacity_per_slot: int,
    tag: str | None = None,
) -> StormData:
    """A dedicated bench resource with `n_slots` slots of `capacity_per_slot` places on `day`, and
    `n_patients` new patients with one CT-HEAD order each, all in one transaction."""
    tag = tag or uuid.uuid4().hex[:8]
    resource_id = f"BENCH-CT-{tag}"
    async with conn.transaction():
        await ensure_bench_resource(conn, resource_id)
        slot_ids = await create_slots(conn, resource_id, day, n_slots, capacity_per_slot)
        pairs = await create_patients_with_orders(conn, tag, n_patients)
    return StormData(tag, day, resource_id, slot_ids, capacity_per_slot, pairs)


async def check_invariant(conn: asyncpg.Connection, slot_ids: list[int]) -> dict[str, object]:
    """For every slot: booked <= capacity and booked == its live appointments."""
    rows = await conn.fetch(
        """SELECT s.id, s.capacity, s.booked,
                  (SELECT count(*) FROM appointment a WHERE a.slot_id = s.id AND a.status = 'booked') AS live
             FROM slot s WHERE s.id = ANY($1::bigint[]) ORDER BY s.id""",
        slot_ids,
    )
    bad = [
        {"slot_id": r["id"], "capacity": r["capacity"], "booked": r["booked"], "appointments": r["live"]}
        for r in rows
        if r["booked"] > r["capacity"] or r["booked"] != r["live"]
    ]
    if len(rows) != len(slot_ids):
        bad.append({"missing_slots": sorted(set(slot_ids) - {r["id"] for r in rows})})
    return {
        "ok": not bad,
        "booked": sum(r["booked"] for r in rows),
        "appointments": sum(r["live"] for r in rows),
        "capacity": sum(r["capacity"] for r in rows),
        "violations": bad[:10],
    }
