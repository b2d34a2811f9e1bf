"""Group commit (app/db/group_commit.py, sql/0018): bookings that arrive together are committed by
one call, and each is still its own all-or-nothing unit with its own answer, the same a lone call
would have had."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from app.booking.service import BookItem
from app.db import booking_repo
from app.db.group_commit import GroupCommit
from app.errors import AppError, OrderNotBookable, PatientChanged, SlotUnavailable
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


def _submit(
    gc: GroupCommit,
    actor: Actor,
    patient_id: int,
    items: list[dict[str, Any]],
    version: int | None = None,
    deadline: datetime | None = None,
) -> Any:
    """One booking handed to the group commit, as the booking service hands it."""
    return gc.book(
        hold_id=uuid.uuid4().hex,
        patient_id=patient_id,
        channel="desk",
        items=items,
        deadline=deadline or _deadline(),
        actor=actor,
        reason="",
        version=version,
    )


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


async def test_a_batch_commits_each_booking_on_its_own_with_a_lone_calls_answer(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.db.group_commit")
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    a, b, closed, d, e = await dedicated_slots(services, day, "GC-CT", 5, 10)
    await services.pool.execute("UPDATE slot SET status = 'closed' WHERE id = $1", closed)
    made = await new_patients_with_orders(services.pool, 6, ["CT-HEAD"])
    await services.pool.execute("INSERT INTO exam_capability VALUES ('CT-CHEST', 'GC-CT')")
    [(p6, [o6a, o6b])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "CT-CHEST"])
    (p0, [o0]), (p1, [o1]), (p2, [o2]), (p3, [o3]), (p4, [o4]), (p5, [o5]) = made
    await services.pool.execute("UPDATE exam_order SET status = 'cancelled' WHERE id = $1", o3)
    traces = {p: await _trace(services, p, [o]) for p, o in ((p2, o2), (p3, o3), (p4, o4))}

    gc = GroupCommit(services.pool, in_flight=1)

    def book(pid: int, items: list[dict[str, Any]], version: int | None = None) -> Any:
        return _submit(gc, clerk, pid, items, version)

    results = await asyncio.gather(
        book(p0, [_item(o0, a)]),  # sent at once, alone
        book(p1, [_item(o1, b)]),  # these six queue behind it and go together
        book(p2, [_item(o2, b)], version=999),  # a stale rule check
        book(p3, [_item(o3, a)]),  # a cancelled order
        book(p4, [_item(o4, closed)]),  # a closed slot
        book(p5, [_item(o5, b)]),  # the same slot as p1, in the same batch
        book(p6, [_item(o6a, d), _item(o6b, e)]),  # a bundle goes alone
        return_exceptions=True,
    )
    r0, r1, r2, r3, r4, r5, r6 = results
    assert (gc.coalescer.calls, gc.coalescer.items) == (3, 7)
    assert "one by one" not in caplog.text  # decided set-based (hy_book_set), no fallback

    for rows, order, slot in ((r0, o0, a), (r1, o1, b), (r5, o5, b)):
        assert isinstance(rows, list) and [(r["order_id"], r["slot_id"]) for r in rows] == [(order, slot)]
    assert isinstance(r6, list) and sorted(r["order_id"] for r in r6) == [o6a, o6b]
    assert isinstance(r2, PatientChanged) and r2.detail.startswith("PATIENT_CHANGED")
    assert isinstance(r3, OrderNotBookable) and r3.detail == f"ORDER_NOT_BOOKABLE: {o3}"
    assert isinstance(r4, SlotUnavailable) and r4.detail == f"SLOT_FULL: {closed}"

    # The refused wrote nothing; the committed wrote all of theirs.
    for p, o in ((p2, o2), (p3, o3), (p4, o4)):
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


async def test_a_batch_postgresql_cannot_decide_as_a_set_is_booked_one_by_one(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """An error of the set-based call that is no booking's refusal (here a malformed order id; in
    life a deadlock) writes nothing; the batch then goes through hy_book_batch, and only the
    booking at fault gets an error: the one a lone call raises."""
    caplog.set_level(logging.INFO, logger="app.db.group_commit")
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    (a,) = await dedicated_slots(services, day, "GC-CT3", 1, 10)
    (p0, [o0]), (p1, [o1]), (p2, [o2]), (p3, [_]) = await new_patients_with_orders(services.pool, 4, ["CT-HEAD"])
    gc = GroupCommit(services.pool, in_flight=1)

    def book(pid: int, order: Any) -> Any:
        return _submit(gc, clerk, pid, [_item(order, a)])

    r0, r1, r3, r2 = await asyncio.gather(
        book(p0, o0), book(p1, o1), book(p3, 1.5), book(p2, o2), return_exceptions=True
    )
    assert "booking them one by one" in caplog.text
    assert isinstance(r3, asyncpg.InvalidTextRepresentationError)
    with pytest.raises(asyncpg.InvalidTextRepresentationError):  # what a lone call raises
        await booking_repo.book(
            services.pool,
            hold_id="x",
            patient_id=p3,
            channel="desk",
            items=[_item(1.5, a)],
            deadline=_deadline(),
            actor=clerk,
            reason="",
        )
    for rows, order in ((r0, o0), (r1, o1), (r2, o2)):
        assert isinstance(rows, list) and [r["order_id"] for r in rows] == [order]
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", a) == 3
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", p3) == 0


async def test_a_second_booking_of_a_patient_in_a_batch_waits_for_the_first(services: Services) -> None:
    """Two bookings of one patient arriving together are not decided against the same booking
    version: the second goes after the first, and its stale rule check is refused."""
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    a, b = await dedicated_slots(services, day, "GC-CT4", 2, 10)
    (p0, [o0]), (p1, [o1]) = await new_patients_with_orders(services.pool, 2, ["CT-HEAD"])
    await services.pool.execute("INSERT INTO exam_capability VALUES ('CT-CHEST', 'GC-CT4')")
    [(p2, [o2a, o2b])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD", "CT-CHEST"])
    version = await services.pool.fetchval("SELECT booking_version FROM patient WHERE id = $1", p2)
    gc = GroupCommit(services.pool, in_flight=1)

    def book(pid: int, order: int, slot: int) -> Any:
        return _submit(gc, clerk, pid, [_item(order, slot)], version if pid == p2 else None)

    r0, r1, first, second = await asyncio.gather(
        book(p0, o0, a), book(p1, o1, a), book(p2, o2a, a), book(p2, o2b, b), return_exceptions=True
    )
    assert isinstance(r0, list) and isinstance(r1, list) and isinstance(first, list)
    assert isinstance(second, PatientChanged)
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", p2) == 1


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


async def test_the_set_based_batch_refuses_each_booking_as_a_lone_hy_book_does(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.db.group_commit")
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    free, locked, single = await dedicated_slots(services, day, "GC-CT5", 3, 10)
    await services.pool.execute("UPDATE slot SET capacity = 1 WHERE id = $1", single)
    await services.pool.execute(
        """INSERT INTO slot_lock (hospital_id, resource_id, starts_at, ends_at, kind, reason)
           SELECT hospital_id, resource_id, starts_at, ends_at, 'maintenance', '检修' FROM slot WHERE id = $1""",
        locked,
    )
    made = await new_patients_with_orders(services.pool, 7, ["CT-HEAD"])
    [(px, [ox])] = await new_patients_with_orders(services.pool, 1, ["DX-CHEST"])
    (p0, [o0]), (p1, [o1]), (p2, [o2]), (p3, [o3]), (p4, [_]), (p5, [o5]), (p6, [o6]) = made
    past = datetime.fromtimestamp(time.time() - 1, UTC)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("HOLD_EXPIRED", {"patient_id": p1, "items": [_item(o1, free)], "deadline": past}),
        ("EXAM_NOT_ON_RESOURCE", {"patient_id": px, "items": [_item(ox, free)]}),
        ("SLOT_LOCKED", {"patient_id": p2, "items": [_item(o2, locked)]}),
        ("SLOT_FULL", {"patient_id": p3, "items": [_item(o3, single)]}),  # behind p6 in the batch
        ("ORDER_NOT_BOOKABLE", {"patient_id": p4, "items": [_item(o5, free)]}),  # p5's order
        ("SLOT_FULL", {"patient_id": p5, "items": [_item(o5, 2**53)]}),  # no such slot
    ]
    gc = GroupCommit(services.pool, in_flight=1)

    def book(patient_id: int, items: list[dict[str, Any]], deadline: datetime | None = None) -> Any:
        return _submit(gc, clerk, patient_id, items, deadline=deadline)

    first, *rest = await asyncio.gather(
        book(p0, [_item(o0, free)]),  # alone: the others queue behind it
        book(p6, [_item(o6, single)]),  # takes the single place: it comes first in the batch
        *(book(**kw) for _, kw in bad),
        return_exceptions=True,
    )
    assert "one by one" not in caplog.text  # decided set-based
    assert isinstance(first, list) and isinstance(rest[0], list)
    for (code, kw), got in zip(bad, rest[1:], strict=True):
        assert isinstance(got, AppError) and got.detail.startswith(f"{code}: "), (code, got)
        with pytest.raises(type(got)) as alone:
            await booking_repo.book(
                services.pool,
                hold_id=uuid.uuid4().hex,
                channel="desk",
                actor=clerk,
                reason="",
                deadline=kw.get("deadline") or _deadline(),
                patient_id=kw["patient_id"],
                items=kw["items"],
            )
        assert alone.value.detail == got.detail, code
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", single) == 1


async def test_rule_contexts_read_together_are_the_ones_read_alone(services: Services) -> None:
    """hy_booking_context_batch gives each booking of a batch exactly the rows it gives that booking
    read alone: orders and slots that exist or not, capable or not, the patient's facts and
    appointments in reach."""
    day = future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    slots = await dedicated_slots(services, day, "GC-CT6", 3, 10)
    (p0, [o0a, o0b]), (p1, [o1a, o1b]) = await new_patients_with_orders(services.pool, 2, ["CT-HEAD", "CT-CHEST"])
    await booking_repo.book(
        services.pool,
        hold_id=uuid.uuid4().hex,
        patient_id=p0,
        channel="desk",
        items=[_item(o0a, slots[0])],
        deadline=_deadline(),
        actor=clerk,
        reason="",
    )
    await services.pool.execute(
        "INSERT INTO patient_fact (patient_id, fact, value, source) VALUES ($1, 'pregnant', 'true', 'desk'),"
        " ($1, 'pregnant', 'false', 'clinician')",
        p1,
    )
    reach = timedelta(days=2)
    requests: list[tuple[int, list[int], list[int], timedelta]] = [
        (p0, [o0b], [slots[1]], reach),
        (p1, [o1a, o1b], [slots[1], slots[2]], reach),
        (p1, [2**40], [2**40], timedelta(0)),
        (2**40, [o0b], [slots[0]], reach),
    ]
    together = await booking_repo.booking_contexts(services.pool, requests)
    alone = [await booking_repo.booking_context(services.pool, *r) for r in requests]

    def plain(ctx: booking_repo.BookingContext) -> tuple[Any, ...]:
        rows, rest = ctx
        return [{k: v for k, v in dict(r).items() if k != "k"} for r in rows], rest

    assert [plain(c) for c in together] == [plain(c) for c in alone]
    (_, (_, _, appointments)), (rows, (_, facts, _)) = alone[0], alone[1]
    assert [a["order_id"] for a in appointments] == [o0a] and facts == {"pregnant": False}
    assert [r["capable"] for r in rows] == [True, False]
