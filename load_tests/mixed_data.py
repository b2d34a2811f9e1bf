"""Data for the mixed clinical day (load_tests/locustfile_clinical_day.py), written straight into the
target database (asyncpg), like storm_data.prepare_storm.

Everything is made under one fresh tag, so it never clashes with the demo hospital or an earlier
call. The server must (re)load its catalogue and rebuild the Redis index of the days touched
afterwards: run_mixed prepares the data *before* starting the server, whose start-up does both
(`python -m app serve` migrates, generates the horizon, reconciles every day with slots and loads the
catalogue).

What is made:

* **pool resources** (the booking pool, days `pool_days`, all ahead of whatever the run lasts so no
  booking ever turns into the past or a no-show during a soak):
  - `MIX-CT-<tag>-1..n` (RAD, CT): CT-HEAD (single bookings, reschedules) and CT-CHEST (bundles);
  - `MIX-US-<tag>` (US room): US-THYROID; `MIX-ECG-<tag>` (ECG room): ECG-REST (bundles);
  30-minute windows 08:00-18:00 with `pool_capacity` places each and no channel quota. The demo
  hospital's own CT / ultrasound / ECG slots can do the same exams and are used too (the planner
  and the availability reads see them): they are small and fill up, which is where the "slot
  full" answers come from.
* **check-in rooms** `MIX-Q<tag>-1..k` (RAD, DX; the demo technician belongs to RAD): DX-KUB, a
  30-minute window of `checkin_capacity` places around the clock from half an hour before now to
  `checkin_until` (+1 h), so that whenever the run is, a slot of *today* (hospital time) is in
  progress and its check-in window (`checkin_early_min` before the start to `noshow_grace_min`
  after the end, sql/0007) is open.
* **patients and orders**, pending (`ordered`):
  - `n_single` patients with one CT-HEAD order each (outpatient);
  - `n_bundle` patients with three orders each: CT-CHEST, US-THYROID, ECG-REST (no fasting, no
    full bladder, no contrast, no MRI: nothing the default rules block or warn about, apart from the
    travel gap the planner respects);
  - `n_checkin` patients with one DX-KUB order each, every other one an inpatient (billed to the
    stay: may check in unpaid) and the others outpatients (paid at the desk before check-in).

Booked and cancelled orders go back to `ordered` and are booked again: the single and bundle pools
churn for ever. A check-in order ends `done`: that pool is consumed, one order per check-in, and is
sized by the driver for the run's length.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

HOSPITAL_ID = "h1"
TIMEZONE = "Asia/Shanghai"
WINDOW_MIN = 30
POOL_FIRST = time(8, 0)
POOL_WINDOWS = 20  # 08:00-18:00
SINGLE_EXAM = "CT-HEAD"
BUNDLE_EXAMS = ("CT-CHEST", "US-THYROID", "ECG-REST")
CHECKIN_EXAM = "DX-KUB"


@dataclass
class MixedData:
    tag: str
    today: date  # hospital time, when prepared
    pool_days: list[date]
    ct_resources: list[str]
    bundle_resources: list[str]
    rooms: list[str]
    pool_slots: list[tuple[int, str, str]]  # (slot_id, resource_id, day) of the MIX-CT slots
    room_slots: dict[str, list[tuple[int, int, int, str]]]  # room -> (slot_id, starts epoch s, ends, day)
    singles: list[tuple[int, int]] = field(repr=False)  # (patient_id, order_id)
    bundles: list[tuple[int, list[int]]] = field(repr=False)  # (patient_id, [order_id, ...])
    checkins: list[tuple[int, int, str]] = field(repr=False)  # (patient_id, order_id, patient_class)

    @property
    def all_resources(self) -> list[str]:
        return [*self.ct_resources, *self.bundle_resources, *self.rooms]

    def as_json(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "today": self.today.isoformat(),
            "pool_days": [d.isoformat() for d in self.pool_days],
            "ct_resources": self.ct_resources,
            "bundle_resources": self.bundle_resources,
            "rooms": self.rooms,
            "pool_slots": self.pool_slots,
            "room_slots": self.room_slots,
            "singles": self.singles,
            "bundles": self.bundles,
            "checkins": self.checkins,
            "single_exam": SINGLE_EXAM,
            "bundle_exams": list(BUNDLE_EXAMS),
            "checkin_exam": CHECKIN_EXAM,
        }

    def write_json(self, path: Path) -> Path:
        """The file the Locust users read (env HY_MIXED_FILE)."""
        path.write_text(json.dumps(self.as_json()))
        return path


async def _resource(
    conn: asyncpg.Connection, rid: str, dept: str, kind: str, modality: str, name: str, exams: list[str]
) -> None:
    await conn.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name, location)
           VALUES ($1, $2, $3, 'main', $4, $5, $6, $7)""",
        rid,
        HOSPITAL_ID,
        dept,
        kind,
        modality,
        name,
        f"压测 {rid}",
    )
    await conn.executemany(
        "INSERT INTO exam_capability (exam_code, resource_id) VALUES ($1, $2)", [(e, rid) for e in exams]
    )


