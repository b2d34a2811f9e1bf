"""The quota release job: a channel's unused reserve of a day goes to the open pool at the rule's
time (the ward's at 16:00 the day before, from the demo seed), once; also while ward bookings race
for the same slots: no slot oversold, PostgreSQL and Redis agree."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta
from datetime import time as clock

from app.booking.availability import places_for
from app.booking.quota_release import release_due
from app.booking.service import BookItem
from app.errors import AppError
from app.security.actor import Actor
from app.services import Services
from tests.helpers import actor_for, assert_redis_matches_postgres, future_day, new_patients_with_orders


async def _ward_slots(services: Services, day: object) -> list[dict[str, object]]:
    rows = await services.pool.fetch(
        """SELECT s.id, s.resource_id, (s.quotas ->> 'ward')::int AS ward FROM slot s
            JOIN exam_capability c ON c.resource_id = s.resource_id AND c.exam_code = 'CT-HEAD'
           WHERE s.day = $1 AND (s.quotas ->> 'ward')::int > 0 ORDER BY s.starts_at, s.id""",
        day,
    )
    return [dict(r) for r in rows]


async def test_the_ward_reserve_goes_to_the_open_pool_at_sixteen_the_day_before_once(services: Services) -> None:
    day = future_day(services, 2)
    tz = services.reconciler.tz
    hospital = services.settings.booking.hospital_id
    slots = await _ward_slots(services, day)
    assert slots, "the demo reserves ward places on CT"
    due = datetime.combine(day - timedelta(days=1), clock(16, 0), tz)
    early = await release_due(services.pool, services.reconciler, hospital, due - timedelta(minutes=1))
    assert all(r.day != day.isoformat() for r in early)

    nurse = await actor_for(services, "nurse")
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"], patient_class="inpatient")
    await services.booking.book(nurse, pid, "ward", [BookItem(order, int(slots[0]["id"]))])
    view = await services.store.read_slot(day, int(slots[1]["id"]))
    assert view is not None
    desk_before = places_for(view, "desk", time.time())[0]

    reserved = await services.pool.fetchval(
        "SELECT sum((quotas ->> 'ward')::int) FROM slot WHERE day = $1 AND quotas ? 'ward'", day
    )
    released = await release_due(services.pool, services.reconciler, hospital, due + timedelta(seconds=1))
    mine = [r for r in released if r.day == day.isoformat() and r.channel == "ward"]
    assert len(mine) == 1 and mine[0].places == reserved - 1  # every slot's reserve but the one place used
    quotas = await services.pool.fetch(
        "SELECT id, (quotas ->> 'ward')::int AS ward FROM slot WHERE id = ANY($1::bigint[])", [s["id"] for s in slots]
    )
    assert {r["id"]: r["ward"] for r in quotas} == {s["id"]: (1 if s["id"] == slots[0]["id"] else 0) for s in slots}
    view = await services.store.read_slot(day, int(slots[1]["id"]))
    assert view is not None and places_for(view, "desk", time.time())[0] > desk_before
    await assert_redis_matches_postgres(services, day)
    again = await release_due(services.pool, services.reconciler, hospital, due + timedelta(hours=1))
    assert not [r for r in again if r.day == day.isoformat()]  # once only
    await services.pool_admin.generate()  # regenerating the horizon does not bring the reserve back
    after = await services.pool.fetchval(
        "SELECT sum((quotas ->> 'ward')::int) FROM slot WHERE day = $1 AND quotas ? 'ward'", day
    )
    assert after == 1


async def test_release_amid_ward_bookings_on_the_same_slots_oversells_nothing(services: Services) -> None:
    day = future_day(services, 2)
    tz = services.reconciler.tz
    hospital = services.settings.booking.hospital_id
    slots = await _ward_slots(services, day)
    nurse = await actor_for(services, "nurse")
    clerk = await actor_for(services, "clerk")
    inpatients = await new_patients_with_orders(services.pool, 30, ["CT-HEAD"], patient_class="inpatient")
    outpatients = await new_patients_with_orders(services.pool, 30, ["CT-HEAD"])

    async def book(actor_channel: tuple[Actor, str], pid: int, order: int, slot_id: int) -> None:
        actor, channel = actor_channel
        with contextlib.suppress(AppError):
            await services.booking.book(actor, pid, channel, [BookItem(order, slot_id)])

    due = datetime.combine(day - timedelta(days=1), clock(16, 0), tz) + timedelta(seconds=1)
    jobs = [release_due(services.pool, services.reconciler, hospital, due)]
    for n, (pid, (order,)) in enumerate(inpatients):
        jobs.append(book((nurse, "ward"), pid, order, int(slots[n % len(slots)]["id"])))
    for n, (pid, (order,)) in enumerate(outpatients):
        jobs.append(book((clerk, "desk"), pid, order, int(slots[n % len(slots)]["id"])))
    await asyncio.gather(*jobs)
    over = await services.pool.fetchval(
        """SELECT count(*) FROM slot s WHERE s.day = $1 AND (s.booked > s.capacity OR s.booked <>
             (SELECT count(*) FROM appointment a WHERE a.slot_id = s.id AND a.status = 'booked'))""",
        day,
    )
    assert over == 0
    await services.reconciler.reconcile_day(day)  # what any in-flight grab left aside, PostgreSQL decides
    await assert_redis_matches_postgres(services, day)
