"""Shared test helpers: demo actors, bulk patients and orders, and the PostgreSQL = Redis check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from app.booking.index import DayIndex
from app.booking.service import BookingService
from app.booking.slot_store import SlotStore
from app.db import booking_repo
from app.demo.data import DEMO_PASSWORD
from app.security.actor import Actor
from app.services import Services


async def actor_for(services: Services, username: str) -> Actor:
    return (await services.sessions.login(username, DEMO_PASSWORD, terminal="pytest")).actor


async def token_for(services: Services, username: str) -> str:
    return (await services.sessions.login(username, DEMO_PASSWORD, terminal="pytest")).token


def future_day(services: Services, nth: int = 3) -> date:
    """The nth working day (Monday to Friday) after today: every demo resource opens then."""
    day = services.reconciler.today()
    while nth > 0:
        day += timedelta(days=1)
        if day.isoweekday() <= 5:
            nth -= 1
    return day


async def open_slots(services: Services, exam_code: str, day: date, limit: int = 50) -> list[asyncpg.Record]:
    """Open slots on `day` whose resource can do `exam_code`, earliest first."""
    return await services.pool.fetch(
        """SELECT s.* FROM slot s JOIN exam_capability c ON c.resource_id = s.resource_id
            WHERE c.exam_code = $1 AND s.day = $2 AND s.status = 'open' AND s.booked < s.capacity
            ORDER BY s.starts_at, s.resource_id LIMIT $3""",
        exam_code,
        day,
        limit,
    )


async def new_patients_with_orders(
    conn: asyncpg.Connection | asyncpg.Pool, count: int, exam_codes: list[str], patient_class: str = "outpatient"
) -> list[tuple[int, list[int]]]:
    """`count` new patients, each with one order per exam code: [(patient_id, [order_id, ...])]."""
    tag = uuid.uuid4().hex[:8]
    patients = await conn.fetch(
        """INSERT INTO patient (hospital_id, mrn, name, gender, birth_date)
           SELECT 'h1', 'T' || $1 || '-' || g, '测试患者' || g, 'U', DATE '1980-01-01'
             FROM generate_series(1, $2) AS g RETURNING id""",
        tag,
        count,
    )
    ids = [r["id"] for r in patients]
    out = []
    rows = await conn.fetch(
        """INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           SELECT 'T' || $1 || '-' || p || '-' || e, 'h1', p, e, 'GI', '测试医生', $4
             FROM unnest($2::bigint[]) AS p, unnest($3::text[]) WITH ORDINALITY AS x(e, n)
            ORDER BY p, n
           RETURNING id, patient_id""",
        tag,
        ids,
        exam_codes,
        patient_class,
    )
    by_patient: dict[int, list[int]] = {pid: [] for pid in ids}
    for r in rows:
        by_patient[r["patient_id"]].append(r["id"])
    out = [(pid, by_patient[pid]) for pid in ids]
    return out


def _normalise(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if not (k.startswith("lk:") and v == "0")}


async def redis_slot_fields(services: Services, day: date, slot_ids: list[int]) -> dict[int, dict[str, str]]:
    k = services.keys.day(day)
    async with services.redis.pipeline(transaction=False) as pipe:
        for sid in slot_ids:
            pipe.hgetall(k.slot(sid))
        rows = await pipe.execute()
    return {
        sid: _normalise({a.decode(): b.decode() for a, b in row.items()})
        for sid, row in zip(slot_ids, rows, strict=True)
    }


async def redis_disagreements(
    services: Services, day: date
) -> tuple[DayIndex, dict[int, tuple[dict[str, str], dict[str, str]]]]:
    """The day as PostgreSQL has it, and the slots whose Redis counters differ from it:
    {slot id: (PostgreSQL's fields, Redis's fields)}."""
    index = await booking_repo.day_index(services.pool, services.settings.booking.hospital_id, day)
    expected = {sid: _normalise(f) for sid, f in index.slot_fields().items()}
    actual = await redis_slot_fields(services, day, list(expected))
    return index, {sid: (expected[sid], actual[sid]) for sid in expected if expected[sid] != actual[sid]}


async def assert_redis_matches_postgres(services: Services, day: date) -> DayIndex:
    """Every slot of the day has the same counters in Redis as PostgreSQL implies, every live
    booking is a booked entry of its patient, and no hold is left."""
    index, mismatched = await redis_disagreements(services, day)
    assert not mismatched, f"Redis and PostgreSQL disagree on {len(mismatched)} slots: {list(mismatched.items())[:3]}"
    for slot in index.slots:
        used = sum(1 for b in index.booked if b.slot_id == slot.slot_id)
        assert used == slot.booked <= slot.capacity, (slot, used)
    for b in index.booked:
        entries = await services.store.patient_entries(day, b.patient_id)
        assert b.slot_id in entries and "|b|" in entries[b.slot_id], (b, entries)
    assert await services.store.live_hold_ids(day) == []
    return index


async def availability_snapshot(services: Services, day: date) -> dict[int, dict[str, Any]]:
    """Every slot of the day as Redis shows it (for before/after comparisons)."""
    views = await services.store.read_slots(day, sorted(services.catalogue.resources))
    return {
        v.slot_id: {
            "booked": v.booked,
            "open": v.open_left,
            "quota": v.quota_left,
            "locks": v.locked_channels,
            "status": v.status,
            "capacity": v.capacity,
        }
        for v in views
    }


async def fill_slot(services: Services, slot: asyncpg.Record, exam_code: str) -> int:
    """Book new patients into `slot` until it is full, through every channel's quota; returns how many."""
    from app.booking.service import BookItem
    from app.errors import SlotUnavailable

    admin = await actor_for(services, "admin")
    taken = 0
    channels = [*sorted(slot["quotas"]), "desk"]
    patients = await new_patients_with_orders(services.pool, slot["capacity"], [exam_code])
    for pid, [oid] in patients:
        for channel in channels:
            try:
                await services.booking.book(admin, pid, channel, [BookItem(oid, slot["id"])])
            except SlotUnavailable as exc:
                if exc.extra["reason"] == "QUOTA":
                    continue
                raise
            taken += 1
            break
    return taken


