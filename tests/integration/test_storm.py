"""Real concurrency: thousands of booking attempts on 50 places, through the service and through HTTP.

Invariant: exactly 50 succeed, every other attempt gets a clear "full" answer, no slot is over
capacity, and PostgreSQL and Redis agree afterwards.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import uvicorn

from app.booking.service import BookItem
from app.errors import SlotUnavailable
from app.main import create_app
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    booking_service_on,
    future_day,
    new_patients_with_orders,
    token_for,
)

ATTEMPTS = 2000
SLOTS = 10
CAPACITY = 5  # 10 x 5 = 50 places in all


async def storm_slots(services: Services, day: date) -> list[int]:
    """A dedicated CT resource with 10 windows of 5 places (no channel quotas) on `day`."""
    await services.pool.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name)
           VALUES ('STORM-CT', 'h1', 'RAD', 'main', 'device', 'CT', '压力测试CT') ON CONFLICT DO NOTHING"""
    )
    await services.pool.execute("INSERT INTO exam_capability VALUES ('CT-HEAD', 'STORM-CT') ON CONFLICT DO NOTHING")
    start = datetime.combine(day, datetime.min.time(), services.reconciler.tz) + timedelta(hours=8)
    ids = []
    for n in range(SLOTS):
        ids.append(
            await services.pool.fetchval(
                """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity)
                   VALUES ('h1', 'STORM-CT', $1, $2, $3, $4) RETURNING id""",
                day,
                start + timedelta(minutes=30 * n),
                start + timedelta(minutes=30 * (n + 1)),
                CAPACITY,
            )
        )
    await services.reload_catalogue()
    await services.reconciler.reconcile_day(day)
    return ids


async def assert_storm_outcome(services: Services, day: date, slot_ids: list[int], succeeded: int) -> None:
    assert succeeded == SLOTS * CAPACITY
    rows = await services.pool.fetch("SELECT id, booked, capacity FROM slot WHERE id = ANY($1::bigint[])", slot_ids)
    assert all(r["booked"] == r["capacity"] == CAPACITY for r in rows)
    live = await services.pool.fetchval(
        "SELECT count(*) FROM appointment WHERE slot_id = ANY($1::bigint[]) AND status = 'booked'", slot_ids
    )
    assert live == SLOTS * CAPACITY
    await assert_redis_matches_postgres(services, day)


async def test_storm_through_the_service(services: Services) -> None:
    day = future_day(services, 2)
    slot_ids = await storm_slots(services, day)
    clerk = await actor_for(services, "clerk")
    patients = await new_patients_with_orders(services.pool, ATTEMPTS, ["CT-HEAD"])

    async def attempt(n: int, pid: int, oid: int) -> str:
        try:
            await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot_ids[n % SLOTS])])
        except SlotUnavailable as exc:
            return str(exc.extra["reason"])
        return "ok"

    outcomes = await asyncio.gather(*(attempt(n, pid, oid) for n, (pid, [oid]) in enumerate(patients)))
    assert set(outcomes) <= {"ok", "FULL"}
    await assert_storm_outcome(services, day, slot_ids, outcomes.count("ok"))


async def raw_post(port: int, path: str, token: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 POST on a fresh connection (no client pool to queue behind)."""
    body = orjson.dumps(payload)
    for attempt in range(50):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:  # listen backlog momentarily full: try again shortly
            await asyncio.sleep(0.05 * (attempt + 1))
    else:
        raise AssertionError("could not connect")
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, content = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(content)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_storm_through_http(services: Services) -> None:
    day = future_day(services, 3)
    slot_ids = await storm_slots(services, day)
    token = await token_for(services, "clerk")
    patients = await new_patients_with_orders(services.pool, ATTEMPTS, ["CT-HEAD"])
    # A storm from one clerk account on one address is the point here: the abuse limits
    # (tests/integration/test_rate_limits.py) stand aside, as HY_RATE_LIMITS=0 does for load tests.
    services.limits.enabled = False
    app = create_app(services.settings, "", "", background=False, services=services)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    try:
        # Every attempt on its own connection, all opened at once: 2,000 requests truly in flight.
        results = await asyncio.gather(
            *(
                raw_post(
                    port,
                    "/api/v1/appointments",
                    token,
                    {
                        "patient_id": pid,
                        "channel": "desk",
                        "items": [{"order_id": oid, "slot_id": slot_ids[n % SLOTS]}],
                    },
                )
                for n, (pid, [oid]) in enumerate(patients)
            )
        )
    finally:
        server.should_exit = True
        await serving
    statuses = {status for status, _ in results}
    assert statuses <= {201, 409}, statuses
    assert {body["reason"] for status, body in results if status == 409} == {"FULL"}
    assert all(body["code"] == "slot_unavailable" and body["title"] for status, body in results if status == 409)
    await assert_storm_outcome(services, day, slot_ids, sum(1 for status, _ in results if status == 201))


async def test_refusals_of_a_full_slot_are_answered_by_redis_alone(services: Services) -> None:
    """Once a slot is full, further attempts are refused from the Redis index: they are answered
    even with PostgreSQL unreachable (its pool closed), so a release storm does not load it."""
    day = future_day(services, 4)
    slot_ids = await storm_slots(services, day)
    clerk = await actor_for(services, "clerk")
    patients = await new_patients_with_orders(services.pool, SLOTS * CAPACITY + 20, ["CT-HEAD"])
    for n, (pid, [oid]) in enumerate(patients[: SLOTS * CAPACITY]):
        await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot_ids[n % SLOTS])])
    dead_pool = await asyncpg.create_pool(services.settings.database.url, min_size=0, max_size=1)
    await dead_pool.close()
    gate_only = booking_service_on(services, dead_pool, services.store)
    gate_only._slot_day.update(services.booking._slot_day)  # slots seen before: their day is known
    reasons = []
    for n, (pid, [oid]) in enumerate(patients[SLOTS * CAPACITY :]):
        try:
            await gate_only.book(clerk, pid, "desk", [BookItem(oid, slot_ids[n % SLOTS])])
        except SlotUnavailable as exc:
            reasons.append(exc.extra["reason"])
    assert reasons == ["FULL"] * 20
    await assert_storm_outcome(services, day, slot_ids, SLOTS * CAPACITY)
