"""The HTTP API: happy paths, and every kind of bad input answered with problem+json that changes
nothing and is never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest

from app.demo.data import DEMO_PASSWORD
from app.main import create_app
from app.services import Services
from tests.helpers import future_day, new_patients_with_orders, open_slots, token_for


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services  # ASGITransport does not run the lifespan
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


async def auth(services: Services, username: str) -> dict[str, str]:
    return {"authorization": f"Bearer {await token_for(services, username)}"}


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["title"] and any("\u4e00" <= ch <= "\u9fff" for ch in body["title"]), body  # Chinese message
    assert "Traceback" not in r.text
    return body


async def counts(services: Services) -> tuple[int, int, int]:
    row = await services.pool.fetchrow(
        "SELECT (SELECT count(*) FROM appointment), (SELECT count(*) FROM order_event), (SELECT count(*) FROM outbox)"
    )
    return row[0], row[1], row[2]


async def test_health_ready_ping_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/ping")).json() == {"pong": True}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    book = doc["paths"]["/api/v1/appointments"]["post"]
    assert "requestBody" in book and book["x-roles"]
    assert "/api/v1/appointments/{appointment_id}/cancel" in doc["paths"]
    page = await client.get("/")
    assert page.status_code == 200 and "一站式检查预约平台" in page.text


async def test_login_me_logout(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/login", json={"username": "doctor", "password": "Huiyue@2026"})
    assert r.status_code == 200
    headers = {"authorization": f"Bearer {r.json()['token']}"}
    me = (await client.get("/api/v1/auth/me", headers=headers)).json()
    assert me["username"] == "doctor" and me["roles"] == ["doctor"]
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 200
    assert_problem(await client.get("/api/v1/auth/me", headers=headers), 401, "not_authenticated")
    assert_problem(
        await client.post("/api/v1/auth/login", json={"username": "doctor", "password": "wrong"}),
        401,
        "not_authenticated",
    )
    assert_problem(
        await client.post("/api/v1/auth/login", json={"username": "nobody", "password": "x"}),
        401,
        "not_authenticated",
    )


async def test_catalogue_and_availability(client: httpx.AsyncClient, services: Services) -> None:
    h = await auth(services, "doctor")
    exams = (await client.get("/api/v1/exam-types", headers=h)).json()
    assert len(exams) >= 38 and {"code", "name", "prep_text", "duration_min"} <= set(exams[0])
    assert all(e["modality"] == "MR" for e in (await client.get("/api/v1/exam-types?modality=MR", headers=h)).json())
    resources = (await client.get("/api/v1/resources", headers=h)).json()
    assert sum(1 for r in resources if r["modality"] == "CT") >= 3
    day = future_day(services)
    r = await client.get(f"/api/v1/availability?exam=CT-HEAD&date_from={day}&channel=clinic", headers=h)
    assert r.status_code == 200
    slots = r.json()["slots"]
    assert slots and all(s["day"] == day.isoformat() for s in slots)
    assert slots[0]["starts_at"].endswith("+08:00")
    assert {s["resource_id"] for s in slots} <= set(services.catalogue.capable["CT-HEAD"])


async def test_book_cancel_reschedule_over_http(client: httpx.AsyncClient, services: Services) -> None:
    h = await auth(services, "clerk")
    day = future_day(services)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["US-THYROID"])
    slots = await open_slots(services, "US-THYROID", day)
    r = await client.post(
        "/api/v1/appointments",
        headers=h,
        json={"patient_id": pid, "channel": "desk", "items": [{"order_id": oid, "slot_id": slots[0]["id"]}]},
    )
    assert r.status_code == 201, r.text
    appt = r.json()["appointments"][0]
    assert appt["starts_at"].endswith("+08:00")
    target = next(s for s in slots if s["starts_at"] >= slots[0]["ends_at"])
    r = await client.post(
        f"/api/v1/appointments/{appt['appointment_id']}/reschedule",
        headers=h,
        json={"slot_id": target["id"], "channel": "desk", "reason": "患者要求改期"},
    )
    assert r.status_code == 200, r.text
    new_id = r.json()["appointment"]["appointment_id"]
    listed = (await client.get(f"/api/v1/patients/{pid}/appointments", headers=h)).json()
    assert sorted(a["status"] for a in listed["appointments"]) == ["booked", "rescheduled"]
    assert listed["patient"]["name_masked"].startswith("测")
    r = await client.post(
        f"/api/v1/appointments/{new_id}/cancel", headers=h, json={"channel": "desk", "reason": "取消"}
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    audited = await services.pool.fetchval("SELECT count(*) FROM audit_log WHERE patient_id = $1", pid)
    assert audited >= 1


BAD_BOOKINGS: list[tuple[str, Any, int, str]] = [
    ("malformed json", b'{"patient_id": 1, "channel": "desk", "items": [', 400, "bad_request"),
    ("empty body", b"", 400, "bad_request"),
    ("not an object", b"[1, 2]", 422, "validation_failed"),
    (
        "wrong type",
        {"patient_id": "one", "channel": "desk", "items": [{"order_id": 1, "slot_id": 1}]},
        422,
        "validation_failed",
    ),
    ("missing field", {"channel": "desk", "items": [{"order_id": 1, "slot_id": 1}]}, 422, "validation_failed"),
    ("unknown field", {"patient_id": 1, "channel": "desk", "items": [], "admin": True}, 422, "validation_failed"),
    ("empty items", {"patient_id": 1, "channel": "desk", "items": []}, 422, "validation_failed"),
    (
        "negative id",
        {"patient_id": -5, "channel": "desk", "items": [{"order_id": 1, "slot_id": 1}]},
        422,
        "validation_failed",
    ),
    (
        "huge id",
        {"patient_id": 10**30, "channel": "desk", "items": [{"order_id": 1, "slot_id": 1}]},
        422,
        "validation_failed",
    ),
    (
        "unknown channel",
        {"patient_id": 1, "channel": "fax", "items": [{"order_id": 1, "slot_id": 1}]},
        422,
        "validation_failed",
    ),
]


@pytest.mark.parametrize(("case", "payload", "status", "code"), BAD_BOOKINGS, ids=[c[0] for c in BAD_BOOKINGS])
async def test_bad_booking_input_gets_a_problem_and_changes_nothing(
    client: httpx.AsyncClient, services: Services, case: str, payload: Any, status: int, code: str
) -> None:
    h = await auth(services, "clerk")
    before = await counts(services)
    kwargs: dict[str, Any] = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    r = await client.post("/api/v1/appointments", headers={**h, "content-type": "application/json"}, **kwargs)
    assert_problem(r, status, code)
    assert await counts(services) == before


async def test_unknown_slot_and_ids_answer_404(client: httpx.AsyncClient, services: Services) -> None:
    h = await auth(services, "clerk")
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    before = await counts(services)
    r = await client.post(
        "/api/v1/appointments",
        headers=h,
        json={"patient_id": pid, "channel": "desk", "items": [{"order_id": oid, "slot_id": 987654321}]},
    )
    assert_problem(r, 404, "not_found")
    slot = (await open_slots(services, "CT-HEAD", future_day(services)))[0]
    r = await client.post(
        "/api/v1/appointments",
        headers=h,
        json={"patient_id": pid, "channel": "desk", "items": [{"order_id": 987654321, "slot_id": slot["id"]}]},
    )
    assert_problem(r, 404, "not_found")
    assert_problem(
        await client.post("/api/v1/appointments/987654/cancel", headers=h, json={"channel": "desk", "reason": "x"}),
        404,
        "not_found",
    )
    assert_problem(await client.get("/api/v1/patients/987654/orders", headers=h), 404, "not_found")
    assert_problem(await client.get("/api/v1/appointments/abc", headers=h), 404, "not_found")
    assert_problem(await client.get("/api/v1/no-such-route", headers=h), 404, "not_found")
    assert_problem(await client.delete("/api/v1/appointments", headers=h), 405, "method_not_allowed")
    assert await counts(services) == before


async def test_availability_rejects_past_dates_bad_dates_and_unknown_exams(
    client: httpx.AsyncClient, services: Services
) -> None:
    h = await auth(services, "clerk")
    today = services.reconciler.today()
    past = today - timedelta(days=1)
    assert_problem(
        await client.get(f"/api/v1/availability?exam=CT-HEAD&date_from={past}", headers=h), 422, "validation_failed"
    )
    assert_problem(
        await client.get("/api/v1/availability?exam=CT-HEAD&date_from=2026-13-45", headers=h), 422, "validation_failed"
    )
    assert_problem(await client.get(f"/api/v1/availability?exam=NOPE&date_from={today}", headers=h), 404, "not_found")
    assert_problem(await client.get(f"/api/v1/availability?date_from={today}", headers=h), 422, "validation_failed")
    assert_problem(
        await client.get(f"/api/v1/availability?exam=CT-HEAD&date_from={today}&channel=fax", headers=h),
        422,
        "validation_failed",
    )
    assert_problem(
        await client.get(
            f"/api/v1/availability?exam=CT-HEAD&date_from={today}&date_to={today + timedelta(days=40)}", headers=h
        ),
        422,
        "validation_failed",
    )
    assert_problem(
        await client.get(f"/api/v1/availability?exam=CT-HEAD&date_from={today}&bogus=1", headers=h),
        422,
        "validation_failed",
    )


async def test_roles_are_enforced(client: httpx.AsyncClient, services: Services) -> None:
    day = future_day(services)
    [(pid, [oid])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", day))[0]
    body = {"patient_id": pid, "channel": "desk", "items": [{"order_id": oid, "slot_id": slot["id"]}]}
    before = await counts(services)
    assert_problem(await client.post("/api/v1/appointments", json=body), 401, "not_authenticated")
    assert_problem(
        await client.post("/api/v1/appointments", json=body, headers={"authorization": "Bearer forged"}),
        401,
        "not_authenticated",
    )
    assert_problem(
        await client.post("/api/v1/appointments", json=body, headers=await auth(services, "tech")), 403, "forbidden"
    )
    assert_problem(
        await client.post("/api/v1/appointments", json=body, headers=await auth(services, "display")), 403, "forbidden"
    )
    assert_problem(
        await client.post("/api/v1/admin/reconcile", json={}, headers=await auth(services, "clerk")), 403, "forbidden"
    )
    # A patient account sees only its own records.
    assert_problem(
        await client.get(f"/api/v1/patients/{pid}/orders", headers=await auth(services, "patient")), 403, "forbidden"
    )
    # A department admin manages only his department's resources.
    lock = {
        "resource_id": "US01",
        "starts_at": f"{day}T08:00:00+08:00",
        "ends_at": f"{day}T09:00:00+08:00",
        "kind": "maintenance",
        "reason": "设备维护",
    }
    assert_problem(
        await client.post("/api/v1/admin/locks", json=lock, headers=await auth(services, "deptadmin")), 403, "forbidden"
    )
    assert await counts(services) == before


async def test_admin_lock_reconcile_generate_over_http(client: httpx.AsyncClient, services: Services) -> None:
    h = await auth(services, "admin")
    day = future_day(services)
    lock = {
        "resource_id": "CT1",
        "starts_at": f"{day}T08:00:00+08:00",
        "ends_at": f"{day}T09:00:00+08:00",
        "kind": "maintenance",
        "reason": "设备维护",
    }
    r = await client.post("/api/v1/admin/locks", json=lock, headers=h)
    assert r.status_code == 201 and r.json()["slots"] == 2
    lock_id = r.json()["lock_id"]
    avail = (await client.get(f"/api/v1/availability?resource=CT1&date_from={day}", headers=h)).json()["slots"]
    locked = {s["starts_at"][11:16] for s in avail if s["locked"]}
    assert locked == {"08:00", "08:30"}
    assert (await client.post(f"/api/v1/admin/locks/{lock_id}/release", headers=h)).status_code == 200
    assert_problem(await client.post(f"/api/v1/admin/locks/{lock_id}/release", headers=h), 404, "not_found")
    naive = {**lock, "starts_at": f"{day}T08:00:00"}
    assert_problem(await client.post("/api/v1/admin/locks", json=naive, headers=h), 422, "validation_failed")
    backwards = {**lock, "ends_at": f"{day}T07:00:00+08:00"}
    assert_problem(await client.post("/api/v1/admin/locks", json=backwards, headers=h), 422, "validation_failed")
    r = await client.post("/api/v1/admin/reconcile", json={"day": str(day)}, headers=h)
    assert r.status_code == 200 and r.json()["days"][str(day)] > 0
    r = await client.post("/api/v1/admin/slots/generate", json={}, headers=h)
    assert r.status_code == 200 and r.json()["inserted"] == 0  # idempotent: the horizon already exists


async def test_the_landing_page_names_the_demo_password_only_on_a_demo_server(
    services: Services, client: httpx.AsyncClient
) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and "各岗位页面" in page.text
    assert DEMO_PASSWORD not in page.text and "演示账号" not in page.text
    server = msgspec.structs.replace(services.settings.server, demo=True)  # as `serve` without --no-demo
    app = create_app(msgspec.structs.replace(services.settings, server=server), "", "", services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        shown = await c.get("/")
    assert shown.status_code == 200 and f"演示账号密码均为 {DEMO_PASSWORD}" in shown.text
