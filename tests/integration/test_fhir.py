"""The FHIR R4 facade (/fhir/R4): every resource it returns validates against the fhir.resources R4
models (the R4B package: 4.3, the R4 line's compatible release), statuses follow the closed loop,
personal data is audited and never carries the ID number, and the IHE $find -> $hold -> $book flow
runs on the booking path: two clients racing for one place never double-book, and PostgreSQL and
Redis agree afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import httpx
from fhir.resources.R4B import get_fhir_model_class

from app.api import fhir as fhir_api
from app.booking.reaper import reap_expired
from app.booking.service import BookItem
from app.db import rules_repo
from app.demo.data import PATIENTS
from app.main import create_app
from app.services import Services
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    future_day,
    new_patients_with_orders,
    open_slots,
    token_for,
)

BASE = "/fhir/R4"
FHIR_JSON = "application/fhir+json"


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource parsed by the R4(B) model of its type (a Bundle's entries too); returned as given."""
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)
    for entry in resource.get("entry", []):
        inner = entry["resource"]
        get_fhir_model_class(inner["resourceType"]).model_validate(inner)
    return resource


def fhir(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(FHIR_JSON), r.headers["content-type"]
    return validate(r.json())


def outcome(r: httpx.Response, status: int, issue_code: str) -> dict[str, Any]:
    body = fhir(r, status)
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["code"] == issue_code, body
    assert any("\u4e00" <= ch <= "\u9fff" for ch in body["issue"][0]["diagnostics"]), body  # Chinese
    return body


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


@asynccontextmanager
async def client(services: Services, username: str = "clerk") -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services
    if not any(getattr(r, "path", "").startswith(BASE) for r in app.routes):
        app.router.routes.extend(fhir_api.routes)  # until app/main.py lists the module
    headers = {"authorization": f"Bearer {await token_for(services, username)}", "accept": FHIR_JSON}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test", headers=headers) as c:
        yield c


def parameters(**values: Any) -> dict[str, Any]:
    parts = []
    for name, value in values.items():
        name = name if name.startswith("_") else name.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, dict) and "resourceType" in v:
                parts.append({"name": name, "resource": v})
            elif isinstance(v, str) and "/" in v and name != "channel":
                parts.append({"name": name, "valueReference": {"reference": v}})
            else:
                parts.append({"name": name, "valueString": v})
    return {"resourceType": "Parameters", "parameter": parts}


async def declare_implants(services: Services, *patient_ids: int) -> None:
    for pid in patient_ids:
        await rules_repo.add_facts(services.pool, pid, {"implants_declared": True}, "desk", None)


async def single_place_slots(services: Services, exam: str, day: date) -> list[Any]:
    """Open slots of the day with exactly one place and no reserved quota (MR2: capacity 1)."""
    return [s for s in await open_slots(services, exam, day) if s["capacity"] == 1 and not s["quotas"]]


# -- reads and searches --------------------------------------------------------------------------


async def test_patient_reads_are_audited_and_never_carry_the_id_number(services: Services) -> None:
    who = next(p for p in PATIENTS if p.id_number)
    async with client(services) as c:
        bundle = fhir(await c.get(f"{BASE}/Patient", params={"identifier": who.mrn}))
        (patient,) = entries(bundle)
        assert patient["identifier"][0]["value"] == who.mrn and patient["name"][0]["text"] == who.name
        pid = int(patient["id"])
        again = fhir(await c.get(f"{BASE}/Patient/{pid}"))
        assert again["id"] == patient["id"] and again["gender"] in ("male", "female", "unknown")
        for body in (bundle, again):
            text = str(body)
            assert who.id_number not in text and "id_number" not in text
        # Another system's identifier matches nothing; no criteria at all is refused.
        assert entries(fhir(await c.get(f"{BASE}/Patient", params={"identifier": f"urn:other|{who.mrn}"}))) == []
        outcome(await c.get(f"{BASE}/Patient"), 400, "invalid")
        outcome(await c.get(f"{BASE}/Patient", params={"name": who.name}), 400, "invalid")
        outcome(await c.get(f"{BASE}/Patient/999999999"), 404, "not-found")
    audited = await services.pool.fetch(
        "SELECT action, object_type FROM audit_log WHERE patient_id = $1 AND object_type = 'fhir.Patient'", pid
    )
    assert sorted(r["action"] for r in audited) == ["fhir.read", "fhir.search"]