async def _slots(
    conn: asyncpg.Connection, resource_id: str, starts: list[datetime], capacity: int, tz: ZoneInfo
) -> list[tuple[int, int, int, str]]:
    """One 30-minute slot per start (aware datetimes), `day` being the start's date in hospital time."""
    rows = await conn.fetch(
        """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity, quotas)
           SELECT $1, $2, d, s, s + make_interval(mins => $5), $4, '{}'::jsonb
             FROM unnest($3::timestamptz[], $6::date[]) AS u (s, d)
           RETURNING id, starts_at, ends_at, day""",
        HOSPITAL_ID,
        resource_id,
        starts,
        capacity,
        WINDOW_MIN,
        [s.astimezone(tz).date() for s in starts],
    )
    return sorted(
        (int(r["id"]), int(r["starts_at"].timestamp()), int(r["ends_at"].timestamp()), r["day"].isoformat())
        for r in rows
    )


async def _patients(
    conn: asyncpg.Connection, tag: str, kind: str, n: int, exams: list[str], classes: list[str]
) -> list[tuple[int, list[int], str]]:
    """`n` new patients, each with one pending order per exam; patient g gets classes[g % len]."""
    if n <= 0:
        return []
    rows = await conn.fetch(
        """WITH p AS (
               INSERT INTO patient (hospital_id, mrn, name, gender, birth_date)
               SELECT $1, 'MIX-' || $2 || '-' || $3 || '-' || g, '混合压测' || g,
                      CASE WHEN g % 2 = 0 THEN 'F' ELSE 'M' END,
                      DATE '1950-01-01' + (g % 20000)
                 FROM generate_series(1, $4) AS g
               RETURNING id, (regexp_match(mrn, '(\\d+)$'))[1]::int AS g
           )
           INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           SELECT 'MIX-' || $2 || '-' || p.id || '-' || e.n, $1, p.id, e.code, 'GI', '压测医生',
                  ($6::text[])[1 + p.g % cardinality($6::text[])]
             FROM p CROSS JOIN unnest($5::text[]) WITH ORDINALITY AS e (code, n)
           RETURNING patient_id, id, patient_class""",
        HOSPITAL_ID,
        tag,
        kind,
        n,
        exams,
        classes,
    )
    by_patient: dict[int, tuple[list[int], str]] = {}
    for r in rows:
        orders, _ = by_patient.setdefault(int(r["patient_id"]), ([], str(r["patient_class"])))
        orders.append(int(r["id"]))
    return [(pid, sorted(orders), klass) for pid, (orders, klass) in sorted(by_patient.items())]


def hospital_now(tz: ZoneInfo) -> datetime:
    return datetime.now(UTC).astimezone(tz)


