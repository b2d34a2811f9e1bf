"""The no-show sweep and the credit rule, with the clock under the test's control: appointments not
checked in by slot end + grace become no-shows once, their places return (PostgreSQL and Redis
agree), and the third no-show in 90 days suspends self-service booking — not the desk's; inpatient
no-shows do not count; an authorised role lifts it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.booking.service import BookItem
from app.errors import PatientSuspended
from app.security.actor import Actor
from app.services import Services
from tests.helpers import actor_for, assert_redis_matches_postgres, future_day, new_patients_with_orders, open_slots


async def _booked(services: Services, day: object, exam: str, patient_class: str = "outpatient") -> dict[str, object]:
    clerk = await actor_for(services, "clerk")
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, [exam], patient_class=patient_class)
    await services.pool.execute(  # MRI needs the implants checked first (rule R12)
        "INSERT INTO patient_fact (patient_id, fact, value, source) VALUES ($1, 'implants_declared', 'true', 'desk')",
        pid,
    )
    slot = (await open_slots(services, exam, day))[0]  # type: ignore[arg-type]
    (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
    return {"patient_id": pid, "order_id": order, "appointment_id": appt.appointment_id, "slot": slot}


async def _give_orders(services: Services, patient_id: int, exams: list[str]) -> list[int]:
    rows = await services.pool.fetch(
        """INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           SELECT 'NS-' || $1::bigint || '-' || e, 'h1', $1::bigint, e, 'GI', '测试医生', 'outpatient'
             FROM unnest($2::text[]) AS e
           RETURNING id""",
        patient_id,
        exams,
    )
    return [int(r["id"]) for r in rows]


async def test_a_missed_appointment_becomes_a_no_show_after_its_grace_once_and_its_place_returns(
    services: Services,
) -> None:
    day = future_day(services, 2)
    ct = await _booked(services, day, "CT-HEAD")
    mr = await _booked(services, day, "MR-HEAD")
    ct_end, mr_end = ct["slot"]["ends_at"], mr["slot"]["ends_at"]  # type: ignore[index]
    later = max(ct_end, mr_end)
    booked_before = await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", ct["slot"]["id"])  # type: ignore[index]

    report = await services.orders.sweep_no_shows(min(ct_end, mr_end) + timedelta(minutes=14))
    assert report.marked == 0
    # MRI's grace is 15 minutes, the others' 30 (DOMAIN.md).
    report = await services.orders.sweep_no_shows(mr_end + timedelta(minutes=16))
    marked = await services.pool.fetch(
        "SELECT id FROM appointment WHERE status = 'no_show' AND id = ANY($1::bigint[])",
        [ct["appointment_id"], mr["appointment_id"]],
    )
    expected = {mr["appointment_id"]} | (
        {ct["appointment_id"]} if ct_end + timedelta(minutes=30) < mr_end + timedelta(minutes=16) else set()
    )
    assert {r["id"] for r in marked} == expected
    await services.orders.sweep_no_shows(later + timedelta(minutes=31))
    again = await services.orders.sweep_no_shows(later + timedelta(minutes=40))
    assert again.marked == 0  # once
    for b in (ct, mr):
        assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", b["order_id"]) == "no_show"
        events = await services.pool.fetch(
            "SELECT event, from_status, to_status, actor_role FROM order_event WHERE order_id = $1 ORDER BY id",
            b["order_id"],
        )
        assert [(e["event"], e["to_status"]) for e in events] == [("booked", "booked"), ("no_show", "no_show")]
        assert events[-1]["actor_role"] == "system"
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", ct["slot"]["id"]) == booked_before - 1  # type: ignore[index]
    await assert_redis_matches_postgres(services, day)
    # A no-show order can be booked again.
    clerk = await actor_for(services, "clerk")
    slot = (await open_slots(services, "CT-HEAD", future_day(services, 3)))[0]
    await services.booking.book(clerk, int(ct["patient_id"]), "desk", [BookItem(int(ct["order_id"]), int(slot["id"]))])  # type: ignore[call-overload]


async def test_three_no_shows_in_ninety_days_suspend_self_service_booking_only_until_lifted(
    services: Services,
) -> None:
    day = future_day(services, 2)
    clerk, head = await actor_for(services, "clerk"), await actor_for(services, "depthead")
    first = await _booked(services, day, "DX-CHEST")
    pid = int(first["patient_id"])  # type: ignore[call-overload]
    exams = ["ECG-REST", "DX-KNEE", "US-THYROID", "DX-LSPINE"]
    orders = await _give_orders(services, pid, exams)
    # Two more outpatient bookings of the same patient, and an inpatient one that must not count.
    not_before = first["slot"]["ends_at"]  # type: ignore[index]
    for order, exam in zip(orders[:2], exams[:2], strict=True):
        # Two hours apart: no travel-gap or ordering rule gets in the way.
        slots = await open_slots(services, exam, day, limit=400)
        slot = next(s for s in slots if s["starts_at"] >= not_before + timedelta(hours=2))
        await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
        not_before = slot["ends_at"]
    inpatient = await _booked(services, day, "DX-CHEST", patient_class="inpatient")
    end = await services.pool.fetchval(
        "SELECT max(ends_at) FROM appointment WHERE patient_id = ANY($1::bigint[])", [pid, inpatient["patient_id"]]
    )
    now = end + timedelta(minutes=31)
    services.credit.clock = services.orders.clock = now.timestamp  # the hospital's clock, that evening
    report = await services.orders.sweep_no_shows(now)
    assert report.marked >= 4 and report.suspended == 1
    assert await services.credit.suspension(int(inpatient["patient_id"])) is None  # type: ignore[call-overload]
    suspension = await services.credit.suspension(pid)
    assert suspension is not None and list(suspension["channels"]) == ["self"]
    assert suspension["ends_at"] - suspension["starts_at"] == timedelta(days=90)
    notice = await services.pool.fetchval(
        "SELECT payload ->> 'message' FROM outbox WHERE topic = 'patient.notice' AND aggregate_id = $1", str(pid)
    )
    assert "暂停" in notice and "预约中心" in notice

    me = Actor(user_id=None, username=f"p:{pid}", roles=frozenset({"patient"}), patient_id=pid)
    later_day = future_day(services, 4)
    slot = (await open_slots(services, exams[2], later_day))[0]
    with pytest.raises(PatientSuspended) as refused:
        await services.booking.book(me, pid, "self", [BookItem(orders[2], int(slot["id"]))])
    assert "暂停" in refused.value.message and "预约中心" in refused.value.message
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", orders[2]) == "ordered"
    # The desk still books for the patient.
    await services.booking.book(clerk, pid, "desk", [BookItem(orders[2], int(slot["id"]))])
    # Lifted with a reason by the department head: self-service books again.
    assert await services.orders.lift_suspension(head, pid, "患者因急病未能到检，已核实") == 1
    slot = (await open_slots(services, exams[3], future_day(services, 5)))[0]
    await services.booking.book(me, pid, "self", [BookItem(orders[3], int(slot["id"]))])