async def lock_every_room_of(services: Services, exam_code: str, day: date) -> None:
    """Close every room that can do `exam_code` for the whole of `day`, for all channels."""
    from datetime import datetime, time

    admin = await actor_for(services, "admin")
    tz = services.reconciler.tz
    for rid in services.catalogue.resources_for(exam_code=exam_code):
        await services.pool_admin.lock(
            admin,
            rid,
            datetime.combine(day, time(0, 0), tz),
            datetime.combine(day + timedelta(days=1), time(0, 0), tz),
            None,
            "maintenance",
            "设备检修",
        )


async def set_phone(conn: asyncpg.Connection | asyncpg.Pool, patient_id: int, phone: str) -> None:
    """Give a patient a phone number the way the platform stores it: encrypted, with its blind index."""
    from app.security.crypto import pii_keys

    sealed, index = pii_keys().seal_phone(phone)
    await conn.execute(
        "UPDATE patient SET phone = NULL, phone_enc = $2, phone_idx = $3 WHERE id = $1", patient_id, sealed, index
    )


# -- storms through HTTP (tests/integration/test_resilience.py, test_redis_sentinel.py) ------------

CJK = range(0x4E00, 0xA000)


async def dedicated_slots(services: Services, day: date, resource_id: str, count: int, capacity: int) -> list[int]:
    """A dedicated CT room with `count` half-hour windows of `capacity` places (no channel quotas),
    in PostgreSQL and in the Redis index."""
    await services.pool.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name)
           VALUES ($1, 'h1', 'RAD', 'main', 'device', 'CT', '容灾测试CT') ON CONFLICT DO NOTHING""",
        resource_id,
    )
    await services.pool.execute(
        "INSERT INTO exam_capability VALUES ('CT-HEAD', $1) ON CONFLICT DO NOTHING", resource_id
    )
    start = datetime.combine(day, datetime.min.time(), services.reconciler.tz) + timedelta(hours=8)
    ids = [
        await services.pool.fetchval(
            """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity)
               VALUES ('h1', $1, $2, $3, $4, $5) RETURNING id""",
            resource_id,
            day,
            start + timedelta(minutes=30 * n),
            start + timedelta(minutes=30 * (n + 1)),
            capacity,
        )
        for n in range(count)
    ]
    await services.reload_catalogue()
    await services.reconciler.reconcile_day(day)
    return ids


def booking_body(pid: int, oid: int, slot_id: int) -> dict[str, Any]:
    """POST /api/v1/appointments: one order of the patient into one slot, at the desk."""
    return {"patient_id": pid, "channel": "desk", "items": [{"order_id": oid, "slot_id": slot_id}]}


async def postgres_outcome(services: Services, slot_ids: list[int]) -> tuple[dict[int, int], set[int]]:
    """Booked count per slot (checked against its live appointments and capacity) and the live
    appointment ids."""
    slots = await services.pool.fetch("SELECT id, booked, capacity FROM slot WHERE id = ANY($1::bigint[])", slot_ids)
    appts = await services.pool.fetch(
        """SELECT a.id, a.slot_id, o.status FROM appointment a JOIN exam_order o ON o.id = a.order_id
            WHERE a.slot_id = ANY($1::bigint[]) AND a.status = 'booked'""",
        slot_ids,
    )
    per_slot = {r["id"]: 0 for r in slots}
    for a in appts:
        per_slot[a["slot_id"]] += 1
        assert a["status"] == "booked", a
    for r in slots:
        assert r["booked"] == per_slot[r["id"]] <= r["capacity"], (dict(r), per_slot[r["id"]])
    return {r["id"]: r["booked"] for r in slots}, {a["id"] for a in appts}


async def book_every_place_left(
    client: httpx.AsyncClient,
    services: Services,
    day: date,
    slot_ids: list[int],
    booked: dict[int, int],
    fresh: Iterator[tuple[int, list[int]]],
    capacity: int,
) -> None:
    """Through the API, book each slot's places left (capacity - booked[slot]) with fresh patients,
    then one more, which must be refused FULL; afterwards every slot is full in PostgreSQL and Redis
    agrees: bookings work again to the last place, and not one beyond."""
    for sid in slot_ids:
        tries = []
        for _ in range(capacity - booked[sid] + 1):
            p, [o] = next(fresh)
            tries.append(await client.post("/api/v1/appointments", json=booking_body(p, o, sid)))
        assert [r.status_code for r in tries] == [201] * (capacity - booked[sid]) + [409]
        assert tries[-1].json()["reason"] == "FULL"
    per_slot, _ = await postgres_outcome(services, slot_ids)
    assert set(per_slot.values()) == {capacity}
    await assert_redis_matches_postgres(services, day)


def assert_clear_503(response: httpx.Response) -> None:
    """Redis unavailable, as a clerk sees it: problem+json `cache_unavailable`, a Chinese title,
    Retry-After."""
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers.get("retry-after") == "5"
    assert body["code"] == "cache_unavailable" and body["status"] == 503
    assert any(ord(ch) in CJK for ch in body["title"]), body  # a Chinese message for the clerk


def booking_service_on(services: Services, pool: asyncpg.Pool, store: SlotStore) -> BookingService:
    """A booking service like the platform's, on the given pool and slot store (fault tests)."""
    return BookingService(
        pool,
        store,
        services.reconciler,
        services.publisher,
        hospital_id="h1",
        hold_ttl_s=60,
        commit_margin_s=10,
        rules=services.rules,
    )
