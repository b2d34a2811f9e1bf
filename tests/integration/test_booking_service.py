"""The booking service against real PostgreSQL and Redis: book, bundle, cancel, reschedule, guards."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.booking.service import BookItem
from app.errors import AppointmentNotLive, Forbidden, NotFound, SlotLocked, SlotUnavailable, ValidationFailed
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    fill_slot,
    future_day,
    new_patients_with_orders,
    open_slots,
)


async def test_book_one_order_writes_appointment_event_outbox_and_takes_the_place(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    [booked] = await services.booking.book(clerk, patient, "desk", [BookItem(order, slot["id"])])
    assert booked.slot_id == slot["id"] and booked.exam_code == "CT-HEAD"
    row = await services.pool.fetchrow("SELECT * FROM appointment WHERE id = $1", booked.appointment_id)
    assert row["status"] == "booked" and row["channel"] == "desk" and row["booked_by"] == clerk.user_id
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order) == "booked"
    event = await services.pool.fetchrow("SELECT * FROM order_event WHERE order_id = $1", order)
    assert event["event"] == "booked" and event["actor_role"] == "clerk" and event["terminal"] == "pytest"
    assert (
        await services.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = 'appointment.booked' AND aggregate_id = $1",
            str(booked.appointment_id),
        )
        == 1
    )
    await assert_redis_matches_postgres(services, day)


async def test_bundle_across_two_days_is_booked_together(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 2), future_day(services, 4)
    [(patient, [us, ct])] = await new_patients_with_orders(services.pool, 1, ["US-ABD-UPPER", "CT-HEAD"])
    s1 = (await open_slots(services, "US-ABD-UPPER", d1))[0]
    s2 = (await open_slots(services, "CT-HEAD", d2))[0]
    booked = await services.booking.book(clerk, patient, "desk", [BookItem(us, s1["id"]), BookItem(ct, s2["id"])])
    assert {b.order_id for b in booked} == {us, ct}
    await assert_redis_matches_postgres(services, d1)
    await assert_redis_matches_postgres(services, d2)


async def test_bundle_fails_whole_when_one_day_is_full(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 2), future_day(services, 5)
    [(patient, [us, ct])] = await new_patients_with_orders(services.pool, 1, ["US-ABD-UPPER", "CT-HEAD"])
    s1 = (await open_slots(services, "US-ABD-UPPER", d1))[0]
    s2 = (await open_slots(services, "CT-HEAD", d2))[0]
    assert await fill_slot(services, s2, "CT-HEAD") == s2["capacity"]
    with pytest.raises(SlotUnavailable) as err:
        await services.booking.book(clerk, patient, "desk", [BookItem(us, s1["id"]), BookItem(ct, s2["id"])])
    assert err.value.extra["reason"] == "FULL"
    assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE patient_id = $1", patient) == 0
    await assert_redis_matches_postgres(services, d1)
    await assert_redis_matches_postgres(services, d2)


async def test_cancel_returns_the_place_to_the_quota_it_came_from(services: Services) -> None:
    nurse = await actor_for(services, "nurse")
    day = future_day(services)
    slot = await services.pool.fetchrow(
        """SELECT s.* FROM slot s JOIN exam_capability c ON c.resource_id = s.resource_id
            WHERE c.exam_code = 'CT-HEAD' AND s.day = $1 AND (s.quotas ->> 'ward')::int > 0 LIMIT 1""",
        day,
    )
    [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"], "inpatient")
    [booked] = await services.booking.book(nurse, patient, "ward", [BookItem(order, slot["id"])])
    assert booked.pool == "ward"
    view = await services.store.read_slot(day, slot["id"])
    assert view is not None and view.quota_left["ward"] == slot["quotas"]["ward"] - 1
    await services.booking.cancel(nurse, booked.appointment_id, "ward", "患者出院")
    view = await services.store.read_slot(day, slot["id"])
    assert view is not None and view.quota_left["ward"] == slot["quotas"]["ward"] and view.booked == 0
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order) == "ordered"
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", slot["id"]) == 0
    await assert_redis_matches_postgres(services, day)
    with pytest.raises(AppointmentNotLive):
        await services.booking.cancel(nurse, booked.appointment_id, "ward", "again")


async def test_reschedule_same_day_takes_new_place_then_frees_old(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slots = await open_slots(services, "CT-HEAD", day)
    [first] = await services.booking.book(clerk, patient, "desk", [BookItem(order, slots[0]["id"])])
    # The next window on the same resource overlaps nothing, and the same exam is the one replaced.
    target = next(s for s in slots if s["starts_at"] >= first.ends_at)
    moved = await services.booking.reschedule(clerk, first.appointment_id, target["id"], "desk", "患者改期")
    assert moved.slot_id == target["id"] and moved.order_id == order
    old = await services.pool.fetchrow(
        "SELECT status, replaced_by FROM appointment WHERE id = $1", first.appointment_id
    )
    assert old["status"] == "rescheduled" and old["replaced_by"] == moved.appointment_id
    await assert_redis_matches_postgres(services, day)


async def test_reschedule_to_another_day(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    d1, d2 = future_day(services, 2), future_day(services, 6)
    [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["US-THYROID"])
    [first] = await services.booking.book(
        clerk, patient, "desk", [BookItem(order, (await open_slots(services, "US-THYROID", d1))[0]["id"])]
    )
    target = (await open_slots(services, "US-THYROID", d2))[0]
    await services.booking.reschedule(clerk, first.appointment_id, target["id"], "desk", "改约")
    await assert_redis_matches_postgres(services, d1)
    await assert_redis_matches_postgres(services, d2)


async def test_postgres_refuses_what_a_corrupted_redis_would_oversell(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    slot = (await open_slots(services, "ECG-REST", day))[0]
    assert await fill_slot(services, slot, "ECG-REST") == slot["capacity"]
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    # Corrupt the index: Redis believes the slot is empty again.
    key = services.keys.day(day).slot(slot["id"])
    await services.redis.hset(key, mapping={"b": 0, "o": slot["capacity"]})
    with pytest.raises(SlotUnavailable):
        await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot["id"])])
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", slot["id"]) == slot["capacity"]
    # The refused hold was released; a reconcile brings Redis back to PostgreSQL's truth.
    await services.reconciler.reconcile_day(day)
    await assert_redis_matches_postgres(services, day)


async def test_postgres_refuses_a_locked_slot_even_if_redis_missed_the_lock(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    admin = await actor_for(services, "admin")
    day = future_day(services)
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    await services.pool_admin.lock(
        admin, slot["resource_id"], slot["starts_at"], slot["ends_at"], None, "maintenance", "设备维护"
    )
    await services.store.unlock(day, [slot["id"]], None)  # Redis loses the lock
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    with pytest.raises(SlotLocked):
        await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot["id"])])
    await services.reconciler.reconcile_day(day)
    await assert_redis_matches_postgres(services, day)


async def test_lock_closes_windows_for_the_named_channels_and_unlock_reopens(services: Services) -> None:
    admin = await actor_for(services, "deptadmin")
    day = future_day(services)
    slot = (await open_slots(services, "CT-ABD-C", day))[0]
    report = await services.pool_admin.lock(
        admin,
        slot["resource_id"],
        slot["starts_at"],
        slot["ends_at"] + timedelta(minutes=30),
        ["self"],
        "expert_limit",
        "专家限号",
    )
    assert report.slots == 2
    patient = await actor_for(services, "patient")
    assert patient.patient_id is not None
    own_order = await services.pool.fetchval(
        "SELECT id FROM exam_order WHERE patient_id = $1 AND exam_code = 'CT-ABD-C'", patient.patient_id
    )
    with pytest.raises(SlotUnavailable) as err:
        await services.booking.book(patient, patient.patient_id, "self", [BookItem(own_order, slot["id"])])
    assert err.value.extra["reason"] == "LOCKED"
    clerk = await actor_for(services, "clerk")
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-ABD-C"])
    await services.booking.book(clerk, pid, "desk", [BookItem(oid, slot["id"])])  # the desk is not locked
    await services.pool_admin.unlock(admin, report.lock_id)
    view = await services.store.read_slot(day, slot["id"])
    assert view is not None and view.locked_channels == []
    await services.booking.book(patient, patient.patient_id, "self", [BookItem(own_order, slot["id"])])
    await assert_redis_matches_postgres(services, day)


async def test_service_validates_before_touching_anything(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    [(p1, [o1]), (_, [o2])] = await new_patients_with_orders(services.pool, 2, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    us_slot = (await open_slots(services, "US-THYROID", day))[0]
    with pytest.raises(ValidationFailed):
        await services.booking.book(clerk, p1, "desk", [BookItem(o2, slot["id"])])  # another patient's order
    with pytest.raises(ValidationFailed):
        await services.booking.book(clerk, p1, "desk", [BookItem(o1, us_slot["id"])])  # wrong resource
    with pytest.raises(NotFound):
        await services.booking.book(clerk, p1, "desk", [BookItem(o1, 10**12)])
    with pytest.raises(NotFound):
        await services.booking.book(clerk, p1, "desk", [BookItem(10**12, slot["id"])])
    with pytest.raises(ValidationFailed):
        await services.booking.book(clerk, p1, "nowhere", [BookItem(o1, slot["id"])])
    with pytest.raises(Forbidden):
        await services.booking.book(clerk, p1, "ward", [BookItem(o1, slot["id"])])  # clerk is not a ward nurse
    patient = await actor_for(services, "patient")
    with pytest.raises(Forbidden):
        await services.booking.book(patient, p1, "self", [BookItem(o1, slot["id"])])  # not his own
    assert await services.pool.fetchval("SELECT count(*) FROM appointment") == 0
    await assert_redis_matches_postgres(services, day)


async def test_regeneration_is_idempotent_and_never_touches_booked_slots(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services)
    assert (await services.pool_admin.generate()).inserted == 0  # the fixture generated the horizon already
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    slots = await open_slots(services, "ECG-REST", day)
    booked_slot, free_slot = (
        slots[0],
        next(s for s in slots if s["template_id"] == slots[0]["template_id"] and s["id"] != slots[0]["id"]),
    )
    await services.booking.book(clerk, pid, "desk", [BookItem(oid, booked_slot["id"])])
    # The department changes the template: more places per window.
    await services.pool.execute(
        "UPDATE slot_template SET capacity = capacity + 3 WHERE id = $1", booked_slot["template_id"]
    )
    report = await services.pool_admin.generate()
    assert report.inserted == 0 and report.updated > 0
    after = {
        r["id"]: r
        for r in await services.pool.fetch(
            "SELECT id, capacity, booked FROM slot WHERE id = ANY($1::bigint[])", [booked_slot["id"], free_slot["id"]]
        )
    }
    assert after[booked_slot["id"]]["capacity"] == booked_slot["capacity"]  # booked: untouched
    assert after[free_slot["id"]]["capacity"] == free_slot["capacity"] + 3
    again = await services.pool_admin.generate()
    assert again.inserted == 0 and again.updated == 0
    await assert_redis_matches_postgres(services, day)


async def test_a_patient_cancels_only_through_self_service(services: Services) -> None:
    patient = await actor_for(services, "patient")
    assert patient.patient_id is not None
    day = future_day(services)
    order = await services.pool.fetchval(
        "SELECT id FROM exam_order WHERE patient_id = $1 AND exam_code = 'ECG-REST'", patient.patient_id
    )
    slot = (await open_slots(services, "ECG-REST", day))[0]
    [booked] = await services.booking.book(patient, patient.patient_id, "self", [BookItem(order, slot["id"])])
    with pytest.raises(Forbidden):
        await services.booking.cancel(patient, booked.appointment_id, "desk", "冒充预约中心")
    await services.booking.cancel(patient, booked.appointment_id, "self", "时间冲突")
    await assert_redis_matches_postgres(services, day)