async def prepare_mixed(
    conn: asyncpg.Connection,
    *,
    pool_days: list[date],
    checkin_until: datetime,
    n_single: int,
    n_bundle: int,
    n_checkin: int,
    n_ct: int = 2,
    n_rooms: int = 3,
    pool_capacity: int = 10_000,
    checkin_capacity: int = 100_000,
    tag: str | None = None,
) -> MixedData:
    """Resources, slots, patients and orders of the mixed day, in one transaction (see the module
    docstring). `checkin_until` (aware) is the last moment a check-in room slot must cover."""
    tz = ZoneInfo(TIMEZONE)
    tag = tag or uuid.uuid4().hex[:6].upper()
    now = hospital_now(tz)
    today = now.date()
    ct = [f"MIX-CT-{tag}-{i}" for i in range(1, n_ct + 1)]
    us, ecg = f"MIX-US-{tag}", f"MIX-ECG-{tag}"
    rooms = [f"MIX-Q{tag}-{i}" for i in range(1, n_rooms + 1)]
    # From the half hour before now (a window in progress) to an hour after the end of the run.
    first = now.replace(minute=0 if now.minute < WINDOW_MIN else WINDOW_MIN, second=0, microsecond=0)
    first -= timedelta(minutes=WINDOW_MIN)
    room_starts = []
    at = first
    while at <= checkin_until + timedelta(hours=1):
        room_starts.append(at)
        at += timedelta(minutes=WINDOW_MIN)
    pool_starts = [
        datetime.combine(day, POOL_FIRST, tz) + timedelta(minutes=WINDOW_MIN * n)
        for day in pool_days
        for n in range(POOL_WINDOWS)
    ]
    async with conn.transaction():
        for n, rid in enumerate(ct, 1):
            await _resource(conn, rid, "RAD", "device", "CT", f"压测CT{n} ({tag})", [SINGLE_EXAM, "CT-CHEST"])
        await _resource(conn, us, "US", "room", "US", f"压测超声室 ({tag})", ["US-THYROID"])
        await _resource(conn, ecg, "ECG", "room", "ECG", f"压测心电室 ({tag})", ["ECG-REST"])
        for n, rid in enumerate(rooms, 1):
            await _resource(conn, rid, "RAD", "device", "DX", f"压测DR{n} ({tag})", [CHECKIN_EXAM])
        pool_slots: list[tuple[int, str, str]] = []
        for rid in ct:
            pool_slots += [(s[0], rid, s[3]) for s in await _slots(conn, rid, pool_starts, pool_capacity, tz)]
        for rid in (us, ecg):
            await _slots(conn, rid, pool_starts, pool_capacity, tz)
        room_slots = {rid: await _slots(conn, rid, room_starts, checkin_capacity, tz) for rid in rooms}
        singles = await _patients(conn, tag, "S", n_single, [SINGLE_EXAM], ["outpatient"])
        bundles = await _patients(conn, tag, "B", n_bundle, list(BUNDLE_EXAMS), ["outpatient"])
        checkins = await _patients(conn, tag, "C", n_checkin, [CHECKIN_EXAM], ["inpatient", "outpatient"])
    return MixedData(
        tag=tag,
        today=today,
        pool_days=pool_days,
        ct_resources=ct,
        bundle_resources=[us, ecg],
        rooms=rooms,
        pool_slots=pool_slots,
        room_slots=room_slots,
        singles=[(p, o[0]) for p, o, _ in singles],
        bundles=[(p, o) for p, o, _ in bundles],
        checkins=[(p, o[0], k) for p, o, k in checkins],
    )


async def check_all_slots(conn: asyncpg.Connection) -> dict[str, Any]:
    """The booking invariant over every slot of the database (the demo hospital's too): booked <=
    capacity and booked == its live appointments; plus no order with two live appointments."""
    rows = await conn.fetch(
        """SELECT s.id, s.capacity, s.booked, coalesce(a.live, 0) AS live
             FROM slot s
             LEFT JOIN (SELECT slot_id, count(*) AS live FROM appointment WHERE status = 'booked'
                         GROUP BY slot_id) a ON a.slot_id = s.id"""
    )
    bad = [
        {"slot_id": r["id"], "capacity": r["capacity"], "booked": r["booked"], "appointments": r["live"]}
        for r in rows
        if r["booked"] > r["capacity"] or r["booked"] != r["live"]
    ]
    double = await conn.fetchval(
        "SELECT count(*) FROM (SELECT order_id FROM appointment WHERE status = 'booked' "
        "GROUP BY order_id HAVING count(*) > 1) x"
    )
    return {
        "ok": not bad and not double,
        "slots": len(rows),
        "booked": sum(r["booked"] for r in rows),
        "appointments": sum(r["live"] for r in rows),
        "capacity": sum(r["capacity"] for r in rows),
        "orders_with_two_live_appointments": int(double or 0),
        "violations": bad[:10],
    }


async def slots_by_day(conn: asyncpg.Connection, first: date, last: date) -> dict[date, list[tuple[int, int]]]:
    """(slot_id, booked) of every slot per day in [first, last], for the Redis comparison."""
    rows = await conn.fetch(
        "SELECT id, day, booked FROM slot WHERE hospital_id = $1 AND day BETWEEN $2 AND $3 ORDER BY id",
        HOSPITAL_ID,
        first,
        last,
    )
    out: dict[date, list[tuple[int, int]]] = {}
    for r in rows:
        out.setdefault(r["day"], []).append((int(r["id"]), int(r["booked"])))
    return out


async def loop_counts(conn: asyncpg.Connection, tag: str) -> dict[str, int]:
    """Where the run's orders ended up in the closed loop (status -> count)."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM exam_order WHERE order_no LIKE $1 GROUP BY status", f"MIX-{tag}-%"
    )
    return {r["status"]: int(r["n"]) for r in rows}
