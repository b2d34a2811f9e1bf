"""Smart booking over HTTP: propose plans for the demo patient, book one, re-plan when a slot is taken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.services import Services
from tests.helpers import assert_redis_matches_postgres, future_day, new_patients_with_orders, token_for


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


async def headers(services: Services, user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {await token_for(services, user)}"}


async def test_demo_patient_gets_one_morning_in_the_right_order_and_can_book_it(
    client: httpx.AsyncClient, services: Services
) -> None:
    h = await headers(services, "clerk")
    earliest = future_day(services, 1)
    r = await client.post(
        "/api/v1/plans/propose", headers=h, json={"patient_id": 1, "channel": "desk", "earliest": str(earliest)}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plans"], body
    best = body["plans"][0]
    codes = [i["exam_code"] for i in best["items"]]
    assert set(codes) == {"US-ABD-UPPER", "ES-GASTRO-PAINLESS", "CT-ABD-C", "ECG-REST"}
    assert best["unplaced"] == []
    assert best["visit_days"] == 1
    assert codes.index("US-ABD-UPPER") < codes.index("ES-GASTRO-PAINLESS")  # ultrasound before gastroscopy
    assert codes.index("ECG-REST") == len(codes) - 1  # fasting exams before the non-fasting ECG
    assert all(i["starts_at"][11:16] <= "11:30" for i in best["items"] if i["exam_code"] != "ECG-REST")
    assert any("陪同" in p for p in best["preparation"])  # painless endoscopy: escort notice
    assert best["explanation"] and all(isinstance(s, str) for s in best["explanation"])
    scores = [(p["visit_days"], p["minutes_in_hospital"], p["completes_at"]) for p in body["plans"]]
    assert scores == sorted(scores)

    items = [{"order_id": i["order_id"], "slot_id": i["slot_id"]} for i in best["items"]]
    r = await client.post("/api/v1/plans/book", headers=h, json={"patient_id": 1, "channel": "desk", "items": items})
    assert r.status_code == 201, r.text
    assert len(r.json()["appointments"]) == 4
    day = date.fromisoformat(best["days"][0])
    await assert_redis_matches_postgres(services, day)
    r = await client.post("/api/v1/plans/propose", headers=h, json={"patient_id": 1, "channel": "desk"})
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"  # nothing left to plan


async def test_plans_respect_preferences(client: httpx.AsyncClient, services: Services) -> None:
    h = await headers(services, "clerk")
    [(pid, _orders)] = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "US-THYROID"])
    avoid = future_day(services, 1)
    r = await client.post(
        "/api/v1/plans/propose",
        headers=h,
        json={
            "patient_id": pid,
            "channel": "desk",
            "earliest": str(avoid),
            "preferences": {"part_of_day": "afternoon", "avoid_days": [str(avoid)], "campus": "main"},
        },
    )
    assert r.status_code == 200, r.text
    for plan in r.json()["plans"]:
        for item in plan["items"]:
            start = datetime.fromisoformat(item["starts_at"])
            assert start.hour >= 12 and start.date() != avoid
            assert services.catalogue.resources[item["resource_id"]].campus_id == "main"


async def test_explain_names_the_rule_and_the_capacity(client: httpx.AsyncClient, services: Services) -> None:
    h = await headers(services, "clerk")
    [(pid, [mr])] = await new_patients_with_orders(services.pool, 1, ["MR-HEAD"])
    await client.post(
        f"/api/v1/patients/{pid}/facts",
        headers=h,
        json={"facts": {"pacemaker": True, "implants_declared": True}, "source": "desk"},
    )
    slot = await services.pool.fetchval(
        "SELECT s.id FROM slot s WHERE s.resource_id = 'MR1' AND s.day = $1 ORDER BY s.starts_at LIMIT 1",
        future_day(services, 2),
    )
    r = await client.get(f"/api/v1/plans/explain?patient_id={pid}&order_id={mr}&slot_id={slot}&channel=desk", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bookable"] is False and body["capacity"]["bookable"] is True
    assert [v["rule_id"] for v in body["violations"]] == ["R13-MRI-PACEMAKER"]
    r = await client.post("/api/v1/plans/propose", headers=h, json={"patient_id": pid, "channel": "desk"})
    [unplaced] = r.json()["plans"][0]["unplaced"]
    assert "R13-MRI-PACEMAKER" in unplaced["rule_ids"] and any("起搏器" in x for x in unplaced["reasons"])


async def scarce_exam(services: Services, day: date) -> list[int]:
    """An exam only one room can do, with two places on `day`: at 08:00 and 08:30."""
    await services.pool.execute(
        """INSERT INTO exam_type (code, name, modality, department_id, duration_min, prep_text)
           VALUES ('US-SCARCE', '稀缺超声检查', 'US', 'US', 20, '无需特殊准备')"""
    )
    await services.pool.execute(
        """INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name)
           VALUES ('US-X', 'h1', 'US', 'main', 'room', 'US', '专家超声室')"""
    )
    await services.pool.execute("INSERT INTO exam_capability VALUES ('US-SCARCE', 'US-X')")
    start = datetime.combine(day, datetime.min.time(), services.reconciler.tz) + timedelta(hours=8)
    ids = [
        await services.pool.fetchval(
            """INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity)
               VALUES ('h1', 'US-X', $1, $2, $3, 1) RETURNING id""",
            day,
            start + timedelta(minutes=30 * n),
            start + timedelta(minutes=30 * (n + 1)),
        )
        for n in range(2)
    ]
    await services.reload_catalogue()
    await services.reconciler.reconcile_day(day)
    return ids


async def test_two_clerks_race_for_one_scarce_slot_and_the_loser_is_offered_a_new_plan(
    client: httpx.AsyncClient, services: Services
) -> None:
    day = future_day(services, 2)
    slot_ids = await scarce_exam(services, day)
    [(pa, _), (pb, _)] = await new_patients_with_orders(services.pool, 2, ["US-SCARCE"])
    ha, hb = await headers(services, "clerk"), await headers(services, "doctor")

    async def plan_for(pid: int, h: dict[str, str], channel: str) -> dict[str, Any]:
        r = await client.post("/api/v1/plans/propose", headers=h, json={"patient_id": pid, "channel": channel})
        assert r.status_code == 200, r.text
        return dict(r.json()["plans"][0])

    plan_a, plan_b = await plan_for(pa, ha, "desk"), await plan_for(pb, hb, "clinic")
    assert plan_a["items"][0]["slot_id"] == plan_b["items"][0]["slot_id"] == slot_ids[0]  # both want 08:00

    async def book(pid: int, h: dict[str, str], channel: str, plan: dict[str, Any]) -> httpx.Response:
        items = [{"order_id": i["order_id"], "slot_id": i["slot_id"]} for i in plan["items"]]
        return await client.post(
            "/api/v1/plans/book", headers=h, json={"patient_id": pid, "channel": channel, "items": items}
        )

    ra, rb = await asyncio.gather(book(pa, ha, "desk", plan_a), book(pb, hb, "clinic", plan_b))
    statuses = sorted([ra.status_code, rb.status_code])
    assert statuses == [201, 409], (ra.text, rb.text)
    loser, loser_pid, loser_h, channel = (rb, pb, hb, "clinic") if ra.status_code == 201 else (ra, pa, ha, "desk")
    problem = loser.json()
    assert problem["code"] == "plan_slot_taken" and problem["title"]
    [alternative, *_] = problem["alternatives"]
    assert alternative["items"][0]["slot_id"] == slot_ids[1]  # the next best: 08:30
    r = await book(loser_pid, loser_h, channel, alternative)
    assert r.status_code == 201, r.text
    booked = await services.pool.fetch("SELECT id, booked, capacity FROM slot WHERE id = ANY($1::bigint[])", slot_ids)
    assert all(row["booked"] == row["capacity"] == 1 for row in booked)
    await assert_redis_matches_postgres(services, day)
