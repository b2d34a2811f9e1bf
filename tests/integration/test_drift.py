"""The drift check (app/booking/reconcile.py, `Reconciler.repair_drift`): Redis counters that
PostgreSQL and the holds in flight do not explain are found, looked at again, and their day
rebuilt; holds in flight and slots that move between two looks are left alone."""

from __future__ import annotations

import logging
import time

import pytest

from app.booking.service import BookItem
from app.booking.slot_store import GrabItem
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    dedicated_slots,
    future_day,
    new_patients_with_orders,
)


async def _book(services: Services, slot_id: int, count: int) -> None:
    clerk = await actor_for(services, "clerk")
    for pid, [oid] in await new_patients_with_orders(services.pool, count, ["CT-HEAD"]):
        await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot_id)])


async def test_a_lost_redis_write_is_found_on_two_looks_and_its_day_rebuilt(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.booking.reconcile")
    rec = services.reconciler
    day = future_day(services, 2)
    a, b = await dedicated_slots(services, day, "DRIFT-CT", 2, 5)
    await _book(services, a, 2)
    assert await rec.repair_drift(now=0) == [] and await rec.repair_drift(now=1) == []  # all in line
    assert rec.drift_repairs == 0

    k = services.keys.day(day)
    await services.redis.hincrby(k.slot(a), "b", -1)  # a confirmed booking Redis lost (a split brain)
    await services.redis.hset(k.slot(b), "cap", "9")  # a hand edit
    assert await rec.repair_drift(now=100) == []  # first look: suspects only
    assert await rec.repair_drift(now=101) == [day]  # still out of line, nothing moved: rebuilt
    assert rec.drift_repairs == 1
    await assert_redis_matches_postgres(services, day)
    assert "drifted from postgres on 2 slot(s)" in caplog.text
    assert await rec.repair_drift(now=102) == []  # not due: nothing looked at, nothing to do


async def test_holds_in_flight_are_not_drift(services: Services) -> None:
    day = future_day(services, 2)
    (slot,) = await dedicated_slots(services, day, "DRIFT-CT2", 1, 5)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    now = time.time()
    grabbed = await services.store.grab(
        day, "drift-hold", pid, "desk", [GrabItem(slot, "CT-HEAD", oid)], int(now * 1000), int((now + 60) * 1000)
    )
    assert grabbed.ok  # Redis b = 1, PostgreSQL booked = 0: the hold explains it
    assert await services.reconciler.observe_drift([day]) == {}
    await services.redis.hincrby(services.keys.day(day).slot(slot), "b", 1)  # one more than the hold
    assert list(await services.reconciler.observe_drift([day])) == [(day, slot)]


async def test_a_slot_that_moves_between_two_looks_waits_for_a_quiet_one(services: Services) -> None:
    rec = services.reconciler
    day = future_day(services, 2)
    (slot,) = await dedicated_slots(services, day, "DRIFT-CT3", 1, 5)
    await _book(services, slot, 1)
    await services.redis.hincrby(services.keys.day(day).slot(slot), "b", -1)
    assert await rec.repair_drift(now=0) == []  # suspect
    await _book(services, slot, 1)  # a booking on it in between: its counters moved
    assert await rec.repair_drift(now=1) == []  # not the same as the first look: left alone
    assert rec.drift_repairs == 0
    assert await rec.repair_drift(now=200) == []  # the next look (due again) suspects it anew
    assert await rec.repair_drift(now=201) == [day]
    await assert_redis_matches_postgres(services, day)
