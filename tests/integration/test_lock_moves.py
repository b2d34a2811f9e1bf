"""Locking a window that holds bookings moves them to the nearest slot the rules allow and tells
the patients — also while other clerks keep booking the same device: nothing stays in the locked
window, no slot is oversold, PostgreSQL and Redis agree."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import date, timedelta

import httpx

from app.booking.availability import places_for
from app.booking.service import BookItem
from app.errors import AppError
from app.main import create_app
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    future_day,
    new_patients_with_orders,
    open_slots,
    token_for,
)


async def _desk_places(services: Services, day: date, slot_id: int) -> int:
    view = await services.store.read_slot(day, slot_id)
    assert view is not None
    return places_for(view, "desk", time.time())[0]


async def _lock(services: Services, body: dict[str, object]) -> httpx.Response:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
        return await c.post("/api/v1/admin/locks", json=body, headers=admin)


async def test_a_lock_moves_its_bookings_and_tells_the_patients(services: Services) -> None:
    day = future_day(services)
    clerk = await actor_for(services, "clerk")
    slot = (await open_slots(services, "ECG-REST", day, limit=1))[0]
    people = await new_patients_with_orders(services.pool, await _desk_places(services, day, slot["id"]), ["ECG-REST"])
    for pid, (order,) in people:
        await services.booking.book(clerk, pid, "desk", [BookItem(order, slot["id"])])
    r = await _lock(
        services,
        {
            "resource_id": slot["resource_id"],
            "starts_at": slot["starts_at"].isoformat(),
            "ends_at": slot["ends_at"].isoformat(),
            "kind": "maintenance",
            "reason": "设备检修",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["live_bookings"] == len(people) and len(body["moves"]) == len(people)
    assert all(m["moved"] for m in body["moves"]), body["moves"]
    live = await services.pool.fetch(
        "SELECT slot_id, starts_at FROM appointment WHERE patient_id = ANY($1::bigint[]) AND status = 'booked'",
        [pid for pid, _ in people],
    )
    assert len(live) == len(people) and all(r["slot_id"] != slot["id"] for r in live)
    assert all(abs(r["starts_at"] - slot["starts_at"]) < timedelta(days=3) for r in live)  # nearby
    notices = await services.pool.fetch("SELECT aggregate_id, payload FROM outbox WHERE topic = 'patient.notice'")
    assert sorted(int(n["aggregate_id"]) for n in notices) == sorted(pid for pid, _ in people)
    assert all("设备检修" in n["payload"]["message"] for n in notices)
    await assert_redis_matches_postgres(services, day)


async def test_a_lock_amid_concurrent_bookings_leaves_nothing_in_the_window(services: Services) -> None:
    day = future_day(services)
    clerk = await actor_for(services, "clerk")
    slots = [s for s in await open_slots(services, "ECG-REST", day) if s["resource_id"] == "ECG1"][:4]
    assert len(slots) == 4
    first, locked = slots[0], slots[1:3]
    people = await new_patients_with_orders(services.pool, 24, ["ECG-REST"])
    # Some bookings already in the window to be locked.
    targets = [s["id"] for s in locked for _ in range(min(2, await _desk_places(services, day, s["id"])))]
    assert len(targets) >= 2
    for (pid, (order,)), slot_id in zip(people, targets, strict=False):
        await services.booking.book(clerk, pid, "desk", [BookItem(order, slot_id)])

    async def keep_booking(pid: int, order: int, slot_id: int) -> None:
        with contextlib.suppress(AppError):  # full, or locked meanwhile: refused with a reason
            await services.booking.book(clerk, pid, "desk", [BookItem(order, slot_id)])

    racers = [keep_booking(pid, order, slots[n % 4]["id"]) for n, (pid, (order,)) in enumerate(people[len(targets) :])]
    lock_body = {
        "resource_id": "ECG1",
        "starts_at": locked[0]["starts_at"].isoformat(),
        "ends_at": locked[-1]["ends_at"].isoformat(),
        "kind": "maintenance",
        "reason": "设备检修",
    }
    results = await asyncio.gather(_lock(services, lock_body), *racers)
    r = results[0]
    assert r.status_code == 201, r.text
    moves = r.json()["moves"]
    assert len(moves) >= len(targets) and all(m["moved"] for m in moves), moves
    inside = await services.pool.fetchval(
        "SELECT count(*) FROM appointment WHERE slot_id = ANY($1::bigint[]) AND status = 'booked'",
        [s["id"] for s in locked],
    )
    assert inside == 0
    over = await services.pool.fetchval("SELECT count(*) FROM slot WHERE booked > capacity")
    assert over == 0
    assert first["id"] not in [s["id"] for s in locked]
    await assert_redis_matches_postgres(services, day)
