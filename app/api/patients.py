"""A patient's orders and appointments. Every read is audited; identity fields are shown as the
caller's role allows (app/security/masking.py: masked for the desk, the wards and the patient
himself, never in full)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.api.routing import Call, api_route
from app.booking.service import check_patient_access
from app.db import patient_repo
from app.errors import Forbidden, NotFound
from app.security.actor import Actor
from app.security.crypto import pii_keys
from app.security.identity import checked_id_number
from app.security.masking import shown

READERS = frozenset({"doctor", "nurse", "clerk", "technician", "sys_admin", "patient"})


def _summary(p: patient_repo.PatientPii, actor: Actor) -> dict[str, Any]:
    return {
        "id": p.id,
        "mrn": p.mrn,
        "name_masked": shown(actor, "name", p.name) or "",
        "gender": p.gender,
        "birth_date": p.birth_date,
        "id_number_masked": shown(actor, "id_number", p.id_number) or "",
        "phone_masked": shown(actor, "phone", p.phone) or "",
    }


async def _check_ward(actor: Actor, call: Call, patient_id: int) -> None:
    """A ward nurse (with no desk or clinical role besides) sees the patients of her own ward: those
    with an inpatient order from it."""
    if "nurse" not in actor.roles or actor.roles & {"doctor", "clerk", "sys_admin"}:
        return
    if actor.department_id is None or not await patient_repo.in_ward(
        call.services.pool, patient_id, actor.department_id
    ):
        raise Forbidden("只能查看本病区住院患者的检查", detail="patient not in the nurse's ward")


async def _patient(call: Call) -> dict[str, Any]:
    patient_id = call.path_int("patient_id")
    check_patient_access(call.staff, patient_id)
    await _check_ward(call.staff, call, patient_id)
    row = await patient_repo.patient_with_pii(call.services.pool, pii_keys(call.services.settings), patient_id)
    if row is None:
        raise NotFound("患者不存在", detail=f"patient {patient_id} not found")
    return _summary(row, call.staff)


class LookupBody(msgspec.Struct, forbid_unknown_fields=True):
    # Visit card, its barcode, or ID number: in the body, never in the URL (which proxies and
    # access logs keep).
    card: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


async def lookup(call: Call) -> dict[str, Any]:
    """Find a patient by what the desk scans or types: the visit card (its barcode carries the
    same number) or the ID number (checked against its checksum first)."""
    q: LookupBody = call.body
    card = q.card.strip()
    id_number = checked_id_number(card) if len(card) == 18 else None
    keys = pii_keys(call.services.settings)
    row = await patient_repo.find_patient(call.services.pool, keys, None if id_number else card, id_number)
    if row is None:
        raise NotFound("未找到该患者，请核对就诊卡号或身份证号", detail="no patient for that card or id number")
    by = {"by": "id_number" if id_number else "card"}
    await patient_repo.audit(call.services.pool, call.staff, "lookup", "patient", str(row.id), row.id, by)
    return _summary(row, call.staff)


async def patient_orders(call: Call) -> dict[str, Any]:
    patient = await _patient(call)
    orders = await patient_repo.orders_of(call.services.pool, patient["id"])
    await patient_repo.audit(
        call.services.pool, call.staff, "read", "patient.orders", str(patient["id"]), patient["id"]
    )
    return {"patient": patient, "orders": [dict(r.items()) for r in orders]}


async def patient_appointments(call: Call) -> dict[str, Any]:
    patient = await _patient(call)
    rows = await patient_repo.appointments_of(call.services.pool, patient["id"])
    await patient_repo.audit(
        call.services.pool, call.staff, "read", "patient.appointments", str(patient["id"]), patient["id"]
    )
    # Until when the patient may still cancel or move each one himself (the kiosk, the phone): the
    # self-service page offers those buttons only before then (BookingService._check_self_window).
    until = call.services.booking.self_change_until
    appointments = [{**dict(r.items()), "self_change_until": until(r["starts_at"])} for r in rows]
    return {"patient": patient, "appointments": appointments}


routes = [
    api_route(
        "/api/v1/patients/lookup",
        lookup,
        methods=("POST",),
        roles=frozenset({"doctor", "nurse", "clerk", "sys_admin"}),
        summary="Find a patient by visit card / barcode or ID number, given in the body (masked, audited)",
        tag="patients",
        body=LookupBody,
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/orders",
        patient_orders,
        roles=READERS,
        summary="The patient's exam orders (audited)",
        tag="patients",
    ),
    api_route(
        "/api/v1/patients/{patient_id:int}/appointments",
        patient_appointments,
        roles=READERS,
        summary="The patient's appointments (audited)",
        tag="patients",
    ),
]
