"""加号: an authorised admin adds places to a full slot with a reason; they go to the open pool at
once; others are refused; regeneration keeps them."""

from __future__ import annotations

import httpx

from app.booking.service import BookItem
from app.main import create_app
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    fill_slot,
    future_day,
    new_patients_with_orders,
    open_slots,
    token_for,
)


async def test_an_admin_adds_a_place_to_a_full_slot_and_it_can_be_booked(services: Services) -> None:
    day = future_day(services)
    slot = (await open_slots(services, "ECG-REST", day, limit=1))[0]
    await fill_slot(services, slot, "ECG-REST")
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        path = f"/api/v1/admin/slots/{slot['id']}/overbook"
        clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
        assert (await c.post(path, json={"places": 1, "reason": "急需"}, headers=clerk)).status_code == 403
        admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
        r = await c.post(path, json={"places": 1, "reason": "  "}, headers=admin)
        assert r.status_code == 422
        r = await c.post(path, json={"places": 9, "reason": "急需"}, headers=admin)
        assert r.status_code == 422
        r = await c.post(path, json={"places": 1, "reason": "患者病情急需，主任同意加号"}, headers=admin)
        assert r.status_code == 200 and r.json()["capacity"] == slot["capacity"] + 1, r.text
    clerk_actor = await actor_for(services, "clerk")
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    await services.booking.book(clerk_actor, pid, "desk", [BookItem(order, slot["id"])])
    await services.pool_admin.generate()
    row = await services.pool.fetchrow("SELECT capacity, booked, overbooked FROM slot WHERE id = $1", slot["id"])
    assert (row["capacity"], row["booked"], row["overbooked"]) == (slot["capacity"] + 1, slot["capacity"] + 1, 1)
    logged = await services.pool.fetchval("SELECT reason FROM slot_overbook WHERE slot_id = $1", slot["id"])
    assert logged == "患者病情急需，主任同意加号"


async def test_editing_a_template_changes_the_unbooked_slots_and_checks_its_input(services: Services) -> None:
    day = future_day(services)
    slot = (await open_slots(services, "ECG-REST", day, limit=1))[0]
    template_id = slot["template_id"]
    clerk_actor = await actor_for(services, "clerk")
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["ECG-REST"])
    await services.booking.book(clerk_actor, pid, "desk", [BookItem(order, slot["id"])])
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hy.test") as c:
        admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
        path = f"/api/v1/admin/templates/{template_id}"
        for bad in ({"capacity": 2, "quotas": {"ward": 3}}, {"capacity": 5, "quotas": {"vip": 1}}):
            r = await c.put(path, json=bad, headers=admin)
            assert r.status_code == 422, (bad, r.text)
        dept_admin = {"authorization": f"Bearer {await token_for(services, 'deptadmin')}"}  # RAD's admin
        assert (await c.put(path, json={"capacity": 9, "quotas": {}}, headers=dept_admin)).status_code == 403
        r = await c.put(path, json={"capacity": 9, "quotas": {"ward": 2}}, headers=admin)
        assert r.status_code == 200 and r.json()["slots_updated"] > 0, r.text
        listed = await c.get("/api/v1/admin/templates", params={"resource_id": slot["resource_id"]}, headers=admin)
        assert any(t["id"] == template_id and t["capacity"] == 9 for t in listed.json())
    same = await services.pool.fetch(
        "SELECT id, capacity, booked FROM slot WHERE template_id = $1 AND day >= $2", template_id, day
    )
    assert all(r["capacity"] == (slot["capacity"] if r["booked"] else 9) for r in same)  # booked keep theirs
    await assert_redis_matches_postgres(services, day)
