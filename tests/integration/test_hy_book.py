"""The booking transaction's own guards (hy_book, sql/0017), called directly as the service does
after a Redis grab: PostgreSQL refuses what Redis should never have let through, and a refusal
writes nothing. Also the order the guards run in: the slot rows are locked last, and a department
lock committed while the booking waited for a slot row is still seen."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.db import booking_repo
from app.errors import OrderNotBookable, SlotLocked, SlotUnavailable, ValidationFailed
from app.security.actor import Actor
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots


def _deadline() -> datetime:
    return datetime.fromtimestamp(time.time() + 50, UTC)


async def _book(services: Services, actor: Actor, pid: int, items: list[dict[str, Any]]) -> list[asyncpg.Record]:
    return await booking_repo.book(
        services.pool,
        hold_id=uuid.uuid4().hex,
        patient_id=pid,
        channel="desk",
        items=items,
        deadline=_deadline(),
        actor=actor,
        reason="",
    )


async def _footprint(services: Services, pid: int, order_ids: list[int], slot_ids: list[int]) -> tuple[Any, ...]:
    """Everything a booking would change, for 'a refusal writes nothing'."""
    return (
        await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", pid),
        tuple(
            await services.pool.fetch(
                "SELECT status, accession_no FROM exam_order WHERE id = ANY($1::bigint[]) ORDER BY id", order_ids
            )
        ),
        await services.pool.fetchval("SELECT count(*) FROM order_event WHERE order_id = ANY($1::bigint[])", order_ids),
        await services.pool.fetchval("SELECT max(id) FROM outbox"),
        tuple(
            await services.pool.fetch("SELECT id, booked FROM slot WHERE id = ANY($1::bigint[]) ORDER BY id", slot_ids)
        ),
        await services.pool.fetchval("SELECT booking_version FROM patient WHERE id = $1", pid),
    )


async def test_a_booking_writes_its_rows_and_identifiers(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    outbox_before = await services.pool.fetchval("SELECT COALESCE(max(id), 0) FROM outbox")
    [row] = await _book(services, clerk, pid, [{"order_id": oid, "slot_id": slot["id"], "pool": "open"}])
    assert (row["order_id"], row["slot_id"], row["resource_id"]) == (oid, slot["id"], slot["resource_id"])
    order = await services.pool.fetchrow("SELECT status, accession_no, study_uid FROM exam_order WHERE id = $1", oid)
    assert order["status"] == "booked"
    assert order["accession_no"] == f"HY{oid:010d}"
    # A DICOM UID under 2.25: the decimal form of a 128-bit UUID, at most 64 characters.
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", order["study_uid"]) and len(order["study_uid"]) <= 64
    assert int(order["study_uid"][5:]) < 2**128
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", slot["id"]) == slot["booked"] + 1
    topics = await services.pool.fetch(
        "SELECT topic FROM outbox WHERE id > $1 AND payload ->> 'order_id' = $2 ORDER BY id", outbox_before, str(oid)
    )
    assert [t["topic"] for t in topics] == ["order.status", "appointment.booked"]
    event = await services.pool.fetchrow(
        "SELECT event, from_status, to_status FROM order_event WHERE order_id = $1", oid
    )
    assert tuple(event) == ("booked", "ordered", "booked")


async def test_a_full_slot_in_a_bundle_refuses_the_whole_bundle(services: Services) -> None:
    """Redis said yes, PostgreSQL's count says full: nothing of the bundle is written."""
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(pid, [o1, o2])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "CT-CHEST"])
    s1 = (await open_slots(services, "CT-HEAD", day))[0]
    s2 = next(s for s in await open_slots(services, "CT-CHEST", day) if s["id"] != s1["id"])
    await services.pool.execute("UPDATE slot SET booked = capacity WHERE id = $1", s2["id"])
    items = [
        {"order_id": o1, "slot_id": s1["id"], "pool": "open"},
        {"order_id": o2, "slot_id": s2["id"], "pool": "open"},
    ]
    before = await _footprint(services, pid, [o1, o2], [s1["id"], s2["id"]])
    with pytest.raises(SlotUnavailable):
        await _book(services, clerk, pid, items)
    assert await _footprint(services, pid, [o1, o2], [s1["id"], s2["id"]]) == before


async def test_refusals_of_order_and_capability_write_nothing(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(pid, [ct, dx])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "DX-CHEST"])
    ct_slot = (await open_slots(services, "CT-HEAD", day))[0]
    before = await _footprint(services, pid, [ct, dx], [ct_slot["id"]])
    with pytest.raises(ValidationFailed):  # EXAM_NOT_ON_RESOURCE: a chest X-ray on a CT
        await _book(services, clerk, pid, [{"order_id": dx, "slot_id": ct_slot["id"], "pool": "open"}])
    [(other, _)] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    with pytest.raises(OrderNotBookable):  # somebody else's order
        await _book(services, clerk, other, [{"order_id": ct, "slot_id": ct_slot["id"], "pool": "open"}])
    assert await _footprint(services, pid, [ct, dx], [ct_slot["id"]]) == before


async def test_a_lock_committed_while_the_booking_waits_for_the_slot_row_is_seen(services: Services) -> None:
    """A department lock is written while another transaction holds the slot's row (as a lock
    move does); the booking queues on that row at its final UPDATE, and once the lock commits it
    must refuse (SLOT_LOCKED), not book into the locked window."""
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    before = await _footprint(services, pid, [oid], [slot["id"]])
    async with services.pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("SELECT 1 FROM slot WHERE id = $1 FOR UPDATE", slot["id"])
        booking = asyncio.create_task(
            _book(services, clerk, pid, [{"order_id": oid, "slot_id": slot["id"], "pool": "open"}])
        )
        # The booking has done everything up to the slot row and waits there.
        for _ in range(200):
            waiting = await services.pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%hy_book%'"""
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting == 1, "the booking never queued on the slot row"
        await locker.execute(
            """INSERT INTO slot_lock (hospital_id, resource_id, starts_at, ends_at, kind, reason)
               VALUES ('h1', $1, $2, $3, 'maintenance', '设备检修')""",
            slot["resource_id"],
            slot["starts_at"],
            slot["ends_at"],
        )
        await tx.commit()
    with pytest.raises(SlotLocked):
        await booking
    assert await _footprint(services, pid, [oid], [slot["id"]]) == before