async def test_capability_schedule_and_slot_searches_validate(services: Services) -> None:
    day = future_day(services, 2)
    async with client(services, "doctor") as c:
        meta = fhir(await c.get(f"{BASE}/metadata"))
        assert meta["fhirVersion"] == "4.0.1"
        ops = {o["name"] for r in meta["rest"][0]["resource"] if r["type"] == "Appointment" for o in r["operation"]}
        assert ops == {"find", "hold", "book"}

        schedules = entries(fhir(await c.get(f"{BASE}/Schedule", params={"service-type": "MR-HEAD"})))
        assert {s["id"] for s in schedules} == {"MR1", "MR2"}
        assert schedules[0]["actor"][0]["reference"].startswith("Device/")
        room = fhir(await c.get(f"{BASE}/Schedule/US01"))
        assert room["actor"][0]["reference"] == "Location/US01"

        q = {"schedule": "Schedule/CT1", "start": [f"ge{day}", f"lt{day + timedelta(days=1)}"], "status": "free"}
        slots = entries(fhir(await c.get(f"{BASE}/Slot", params=q)))
        assert slots and all(s["status"] == "free" and s["start"].startswith(str(day)) for s in slots)
        one = fhir(await c.get(f"{BASE}/Slot/{slots[0]['id']}"))
        assert one["schedule"]["reference"] == "Schedule/CT1"
        # Paging: a next link when more match than _count.
        paged = fhir(await c.get(f"{BASE}/Slot", params={**q, "_count": "2"}))
        assert len(entries(paged)) == 2 and paged["total"] == len(slots)
        assert any(link["relation"] == "next" for link in paged["link"])

        outcome(await c.get(f"{BASE}/Slot", params={"start": f"ge{day}"}), 400, "invalid")
        outcome(await c.get(f"{BASE}/Slot", params={"schedule": "CT1", "start": "tomorrow"}), 400, "invalid")
        outcome(await c.get(f"{BASE}/Schedule/NOPE"), 404, "not-found")

    # Not logged in, or a role the facade does not serve: OperationOutcome too.
    async with client(services, "patient") as c:
        outcome(await c.get(f"{BASE}/metadata"), 403, "forbidden")
        outcome(await c.get(f"{BASE}/metadata", headers={"authorization": ""}), 401, "login")


async def test_slot_statuses_free_busy_tentative_and_unavailable(services: Services) -> None:
    day = future_day(services, 2)
    clerk = await actor_for(services, "clerk")
    slots = await single_place_slots(services, "MR-HEAD", day)
    held_slot, booked_slot = slots[0], slots[1]
    [(p1, [o1]), (p2, [o2])] = await new_patients_with_orders(services.pool, 2, ["MR-HEAD"])
    await declare_implants(services, p1, p2)
    await services.booking.hold(clerk, p1, "desk", BookItem(o1, held_slot["id"]), ttl_s=120)
    await services.booking.book(clerk, p2, "desk", [BookItem(o2, booked_slot["id"])])
    async with client(services) as c:
        assert fhir(await c.get(f"{BASE}/Slot/{held_slot['id']}"))["status"] == "busy-tentative"
        assert fhir(await c.get(f"{BASE}/Slot/{booked_slot['id']}"))["status"] == "busy"
        await services.pool.execute("UPDATE slot SET status = 'closed' WHERE id = $1", slots[2]["id"])
        assert fhir(await c.get(f"{BASE}/Slot/{slots[2]['id']}"))["status"] == "busy-unavailable"
        assert fhir(await c.get(f"{BASE}/Slot/{slots[3]['id']}"))["status"] == "free"


