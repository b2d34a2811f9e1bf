"""The ward nurse station (护士站): the ward's inpatients with pending orders; plan and book many
in one batch; then their slips (app/api/slips.py) in one PDF."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.api.appointments import Id
from app.api.routing import Call, api_route
from app.planning.ward import WardPatient, result_payload

WARD_NURSES = frozenset({"nurse"})


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_ids: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=50)]


async def patients(call: Call) -> list[WardPatient]:
    return await call.services.ward.patients(call.staff)


async def batch(call: Call) -> dict[str, Any]:
    b: BatchBody = call.body
    return result_payload(await call.services.ward.batch(call.staff, b.patient_ids))


routes = [
    api_route(
        "/api/v1/ward/patients",
        patients,
        roles=WARD_NURSES,
        summary="The nurse's ward: inpatients with pending exam orders (names masked)",
        tag="ward",
        response=list[WardPatient],
    ),
    api_route(
        "/api/v1/ward/batch",
        batch,
        methods=("POST",),
        roles=WARD_NURSES,
        summary="Plan and book the pending orders of many inpatients, one after another, on the ward channel",
        tag="ward",
        body=BatchBody,
    ),
]
