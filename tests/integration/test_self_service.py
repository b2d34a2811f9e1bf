"""Self-service identity: the ID number's checksum, then the patient index; a short patient session
that reaches only that patient's records; every identification audited."""

from __future__ import annotations

import httpx
import pytest

from app.demo.data import PATIENTS
from app.main import create_app
from app.services import Services
from tests.helpers import token_for


async def test_identity_check_gives_a_patient_session_for_his_own_records_only(services: Services) -> None:
    who = PATIENTS[3]
    assert who.id_number
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        bad = who.id_number[:-1] + ("0" if who.id_number[-1] != "0" else "1")  # checksum broken
        r = await c.post("/api/v1/self/identify", json={"id_number": bad, "name": who.name})
        assert r.status_code == 422 and "身份证号码不正确" in r.json()["title"]
        r = await c.post("/api/v1/self/identify", json={"id_number": who.id_number, "name": who.name + "x"})
        assert r.status_code == 401 and "人工服务窗口" in r.json()["title"]
        r = await c.post("/api/v1/self/identify", json={"id_number": who.id_number.lower(), "name": f" {who.name} "})
        assert r.status_code == 200, r.text
        body = r.json()
        assert "*" in body["name"] and body["name"] != who.name
        me = {"authorization": f"Bearer {body['token']}"}
        pid = body["patient_id"]
        assert (await c.get(f"/api/v1/patients/{pid}/orders", headers=me)).status_code == 200
        assert (await c.get(f"/api/v1/patients/{pid + 1}/orders", headers=me)).status_code == 403
        # No password reaches that account.
        r = await c.post("/api/v1/auth/login", json={"username": f"p:{pid}", "password": "!"})
        assert r.status_code == 401
    audited = await services.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'identify' AND patient_id = $1", pid
    )
    assert audited == 1


async def test_the_desk_finds_a_patient_by_card_or_id_number(services: Services) -> None:
    who = PATIENTS[5]
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        by_card = (await c.post("/api/v1/patients/lookup", json={"card": who.mrn}, headers=clerk)).json()
        by_id = (await c.post("/api/v1/patients/lookup", json={"card": who.id_number}, headers=clerk)).json()
        assert by_card["id"] == by_id["id"] and by_card["mrn"] == who.mrn
        assert who.name not in str(by_card) and who.id_number not in str(by_card)  # masked
        r = await c.post("/api/v1/patients/lookup", json={"card": "NO-SUCH-CARD"}, headers=clerk)
        assert r.status_code == 404 and "未找到" in r.json()["title"]
        patient = {"authorization": f"Bearer {await token_for(services, 'patient')}"}
        assert (await c.post("/api/v1/patients/lookup", json={"card": who.mrn}, headers=patient)).status_code == 403


async def test_self_service_changes_stop_before_the_exam_the_booking_centre_can_still(services: Services) -> None:
    from app.booking.service import BookItem
    from app.errors import ValidationFailed
    from tests.helpers import actor_for, future_day, open_slots

    who = PATIENTS[3]
    r = await services.sessions.patient_session("h1", await _patient_id(services, who.mrn), who.name, "kiosk", "", 900)
    me = r.actor
    order = await services.pool.fetchval(
        "SELECT id FROM exam_order WHERE patient_id = $1 AND status = 'ordered' ORDER BY id LIMIT 1", me.patient_id
    )
    code = await services.pool.fetchval("SELECT exam_code FROM exam_order WHERE id = $1", order)
    slot = (await open_slots(services, code, future_day(services, 1), limit=1))[0]
    (appt,) = await services.booking.book(me, me.patient_id, "self", [BookItem(order, slot["id"])])
    services.booking.self_change_cutoff_s = 10 * 86400.0  # the exam is now "too close" for self-service
    try:
        with pytest.raises(ValidationFailed) as refused:
            await services.booking.cancel(me, appt.appointment_id, "self", "患者自助取消")
        assert "不能自助取消或改约" in refused.value.message
        clerk = await actor_for(services, "clerk")
        await services.booking.cancel(clerk, appt.appointment_id, "desk", "患者来电取消")
    finally:
        services.booking.self_change_cutoff_s = 7200.0


async def _patient_id(services: Services, mrn: str) -> int:
    return int(await services.pool.fetchval("SELECT id FROM patient WHERE mrn = $1", mrn))