async def test_service_request_and_appointment_statuses_follow_the_closed_loop(services: Services) -> None:
    clerk = await actor_for(services, "clerk")
    day = future_day(services, 1)
    [(pid, [a, b, c_])] = await new_patients_with_orders(services.pool, 1, ["ECG-REST", "DX-CHEST", "US-URO"])
    slot_a = (await open_slots(services, "ECG-REST", day))[0]["id"]
    slot_b = (await open_slots(services, "DX-CHEST", day))[-1]["id"]
    (appt_a,) = await services.booking.book(clerk, pid, "desk", [BookItem(a, slot_a)])
    (appt_b,) = await services.booking.book(clerk, pid, "desk", [BookItem(b, slot_b)])
    async with client(services) as c:
        srs = entries(fhir(await c.get(f"{BASE}/ServiceRequest", params={"patient": f"Patient/{pid}"})))
        assert {s["id"]: s["status"] for s in srs} == {str(a): "active", str(b): "active", str(c_): "active"}
        sr_a = next(s for s in srs if s["id"] == str(a))
        systems = {i["type"]["coding"][0]["code"]: i["value"] for i in sr_a["identifier"]}
        assert set(systems) == {"PLAC", "ACSN"} and systems["ACSN"].startswith("HY")  # accession on booking
        assert sr_a["intent"] == "order" and sr_a["code"]["coding"][0]["code"] == "ECG-REST"
        assert sr_a["subject"]["reference"] == f"Patient/{pid}"

        async def appointment(appt_id: int) -> dict[str, Any]:
            return fhir(await c.get(f"{BASE}/Appointment/{appt_id}"))

        booked = await appointment(appt_a.appointment_id)
        assert booked["status"] == "booked" and booked["basedOn"][0]["reference"] == f"ServiceRequest/{a}"
        assert booked["slot"][0]["reference"] == f"Slot/{slot_a}"
        assert {p["actor"]["reference"] for p in booked["participant"]} == {f"Patient/{pid}", booked_room(booked)}

        for state, sr_status, appt_status in (
            ("checked_in", "active", "arrived"),
            ("started", "active", "arrived"),
            ("done", "completed", "fulfilled"),
            ("published", "completed", "fulfilled"),
            ("aborted", "revoked", "cancelled"),
        ):
            await services.pool.execute("UPDATE exam_order SET status = $2 WHERE id = $1", a, state)
            assert fhir(await c.get(f"{BASE}/ServiceRequest/{a}"))["status"] == sr_status, state
            assert (await appointment(appt_a.appointment_id))["status"] == appt_status, state

        await services.booking.cancel(clerk, appt_b.appointment_id, "desk", "患者来电取消")
        cancelled = await appointment(appt_b.appointment_id)
        assert cancelled["status"] == "cancelled" and cancelled["cancelationReason"]["text"] == "患者来电取消"
        assert fhir(await c.get(f"{BASE}/ServiceRequest/{b}"))["status"] == "active"  # bookable again
        await services.pool.execute("UPDATE exam_order SET status = 'cancelled' WHERE id = $1", c_)
        assert fhir(await c.get(f"{BASE}/ServiceRequest/{c_}"))["status"] == "revoked"

        q = {"patient": str(pid), "date": [f"ge{day}", f"le{day}"]}
        found = entries(fhir(await c.get(f"{BASE}/Appointment", params=q)))
        assert {x["id"] for x in found} == {str(appt_a.appointment_id), str(appt_b.appointment_id)}
        only = entries(fhir(await c.get(f"{BASE}/Appointment", params={**q, "status": "cancelled"})))
        assert len(only) == 2  # aborted and cancelled
        later = {"patient": str(pid), "date": f"gt{day}"}
        assert entries(fhir(await c.get(f"{BASE}/Appointment", params=later))) == []
        revoked = {"patient": str(pid), "status": "revoked"}
        assert {x["id"] for x in entries(fhir(await c.get(f"{BASE}/ServiceRequest", params=revoked)))} == {
            str(a),
            str(c_),
        }
        outcome(await c.get(f"{BASE}/Appointment", params={"date": f"ge{day}"}), 400, "invalid")
    reads = await services.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE patient_id = $1 AND object_type LIKE 'fhir.%'", pid
    )
    assert reads >= 10


