"""Group commit (app/db/group_commit.py, sql/0018): bookings that arrive together are committed by
one call, and each is still its own all-or-nothing unit with its own answer, the same a lone call
would have had."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from app.booking.service import BookItem
from app.db import booking_repo
from app.db.group_commit import GroupCommit
from app.errors import OrderNotBookable, PatientChanged, SlotUnavailable
from app.security.actor import Actor
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    dedicated_slots,
    future_day,
    new_patients_with_orders,
)


def _deadline() -> datetime:
    return datetime.fromtimestamp(time.time() + 50, UTC)


def _item(order_id: Any, slot_id: int) -> dict[str, Any]:
    return {"order_id": order_id, "slot_id": slot_id, "pool": "open"}


async def _trace(services: Services, pid: int, order_ids: list[int]) -> tuple[Any, ...]:
    """What a booking of this patient would have written."""
    return (
        await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", pid),
        tuple(
            r["status"]
            for r in await services.pool.fetch(
                "SELECT status FROM exam_order WHERE id = ANY($1::bigint[]) ORDER BY id", order_ids
            )
        ),
        await services.pool.fetchval("SELECT count(*) FROM order_event WHERE order_id = ANY($1::bigint[])", order_ids),
        await services.pool.fetchval("SELECT booking_version FROM patient WHERE id = $1", pid),
    )


async def test_a_batch_commits_each_booking_on_its_own_with_a_lone_calls_answer(services: Services) -> None:
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    a, b, closed, d, e = await dedicated_slots(services, day, "GC-CT", 5, 10)
    await services.pool.execute("UPDATE slot SET status = 'closed' WHERE id = $1", closed)
    made = await new_patients_with_orders(services.pool, 7, ["CT-HEAD"])
    await services.pool.execute("INSERT INTO exam_capability VALUES ('CT-CHEST', 'GC-CT')")
    [(p6, [o6a, o6b])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "CT-CHEST"])
    (p0, [o0]), (p1, [o1]), (p2, [o2]), (p3, [o3]), (p4, [o4]), (p5, [o5]), (p7, [o7]) = made
    await services.pool.execute("UPDATE exam_order SET status = 'cancelled' WHERE id = $1", o3)
    traces = {p: await _trace(services, p, [o]) for p, o in ((p2, o2), (p3, o3), (p4, o4), (p7, o7))}

    gc = GroupCommit(services.pool, in_flight=1)

    def book(pid: int, items: list[dict[str, Any]], version: int | None = None) -> Any:
        return gc.book(
            hold_id=uuid.uuid4().hex,
            patient_id=pid,
            channel="desk",
            items=items,
            deadline=_deadline(),
            actor=clerk,
            reason="",
            version=version,
        )

    results = await asyncio.gather(
        book(p0, [_item(o0, a)]),  # sent at once, alone
        book(p1, [_item(o1, b)]),  # these six queue behind it and go together
        book(p2, [_item(o2, b)], version=999),  # a stale rule check
        book(p3, [_item(o3, a)]),  # a cancelled order
        book(p4, [_item(o4, closed)]),  # a closed slot
        book(p5, [_item(o5, b)]),  # the same slot as p1, in the same batch
        book(p7, [_item(1.5, a)]),  # not a booking refusal at all: sent again alone
        book(p6, [_item(o6a, d), _item(o6b, e)]),  # a bundle goes alone
        return_exceptions=True,
    )
    r0, r1, r2, r3, r4, r5, r7, r6 = results
    assert (gc.coalescer.calls, gc.coalescer.items) == (3, 8)

    for rows, order, slot in ((r0, o0, a), (r1, o1, b), (r5, o5, b)):
        assert isinstance(rows, list) and [(r["order_id"], r["slot_id"]) for r in rows] == [(order, slot)]
    assert isinstance(r6, list) and sorted(r["order_id"] for r in r6) == [o6a, o6b]
    assert isinstance(r2, PatientChanged) and r2.detail.startswith("PATIENT_CHANGED")
    assert isinstance(r3, OrderNotBookable) and r3.detail == f"ORDER_NOT_BOOKABLE: {o3}"
    assert isinstance(r4, SlotUnavailable) and r4.detail == f"SLOT_FULL: {closed}"
    assert isinstance(r7, asyncpg.InvalidTextRepresentationError)  # what a lone call raises
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await booking_repo.book(
            services.pool,
            hold_id="x",
            patient_id=p7,
            channel="desk",
            items=[_item(1.5, a)],
            deadline=_deadline(),
            actor=clerk,
            reason="",
        )

    # The refused wrote nothing; the committed wrote all of theirs.
    for p, o in ((p2, o2), (p3, o3), (p4, o4), (p7, o7)):
        assert await _trace(services, p, [o]) == traces[p]
    booked = {
        r["id"]: r["booked"]
        for r in await services.pool.fetch(
            "SELECT id, booked FROM slot WHERE id = ANY($1::bigint[])", [a, b, closed, d, e]
        )
    }
    assert booked == {a: 1, b: 2, closed: 0, d: 1, e: 1}
    for p, orders in ((p0, [o0]), (p1, [o1]), (p5, [o5]), (p6, [o6a, o6b])):
        count, statuses, events, _ = await _trace(services, p, orders)
        assert (count, set(statuses), events) == (len(orders), {"booked"}, len(orders))


async def test_a_booking_that_fails_part_way_returns_no_rows_of_its_own(services: Services) -> None:
    """hy_book hands back each item as it goes; in a batch, a bundle whose second item fails must
    not leak the first item's row into the result (its subtransaction rolled it back)."""
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    a, closed = await dedicated_slots(services, day, "GC-CT2", 2, 5)
    await services.pool.execute("UPDATE slot SET status = 'closed' WHERE id = $1", closed)
    await services.pool.execute("INSERT INTO exam_capability VALUES ('CT-CHEST', 'GC-CT2')")
    [(pb, [ob1, ob2])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "CT-CHEST"])
    [(pg, [og])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])

    def entry(k: int, pid: int, items: list[dict[str, Any]], actor: Actor) -> dict[str, Any]:
        return {
            "k": k,
            "hold_id": uuid.uuid4().hex,
            "patient_id": pid,
            "channel": "desk",
            "items": items,
            "deadline": _deadline(),
            "actor_id": actor.user_id,
            "actor_role": actor.role,
            "terminal": "",
            "reason": "",
            "version": None,
            "overrides": [],
        }

    rows = await booking_repo.book_batch(
        services.pool, [entry(0, pb, [_item(ob1, a), _item(ob2, closed)], clerk), entry(1, pg, [_item(og, a)], clerk)]
    )
    by_k = {k: [r for r in rows if r["k"] == k] for k in (0, 1)}
    assert [(r["err_message"], r["appointment_id"]) for r in by_k[0]] == [("SLOT_FULL", None)]
    assert [(r["err_state"], r["order_id"]) for r in by_k[1]] == [(None, og)]
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", pb) == 0
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", a) == 1


async def test_concurrent_bookings_share_commits_and_never_oversell(services: Services) -> None:
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    slots = await dedicated_slots(services, day, "GC-STORM", 4, 10)
    patients = await new_patients_with_orders(services.pool, 120, ["CT-HEAD"])
    gc = services.booking.group_commit.coalescer
    calls, items = gc.calls, gc.items

    results = await asyncio.gather(
        *(
            services.booking.book(clerk, pid, "desk", [BookItem(oid, slots[n % 4])])
            for n, (pid, [oid]) in enumerate(patients)
        ),
        return_exceptions=True,
    )
    booked = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if not isinstance(r, list)]
    assert len(booked) == 40 and all(isinstance(r, SlotUnavailable) for r in refused), {
        type(r).__name__ for r in refused
    }
    assert gc.items - items == 40 and gc.calls - calls < 40  # some of them shared a commit
    assert (
        await services.pool.fetchval("SELECT sum(booked) FROM slot WHERE id = ANY($1::bigint[])", slots)
        == 40
        == await services.pool.fetchval(
            "SELECT count(*) FROM appointment WHERE slot_id = ANY($1::bigint[]) AND status = 'booked'", slots
        )
    )
    await assert_redis_matches_postgres(services, day)
