"""Appointment slips: a PDF (one A6 page each, Code128 barcode of the appointment number) for the
ward, desk and kiosk printers, and the same data with SVG barcodes for the printable page."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.responses import Response

from app.api.appointments import Id
from app.api.routing import Call, api_route
from app.slips.render import barcode_svg, slips_pdf

SLIP_PRINTERS = frozenset({"doctor", "nurse", "clerk", "sys_admin", "patient"})


class SlipsBody(msgspec.Struct, forbid_unknown_fields=True):
    appointment_ids: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=50)]


def _pdf(data: bytes, name: str) -> Response:
    return Response(data, media_type="application/pdf", headers={"content-disposition": f'inline; filename="{name}"'})


async def slips(call: Call) -> Response:
    b: SlipsBody = call.body
    return _pdf(slips_pdf(await call.services.slips.slips(call.staff, b.appointment_ids)), "slips.pdf")


async def one_slip(call: Call) -> Response:
    appointment_id = call.path_int("appointment_id")
    return _pdf(slips_pdf(await call.services.slips.slips(call.staff, [appointment_id])), f"slip-{appointment_id}.pdf")


async def slip_data(call: Call) -> list[dict[str, Any]]:
    b: SlipsBody = call.body
    out = []
    for slip in await call.services.slips.slips(call.staff, b.appointment_ids):
        item: dict[str, Any] = msgspec.to_builtins(slip)
        item["barcode_svg"] = barcode_svg(slip.number)
        out.append(item)
    return out


routes = [
    api_route(
        "/api/v1/slips",
        slips,
        methods=("POST",),
        roles=SLIP_PRINTERS,
        summary="Slips of several appointments as one PDF (A6 pages, Code128 barcode of the appointment number)",
        tag="slips",
        body=SlipsBody,
    ),
    api_route(
        "/api/v1/appointments/{appointment_id:int}/slip.pdf",
        one_slip,
        roles=SLIP_PRINTERS,
        summary="One appointment's slip as a PDF",
        tag="slips",
    ),
    api_route(
        "/api/v1/slips/data",
        slip_data,
        methods=("POST",),
        roles=SLIP_PRINTERS,
        summary="The slips' contents with SVG barcodes, for the printable page",
        tag="slips",
        body=SlipsBody,
    ),
]
