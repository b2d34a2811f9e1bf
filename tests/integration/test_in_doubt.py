"""Bookings cut off mid-commit are settled as soon as the backend that ran them is gone
(app/booking/in_doubt.py), not a minute later by the reaper: on the real PostgreSQL and Redis.

The backends are ended with pg_terminate_backend, which is what a lost connection comes to on the
server's side; a PostgreSQL failover (another postmaster) is test_pg_failover.py's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, date, datetime
from typing import Any

import msgspec
import pytest

from app.booking.in_doubt import InDoubt
from app.booking.service import BookItem
from app.booking.slot_store import GrabItem
from app.db import booking_repo
from app.db.pool import Backend, backend_of
from app.errors import DatabaseUnavailable
from app.security.actor import Actor
from app.services import Services
from app.settings import load_settings
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    availability_snapshot,
    future_day,
    new_patients_with_orders,
    open_slots,
)

SETTLE_BOUND_S = 5.0  # the hold would otherwise stay until it expires (60 s) and the reaper runs


async def _until_gone(services: Services, pid: int) -> None:
    for _ in range(200):
        if not await services.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} still there")


async def _settle(in_doubt: InDoubt) -> int:
    """settle_ready as the service's poll runs it: a pool connection of a terminated backend fails
    once (DatabaseUnavailable) and is replaced at the next poll."""
    for _ in range(3):
        try:
            return await in_doubt.settle_ready()
        except DatabaseUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("PostgreSQL never answered the in-doubt check")


class _Held(msgspec.Struct):
    day: date
    pid: int
    oid: int
    slot: dict[str, Any]
    hold_id: str
    expires_ms: int


async def _grab(services: Services, day: date, pid: int, oid: int, slot_id: int) -> tuple[str, int]:
    """A place held for the order, as the service's grab takes it: (hold id, expiry in epoch ms)."""
    hold_id, now = uuid.uuid4().hex, time.time()
    expires_ms = int((now + 60) * 1000)
    grab = await services.store.grab(
        day, hold_id, pid, "desk", [GrabItem(slot_id, "CT-HEAD", oid)], int(now * 1000), expires_ms
    )
    assert grab.ok
    return hold_id, expires_ms


async def _held(services: Services) -> _Held:
    """A new patient's CT order with a place held for it."""
    day = future_day(services)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = dict((await open_slots(services, "CT-HEAD", day))[0])
    hold_id, expires_ms = await _grab(services, day, pid, oid, slot["id"])
    return _Held(day, pid, oid, slot, hold_id, expires_ms)


class _Booked(msgspec.Struct):
    clerk: Actor
    pid: int
    oid: int
    appointment_id: int
    old_day: date
    old_slot: int
    new_day: date
    new_slot: int  # where the tests move it


async def _booked(services: Services) -> _Booked:
    """A new patient's CT booked by a clerk, and a free place on a later day to move it to."""
    old_day, new_day = future_day(services, 2), future_day(services, 3)
    clerk = await actor_for(services, "clerk")
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    old_slot = (await open_slots(services, "CT-HEAD", old_day))[0]["id"]
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(oid, old_slot)])
    new_slot = (await open_slots(services, "CT-HEAD", new_day))[0]["id"]
    return _Booked(clerk, pid, oid, appt.appointment_id, old_day, old_slot, new_day, new_slot)


async def test_a_hold_is_released_once_the_backend_of_its_lost_commit_has_exited(services: Services) -> None:
    before = await availability_snapshot(services, future_day(services))
    h = await _held(services)
    day, hold_id, expires_ms = h.day, h.hold_id, h.expires_ms
    in_doubt = services.booking.in_doubt
    async with services.pool.acquire() as conn:
        backend = backend_of(conn)
        assert backend is not None and backend.pid == conn.get_server_pid()
        in_doubt.watch(backend, [(day, hold_id)], expires_ms)
        # While that backend lives, a commit could still land: nothing is settled.
        assert await _settle(in_doubt) == 0
        assert await services.store.live_hold_ids(day) == [hold_id]
        await services.pool.fetchval("SELECT pg_terminate_backend($1)", backend.pid)
        await _until_gone(services, backend.pid)
    assert await _settle(in_doubt) == 1
    assert (in_doubt.released, in_doubt.pending) == (1, 0)
    assert await services.store.live_hold_ids(day) == []
    assert await availability_snapshot(services, day) == before
    await assert_redis_matches_postgres(services, day)


