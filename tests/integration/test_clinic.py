"""The clinic workstation: orders just written get today's plan, or a structured flag to send the
patient to the booking centre — today full, or the rules forbid today — with the earliest options.
The clock is real, so a working day ahead stands for "today" in the service-level cases."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from app.booking.service import BookItem
from app.services import Services
from tests.helpers import actor_for, future_day, lock_every_room_of, new_patients_with_orders, open_slots, token_for


async def test_orders_that_fit_today_get_a_plan_booked_in_one_step(services: Services) -> None:
    day = future_day(services, 1)
    doctor = await actor_for(services, "doctor")
    (pid, orders), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "US-THYROID"])
    answer = await services.clinic.orders_written(doctor, pid, None, visit_day=day)
    assert answer.same_day and not answer.go_to_booking_centre and answer.reason_code is None
    plan = answer.today_plan
    assert plan is not None and plan["days"] == [day.isoformat()] and not plan["unplaced"]
    assert sorted(i["order_id"] for i in plan["items"]) == sorted(orders)
    booked = await services.plans.book_plan(
        doctor, pid, "clinic", [BookItem(i["order_id"], i["slot_id"]) for i in plan["items"]]
    )
    assert len(booked) == 2
    channels = await services.pool.fetch("SELECT channel FROM appointment WHERE patient_id = $1", pid)
    assert [r["channel"] for r in channels] == ["clinic", "clinic"]


async def test_a_full_day_sends_the_patient_to_the_booking_centre_with_the_earliest_options(
    services: Services,
) -> None:
    day = future_day(services, 1)
    await lock_every_room_of(services, "ECG-REST", day)  # full that day, whatever the hour
    doctor = await actor_for(services, "doctor")
    (pid, (ecg, us)), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "US-THYROID"])
    answer = await services.clinic.orders_written(doctor, pid, None, visit_day=day)
    assert not answer.same_day and answer.go_to_booking_centre
    assert answer.reason_code == "today_full" and "预约中心" in (answer.reason or "")
    assert answer.today_plan is not None  # what still fits today: the ultrasound
    assert [i["order_id"] for i in answer.today_plan["items"]] == [us]
    assert answer.earliest_options and not answer.earliest_options[0]["unplaced"]
    best = answer.earliest_options[0]
    ecg_day = next(i["starts_at"][:10] for i in best["items"] if i["order_id"] == ecg)
    assert ecg_day != day.isoformat()


async def test_rules_that_forbid_today_are_named(services: Services) -> None:
    day = future_day(services, 1)
    clerk = await actor_for(services, "clerk")
    doctor = await actor_for(services, "doctor")
    (pid, (barium, ct)), *_ = await new_patients_with_orders(services.pool, 1, ["DX-BARIUM", "CT-ABD-C"])
    slot = (await open_slots(services, "DX-BARIUM", day, limit=1))[0]
    await services.booking.book(clerk, pid, "desk", [BookItem(barium, slot["id"])])
    answer = await services.clinic.orders_written(doctor, pid, [ct], visit_day=day)
    assert answer.go_to_booking_centre and answer.reason_code == "rules_forbid_today"
    assert answer.rule_ids and "钡" in (answer.reason or "")
    first = answer.earliest_options[0]["items"][0]["starts_at"]
    assert datetime.fromisoformat(first) >= datetime.fromisoformat(slot["ends_at"].isoformat()) + timedelta(days=7)


async def test_the_workstation_api_answers_with_a_structured_flag_and_checks_its_callers(services: Services) -> None:
    from app.main import create_app

    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    (pid, _), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        doctor = {"authorization": f"Bearer {await token_for(services, 'doctor')}"}
        r = await c.post("/api/v1/clinic/orders-written", json={"patient_id": pid}, headers=doctor)
        assert r.status_code == 200, r.text
        body = r.json()
        # Whatever the hour: either today's plan or the flag with a reason code and options.
        assert body["same_day"] != body["go_to_booking_centre"]
        if body["go_to_booking_centre"]:
            assert body["reason_code"] in ("today_full", "rules_forbid_today", "nothing_in_horizon")
            assert body["reason"] and body["earliest_options"]
        clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        r = await c.post("/api/v1/clinic/orders-written", json={"patient_id": pid}, headers=clerk)
        assert r.status_code == 403
        r = await c.post("/api/v1/clinic/orders-written", json={"patient_id": "x"}, headers=doctor)
        assert r.status_code == 422 and r.json()["code"] == "validation_failed"
        r = await c.post("/api/v1/clinic/book", json={"patient_id": pid, "items": []}, headers=doctor)
        assert r.status_code == 422