def booked_room(appt: dict[str, Any]) -> str:
    return next(p["actor"]["reference"] for p in appt["participant"] if not p["actor"]["reference"].startswith("Pa"))


# -- $find, $hold, $book -------------------------------------------------------------------------


async def test_find_hold_book_through_the_booking_path(services: Services) -> None:
    day = future_day(services, 2)
    [(pid, [order])] = await new_patients_with_orders(services.pool, 1, ["MR-HEAD"])
    await declare_implants(services, pid)
    async with client(services) as c:
        window = {"start": f"{day}T00:00:00", "end": f"{day}T23:59:59"}
        found = fhir(
            await c.post(
                f"{BASE}/Appointment/$find",
                json=parameters(
                    service_request=f"ServiceRequest/{order}", schedule="Schedule/MR2", _count="5", **window
                ),
            )
        )
        proposals = entries(found)
        assert 0 < len(proposals) <= 5
        assert all(p["status"] == "proposed" and p["start"].startswith(str(day)) for p in proposals)
        # GET works too, by the patient's pending orders.
        by_patient = entries(fhir(await c.get(f"{BASE}/Appointment/$find", params={"patient": str(pid), **window})))
        assert by_patient and all(p["basedOn"] == [{"reference": f"ServiceRequest/{order}"}] for p in by_patient)

        chosen = proposals[0]
        held = entries(
            fhir(
                await c.post(
                    f"{BASE}/Appointment/$hold",
                    json=parameters(appointment_reference=f"Appointment/{chosen['id']}"),
                )
            )
        )[0]
        assert held["status"] == "pending" and held["id"].startswith("hold-")
        assert held["slot"] == chosen["slot"] and held["start"] == chosen["start"]
        assert fhir(await c.get(f"{BASE}/Appointment/{held['id']}"))["status"] == "pending"
        slot_id = chosen["slot"][0]["reference"].split("/")[1]
        assert fhir(await c.get(f"{BASE}/Slot/{slot_id}"))["status"] == "busy-tentative"  # MR2: one place, held

        # $book takes the pending Appointment itself as well as a reference to it.
        booked = entries(fhir(await c.post(f"{BASE}/Appointment/$book", json=parameters(appointment_resource=held))))[0]
        assert booked["status"] == "booked" and booked["id"].isdigit()
        assert booked["slot"] == chosen["slot"] and booked["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
        assert fhir(await c.get(f"{BASE}/Appointment/{held['id']}"))["id"] == booked["id"]  # the hold became it
        assert fhir(await c.get(f"{BASE}/ServiceRequest/{order}"))["extension"][0]["valueCoding"]["code"] == "booked"

        # Booking the same hold again is a conflict, never a second appointment.
        again = await c.post(
            f"{BASE}/Appointment/$book", json=parameters(appointment_reference=f"Appointment/{held['id']}")
        )
        outcome(again, 409, "conflict")
        # Holding for an order that is booked now: a conflict too.
        outcome(
            await c.post(
                f"{BASE}/Appointment/$hold", json=parameters(appointment_reference=f"Appointment/{proposals[-1]['id']}")
            ),
            409,
            "conflict",
        )
        outcome(await c.post(f"{BASE}/Appointment/$hold", json={"resourceType": "Patient"}), 400, "invalid")
    assert (
        await services.pool.fetchval(
            "SELECT count(*) FROM appointment WHERE order_id = $1 AND status = 'booked'", order
        )
        == 1
    )
    await assert_redis_matches_postgres(services, day)


async def test_two_clients_racing_for_one_place_never_double_book(services: Services) -> None:
    day = future_day(services, 3)
    slots = await single_place_slots(services, "MR-HEAD", day)
    rounds = 4
    patients = await new_patients_with_orders(services.pool, 2 * rounds, ["MR-HEAD"])
    await declare_implants(services, *[pid for pid, _ in patients])
    async with client(services, "clerk") as a, client(services, "admin") as b:

        async def find(c: httpx.AsyncClient, order: int, slot_id: int) -> str:
            params = parameters(
                service_request=f"ServiceRequest/{order}",
                schedule="Schedule/MR2",
                start=f"{day}T00:00:00",
                end=f"{day}T23:59:59",
                _count="100",
            )
            proposals = entries(fhir(await c.post(f"{BASE}/Appointment/$find", json=params)))
            (mine,) = [p for p in proposals if p["slot"][0]["reference"] == f"Slot/{slot_id}"]
            return str(mine["id"])

        async def hold_then_book(c: httpx.AsyncClient, proposal: str) -> httpx.Response:
            r = await c.post(
                f"{BASE}/Appointment/$hold", json=parameters(appointment_reference=f"Appointment/{proposal}")
            )
            if r.status_code != 200:
                return r
            pending = entries(fhir(r))[0]
            return await c.post(
                f"{BASE}/Appointment/$book", json=parameters(appointment_reference=f"Appointment/{pending['id']}")
            )

        for n in range(rounds):
            slot_id = slots[n]["id"]
            (_, [order_a]), (_, [order_b]) = patients[2 * n], patients[2 * n + 1]
            proposal_a, proposal_b = await find(a, order_a, slot_id), await find(b, order_b, slot_id)
            results = await asyncio.gather(hold_then_book(a, proposal_a), hold_then_book(b, proposal_b))
            winners = [r for r in results if r.status_code == 200]
            losers = [r for r in results if r.status_code != 200]
            assert len(winners) == 1 and len(losers) == 1, [r.text for r in results]
            body = outcome(losers[0], 409, "conflict")
            assert any(c["code"] == "slot_unavailable" for c in body["issue"][0]["details"]["coding"])
            assert entries(fhir(winners[0]))[0]["status"] == "booked"
            booked = await services.pool.fetchval(
                "SELECT count(*) FROM appointment WHERE slot_id = $1 AND status = 'booked'", slot_id
            )
            assert booked == 1

        # Both clients $book one hold at the same moment: one appointment, one OperationOutcome.
        [(pid, [order])] = await new_patients_with_orders(services.pool, 1, ["MR-HEAD"])
        await declare_implants(services, pid)
        proposal = await find(a, order, slots[rounds]["id"])
        r = await a.post(f"{BASE}/Appointment/$hold", json=parameters(appointment_reference=f"Appointment/{proposal}"))
        hold_ref = f"Appointment/{entries(fhir(r))[0]['id']}"
        results = await asyncio.gather(
            a.post(f"{BASE}/Appointment/$book", json=parameters(appointment_reference=hold_ref)),
            b.post(f"{BASE}/Appointment/$book", json=parameters(appointment_reference=hold_ref)),
        )
        assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
        outcome(next(r for r in results if r.status_code == 409), 409, "conflict")
        assert await services.pool.fetchval("SELECT count(*) FROM appointment WHERE order_id = $1", order) == 1
    await assert_redis_matches_postgres(services, day)


async def test_an_expired_hold_and_a_broken_rule_answer_operation_outcomes(services: Services) -> None:
    day = future_day(services, 2)
    [(pid, [order]), (pid2, [order2])] = await new_patients_with_orders(services.pool, 2, ["MR-HEAD"])
    await declare_implants(services, pid, pid2)
    slot_id = (await single_place_slots(services, "MR-HEAD", day))[0]["id"]
    async with client(services) as c:
        r = await c.post(
            f"{BASE}/Appointment/$hold",
            json=parameters(appointment_reference=f"Appointment/proposed-{order}-{slot_id}"),
        )
        hold_ref = f"Appointment/{entries(fhir(r))[0]['id']}"
        real_clock = services.booking.clock
        services.booking.clock = lambda: real_clock() + 3600  # an hour later: long expired
        try:
            r = await c.post(f"{BASE}/Appointment/$book", json=parameters(appointment_reference=hold_ref))
        finally:
            services.booking.clock = real_clock
        body = outcome(r, 409, "conflict")
        assert body["issue"][0]["details"]["coding"][0]["code"] == "hold_expired"
        assert "超时" in body["issue"][0]["diagnostics"]
        # The reaper frees it (nothing committed behind it); then the place is free again.
        report = await reap_expired(
            services.pool, services.store, services.reconciler, int((time.time() + 3600) * 1000)
        )
        assert report.released == 1
        outcome(await c.get(f"{BASE}/{hold_ref}"), 404, "not-found")
        await assert_redis_matches_postgres(services, day)

        # A pacemaker forbids MRI: $find proposes nothing, and booking a proposal directly is refused.
        await rules_repo.add_facts(services.pool, pid2, {"pacemaker": True}, "desk", None)
        window = {"start": f"{day}T00:00:00", "end": f"{day}T23:59:59"}
        found = await c.post(
            f"{BASE}/Appointment/$find", json=parameters(service_request=f"ServiceRequest/{order2}", **window)
        )
        assert entries(fhir(found)) == []
        r = await c.post(
            f"{BASE}/Appointment/$book",
            json=parameters(appointment_reference=f"Appointment/proposed-{order2}-{slot_id}"),
        )
        body = outcome(r, 409, "business-rule")
        assert any(
            c["code"] == "R13-MRI-PACEMAKER" for i in body["issue"][1:] for c in i["details"].get("coding", [])
        ), body
        # A channel this role may not book through.
        r = await c.post(
            f"{BASE}/Appointment/$hold",
            json=parameters(appointment_reference=f"Appointment/proposed-{order}-{slot_id}", channel="ward"),
        )
        outcome(r, 403, "forbidden")
    await assert_redis_matches_postgres(services, day)


async def test_every_fhir_route_enforces_its_roles_with_operation_outcomes(services: Services) -> None:
    """What tests/integration/test_route_table.py checks for every route, for these routes, plus:
    every refusal is an OperationOutcome (the route table's own 401 / 403 included)."""
    from app.api.routing import route_spec
    from tests.integration.test_route_table import DEMO_USER_OF_ROLE

    tokens = {role: await token_for(services, user) for role, user in DEMO_USER_OF_ROLE.items()}
    checked = 0
    async with client(services) as c:
        for route in fhir_api.routes:
            spec = route_spec(route)
            assert spec is not None and spec.roles == fhir_api.FHIR_ROLES and spec.tag == "fhir"
            path = spec.path.replace("{ident}", "1")
            for method in spec.methods:
                r = await c.request(method, path, json={}, headers={"authorization": ""})
                outcome(r, 401, "login")
                for role, token in tokens.items():
                    r = await c.request(method, path, json={}, headers={"authorization": f"Bearer {token}"})
                    assert r.headers["content-type"].startswith(FHIR_JSON), (method, path, role)
                    validate(r.json())
                    if role in spec.roles:
                        assert r.status_code not in (401, 403, 500), (method, path, role, r.status_code, r.text)
                    else:
                        outcome(r, 403, "forbidden")
                    checked += 1
    assert checked == sum(len(route_spec(r).methods) for r in fhir_api.routes) * len(tokens)  # type: ignore[union-attr]