async def test_a_hold_whose_lost_commit_did_land_is_confirmed(services: Services) -> None:
    h = await _held(services)
    day, pid, oid, slot, hold_id, expires_ms = h.day, h.pid, h.oid, h.slot, h.hold_id, h.expires_ms
    async with services.pool.acquire() as conn:
        backend = backend_of(conn)
        assert backend is not None
        # The commit got through; its answer never reached the caller.
        await booking_repo.book(
            conn,
            hold_id=hold_id,
            patient_id=pid,
            channel="desk",
            items=[{"order_id": oid, "slot_id": slot["id"], "pool": "open"}],
            deadline=datetime.fromtimestamp(time.time() + 50, UTC),
            actor=await actor_for(services, "clerk"),
            reason="",
        )
        services.booking.in_doubt.watch(backend, [(day, hold_id)], expires_ms)
        await services.pool.fetchval("SELECT pg_terminate_backend($1)", backend.pid)
        await _until_gone(services, backend.pid)
    assert await _settle(services.booking.in_doubt) == 1
    assert services.booking.in_doubt.confirmed == 1
    view = await services.store.read_slot(day, slot["id"])
    assert view is not None and view.booked == slot["booked"] + 1
    await assert_redis_matches_postgres(services, day)


async def test_another_postmaster_settles_at_once(services: Services) -> None:
    """A promoted standby or a restarted server: no backend of the old one can commit there."""
    h = await _held(services)
    day, hold_id, expires_ms = h.day, h.hold_id, h.expires_ms
    async with services.pool.acquire() as conn:
        alive = backend_of(conn)
        assert alive is not None
        # This very backend, alive, but of a postmaster started at another time.
        elsewhere = Backend(datetime(2026, 1, 1, tzinfo=UTC), alive.pid, alive.backend_start)
        services.booking.in_doubt.watch(elsewhere, [(day, hold_id)], expires_ms)
        assert await _settle(services.booking.in_doubt) == 1
    assert await services.store.live_hold_ids(day) == []
    await assert_redis_matches_postgres(services, day)


async def test_near_expiry_and_unknown_backends_are_left_to_the_reaper(services: Services) -> None:
    h = await _held(services)
    day, hold_id = h.day, h.hold_id
    in_doubt = services.booking.in_doubt
    in_doubt.watch(None, [(day, hold_id)], int(time.time() * 1000) + 60_000)
    assert in_doubt.pending == 0
    async with services.pool.acquire() as conn:
        in_doubt.watch(backend_of(conn), [(day, hold_id)], int(time.time() * 1000) + 1_000)  # inside the margin
    assert await _settle(in_doubt) == 0 and in_doubt.pending == 0
    assert await services.store.live_hold_ids(day) == [hold_id]  # the reaper's, at expiry


def test_settling_can_be_switched_off_for_a_transaction_pooler() -> None:
    assert load_settings({}).booking.settle_in_doubt is True
    assert load_settings({"HY_IN_DOUBT_SETTLE": "0"}).booking.settle_in_doubt is False
    with pytest.raises(ValueError, match="HY_IN_DOUBT_SETTLE must be 1 or 0"):
        load_settings({"HY_IN_DOUBT_SETTLE": "sometimes"})


async def test_switched_off_every_cut_off_commit_is_the_reapers(services: Services) -> None:
    h = await _held(services)
    day, hold_id, expires_ms = h.day, h.hold_id, h.expires_ms
    off = InDoubt(services.pool, services.store, services.reconciler, None, enabled=False)
    elsewhere = Backend(datetime(2026, 1, 1, tzinfo=UTC), 1, datetime(2026, 1, 1, tzinfo=UTC))
    off.watch(elsewhere, [(day, hold_id)], expires_ms)
    assert off.pending == 0 and await off.settle_ready() == 0
    assert await services.store.live_hold_ids(day) == [hold_id]