async def test_a_patient_reschedules_his_own_appointment_over_http_until_the_change_window(
    services: Services,
) -> None:
    """What /self's 改约 calls: availability on the self channel, then reschedule; inside the
    change window the refusal comes in Chinese and nothing moves."""
    from tests.helpers import future_day

    who = PATIENTS[3]
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        r = await c.post("/api/v1/self/identify", json={"id_number": who.id_number, "name": who.name})
        me = {"authorization": f"Bearer {r.json()['token']}"}
        pid = r.json()["patient_id"]
        order = await services.pool.fetchrow(
            "SELECT id, exam_code FROM exam_order WHERE patient_id = $1 AND status = 'ordered' ORDER BY id LIMIT 1", pid
        )
        day, later = future_day(services, 1), future_day(services, 3)

        async def offered(on: object) -> list[dict[str, object]]:
            q = {"exam": order["exam_code"], "date_from": str(on), "channel": "self", "only_open": "true"}
            r = await c.get("/api/v1/availability", params=q, headers=me)
            assert r.status_code == 200, r.text
            return [s for s in r.json()["slots"] if s["available"] > 0]

        first = (await offered(day))[0]
        r = await c.post(
            "/api/v1/appointments",
            json={
                "patient_id": pid,
                "channel": "self",
                "items": [{"order_id": order["id"], "slot_id": first["slot_id"]}],
            },
            headers=me,
        )
        assert r.status_code == 201, r.text
        appt = r.json()["appointments"][0]["appointment_id"]
        target = (await offered(later))[0]
        body = {"slot_id": target["slot_id"], "channel": "self", "reason": "患者自助改约"}
        r = await c.post(f"/api/v1/appointments/{appt}/reschedule", json=body, headers=me)
        assert r.status_code == 200, r.text
        moved = r.json()["appointment"]
        assert r.json()["previous_appointment_id"] == appt and moved["slot_id"] == target["slot_id"]
        mine = (await c.get(f"/api/v1/patients/{pid}/appointments", headers=me)).json()["appointments"]
        now = next(a for a in mine if a["id"] == moved["appointment_id"])
        assert now["status"] == "booked" and now["prep_text"]  # the page shows the preparation from here
        assert next(a for a in mine if a["id"] == appt)["status"] == "rescheduled"

        # Someone else's appointment is out of reach.
        other = await services.pool.fetchval(
            "SELECT id FROM appointment WHERE patient_id <> $1 AND status = 'booked' LIMIT 1", pid
        )
        if other is not None:
            r = await c.post(f"/api/v1/appointments/{other}/reschedule", json=body, headers=me)
            assert r.status_code == 403

        services.booking.self_change_cutoff_s = 30 * 86400.0
        try:
            back = {"slot_id": first["slot_id"], "channel": "self", "reason": "患者自助改约"}
            r = await c.post(f"/api/v1/appointments/{moved['appointment_id']}/reschedule", json=back, headers=me)
        finally:
            services.booking.self_change_cutoff_s = 7200.0
        assert r.status_code == 422 and "不能自助取消或改约" in r.json()["title"], r.text
    still = await services.pool.fetchval("SELECT status FROM appointment WHERE id = $1", moved["appointment_id"])
    assert still == "booked"


async def test_a_patient_suspended_for_no_shows_is_told_at_the_kiosk_and_refused_with_where_to_go(
    services: Services,
) -> None:
    from tests.helpers import future_day, open_slots

    who = PATIENTS[4]
    pid = await services.pool.fetchval("SELECT id FROM patient WHERE mrn = $1", who.mrn)
    # What the no-show sweep writes on the third no-show (tests/integration/test_no_show.py runs the sweep).
    await services.pool.execute(
        """INSERT INTO patient_suspension (patient_id, channels, starts_at, ends_at, reason)
           VALUES ($1, '{self}', now(), now() + interval '90 days', '90天内爽约3次')""",
        pid,
    )
    order = await services.pool.fetchval(
        """INSERT INTO exam_order (order_no, hospital_id, patient_id, exam_code, ordering_department_id,
                                   ordering_doctor, patient_class)
           VALUES ('SUSP-' || $1::bigint, 'h1', $1, 'DX-CHEST', 'GI', '测试医生', 'outpatient') RETURNING id""",
        pid,
    )
    slot = (await open_slots(services, "DX-CHEST", future_day(services, 3)))[0]
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        r = await c.post("/api/v1/self/identify", json={"id_number": who.id_number, "name": who.name})
        body = r.json()
        assert r.status_code == 200 and body["suspended_until"] is not None
        assert "暂停" in body["suspended_message"] and "预约中心" in body["suspended_message"]
        me = {"authorization": f"Bearer {body['token']}"}
        r = await c.post(
            "/api/v1/appointments",
            json={"patient_id": pid, "channel": "self", "items": [{"order_id": order, "slot_id": slot["id"]}]},
            headers=me,
        )
        assert r.status_code == 403 and r.json()["code"] == "patient_suspended"
        assert "预约中心" in r.json()["title"] and r.json()["until"]
    assert await services.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", order) == "ordered"
