"""The rule table over HTTP: export, validated import (all or nothing), edit, delete; patient facts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from app.planning.rules import load_default_rules
from app.services import Services
from tests.helpers import new_patients_with_orders, token_for


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


async def test_export_then_import_round_trips(client: httpx.AsyncClient, services: Services) -> None:
    h = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
    exported = (await client.get("/api/v1/admin/rules", headers=h)).json()
    assert len(exported["rules"]) == len(load_default_rules())
    r = await client.put("/api/v1/admin/rules", headers=h, json=exported)
    assert r.status_code == 200 and r.json()["imported"] == len(exported["rules"])
    assert (await client.get("/api/v1/admin/rules", headers=h)).json() == exported


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("unknown kind", lambda r: {**r, "kind": "astrology"}),
        ("pair rule without b", lambda r: {**r, "b": None}),
        ("bad params", lambda r: {**r, "params": {"min_hours": "soon"}}),
        ("negative gap", lambda r: {**r, "params": {"min_hours": -4}}),
        ("empty message", lambda r: {**r, "message": " "}),
        ("unknown selector field", lambda r: {**r, "a": {"colour": ["red"]}}),
    ],
)
async def test_an_invalid_import_changes_nothing(
    client: httpx.AsyncClient, services: Services, case: str, mutate
) -> None:  # type: ignore[no-untyped-def]
    h = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
    before = (await client.get("/api/v1/admin/rules", headers=h)).json()
    gap_rule = next(r for r in before["rules"] if r["id"] == "R06-IODINE-TWICE-7D")
    broken = {"rules": [mutate(gap_rule) if r is gap_rule else r for r in before["rules"]]}
    r = await client.put("/api/v1/admin/rules", headers=h, json=broken)
    assert r.status_code == 422, (case, r.text)
    assert r.json()["code"] == "validation_failed"
    assert any("\u4e00" <= ch <= "\u9fff" for ch in r.json()["title"])
    assert (await client.get("/api/v1/admin/rules", headers=h)).json() == before


async def test_edit_and_delete_a_rule_takes_effect(client: httpx.AsyncClient, services: Services) -> None:
    h = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
    rules = (await client.get("/api/v1/admin/rules", headers=h)).json()["rules"]
    rule = next(r for r in rules if r["id"] == "R06-IODINE-TWICE-7D")
    r = await client.put(
        "/api/v1/admin/rules/R06-IODINE-TWICE-7D",
        headers=h,
        json={**rule, "params": {"min_hours": 240, "directed": False}},
    )
    assert r.status_code == 200, r.text
    checker = await services.rules.checker()
    assert next(x for x in checker.rules if x.id == "R06-IODINE-TWICE-7D").params.min_hours == 240
    assert (await client.delete("/api/v1/admin/rules/R06-IODINE-TWICE-7D", headers=h)).status_code == 200
    assert (await client.delete("/api/v1/admin/rules/R06-IODINE-TWICE-7D", headers=h)).status_code == 404
    assert all(x.id != "R06-IODINE-TWICE-7D" for x in (await services.rules.checker()).rules)
    mismatch = await client.put("/api/v1/admin/rules/OTHER", headers=h, json=rule)
    assert mismatch.status_code == 422
    clerk = {"authorization": f"Bearer {await token_for(services, 'clerk')}"}
    assert (await client.put("/api/v1/admin/rules", headers=clerk, json={"rules": []})).status_code == 403
    assert (await client.get("/api/v1/admin/rules", headers=clerk)).status_code == 200


async def test_facts_are_recorded_with_source_and_history(client: httpx.AsyncClient, services: Services) -> None:
    h = {"authorization": f"Bearer {await token_for(services, 'doctor')}"}
    [(pid, _)] = await new_patients_with_orders(services.pool, 1, ["MR-HEAD"])
    r = await client.post(f"/api/v1/patients/{pid}/facts", headers=h, json={"facts": {"egfr": 52, "pregnant": False}})
    assert r.status_code == 200 and r.json()["facts"] == {"egfr": 52, "pregnant": False}
    r = await client.post(f"/api/v1/patients/{pid}/facts", headers=h, json={"facts": {"egfr": 28}, "source": "his"})
    assert r.json()["facts"]["egfr"] == 28
    got = (await client.get(f"/api/v1/patients/{pid}/facts", headers=h)).json()
    assert [x["value"] for x in got["history"] if x["fact"] == "egfr"] == [28, 52]
    assert {x["source"] for x in got["history"]} == {"his", "desk"}
    bad = await client.post(f"/api/v1/patients/{pid}/facts", headers=h, json={"facts": {"Bad Name!": 1}})
    assert bad.status_code == 422
    audited = await services.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE patient_id = $1 AND object_type = 'patient.facts'", pid
    )
    assert audited == 3