async def _cut_off(services: Services, pid: int, call: Awaitable[object], function: str) -> DatabaseUnavailable:
    """Run `call` (a booking or a reschedule of patient `pid`) while its commit waits on the
    patient's row lock, end its backend there (as a crash or a lost connection ends it), and return
    the error its caller got."""
    blocker = await services.pool.acquire()
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM patient WHERE id = $1 FOR UPDATE", pid)  # the commit waits here
        task = asyncio.ensure_future(call)
        waiting = None
        for _ in range(500):
            waiting = await services.pool.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1", f"%{function}(%"
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, f"the {function} call never waited on the patient's lock"
        await services.pool.fetchval("SELECT pg_terminate_backend($1)", waiting)
        with pytest.raises(DatabaseUnavailable) as raised:
            await task
        await tx.rollback()
    finally:
        await services.pool.release(blocker)
    assert raised.value.status == 503 and raised.value.backend is not None
    return raised.value


async def _until_no_hold(services: Services, day: date) -> None:
    cut_off = time.monotonic()
    while await services.store.live_hold_ids(day):
        assert time.monotonic() - cut_off < SETTLE_BOUND_S, "the hold of the lost commit is still there"
        await asyncio.sleep(0.05)


async def test_a_booking_whose_commit_is_cut_off_gets_its_places_back_within_seconds(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole path: the booking's commit is cut off mid-call, the caller gets a clear 503, and
    the places come back within seconds, by the service itself: no reaper runs here."""
    day = future_day(services)
    before = await availability_snapshot(services, day)
    clerk = await actor_for(services, "clerk")
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    await _cut_off(services, pid, services.booking.book(clerk, pid, "desk", [BookItem(oid, slot["id"])]), "hy_book")
    assert len(await services.store.live_hold_ids(day)) == 1  # in doubt, for now
    await _until_no_hold(services, day)
    assert services.booking.in_doubt.released == 1
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE order_id = $1", oid) == 0
    assert await availability_snapshot(services, day) == before
    await assert_redis_matches_postgres(services, day)
    assert "in-doubt released hold" in caplog.text


async def test_a_reschedule_whose_commit_is_cut_off_keeps_the_old_place(services: Services) -> None:
    """The new place is given back within seconds; the appointment stays where it was."""
    b = await _booked(services)
    before = await availability_snapshot(services, b.new_day)
    move = services.booking.reschedule(b.clerk, b.appointment_id, b.new_slot, "desk", "患者要求改期")
    await _cut_off(services, b.pid, move, "hy_reschedule")
    await _until_no_hold(services, b.new_day)
    assert await services.pool.fetchval("SELECT status FROM appointment WHERE id = $1", b.appointment_id) == "booked"
    assert await availability_snapshot(services, b.new_day) == before
    await assert_redis_matches_postgres(services, b.old_day)
    await assert_redis_matches_postgres(services, b.new_day)


async def test_a_cut_off_reschedule_that_did_commit_gives_the_old_place_back(services: Services) -> None:
    """Its new place is confirmed and its old one returned, as the service would have done."""
    b = await _booked(services)
    hold_id, expires_ms = await _grab(services, b.new_day, b.pid, b.oid, b.new_slot)
    async with services.pool.acquire() as conn:
        backend = backend_of(conn)
        row = await booking_repo.reschedule(  # committed; the answer never reached the caller
            conn,
            appointment_id=b.appointment_id,
            patient_id=b.pid,
            new_slot_id=b.new_slot,
            pool="open",
            hold_id=hold_id,
            deadline=datetime.fromtimestamp(expires_ms / 1000 - 10, UTC),
            channel="desk",
            actor=b.clerk,
            reason="患者要求改期",
        )
        in_doubt = services.booking.in_doubt
        in_doubt.watch(
            backend,
            [(b.new_day, hold_id)],
            expires_ms,
            then=lambda: services.booking._return_place(b.old_day, b.old_slot, b.pid, row["old_pool"]),
        )
        await services.pool.fetchval("SELECT pg_terminate_backend($1)", backend.pid)
        await _until_gone(services, backend.pid)
    assert await _settle(in_doubt) == 1 and in_doubt.confirmed == 1
    await assert_redis_matches_postgres(services, b.old_day)
    await assert_redis_matches_postgres(services, b.new_day)
