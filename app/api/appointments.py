"""Booking, cancelling and rescheduling appointments."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.api.routing import Call, api_route
from app.booking.service import BookedAppointment, BookItem, check_patient_access
from app.db import booking_repo, patient_repo
from app.errors import NotFound
from app.planning.rule_service import Override

BOOKERS = frozenset({"doctor", "nurse", "clerk", "patient", "sys_admin"})
READERS = frozenset({"doctor", "nurse", "clerk", "technician", "dept_admin", "sys_admin", "patient"})

Id = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


class BookItemBody(msgspec.Struct, forbid_unknown_fields=True):
    order_id: Id
    slot_id: Id


class OverrideBody(msgspec.Struct, forbid_unknown_fields=True):
    """Set aside a warning rule (only roles the rule names may), with the reason recorded."""

    rule_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: Annotated[str, msgspec.Meta(min_length=2, max_length=500)]


Overrides = Annotated[list[OverrideBody], msgspec.Meta(max_length=20)]


class BookBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    channel: Channel
    items: Annotated[list[BookItemBody], msgspec.Meta(min_length=1, max_length=10)]
    reason: Reason = ""
    overrides: Overrides = msgspec.field(default_factory=list)


class BookReply(msgspec.Struct):
    appointments: list[BookedAppointment]


class CancelBody(msgspec.Struct, forbid_unknown_fields=True):
    channel: Channel
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class CancelReply(msgspec.Struct):
    appointment_id: int
    status: str
    slot_id: int


class RescheduleBody(msgspec.Struct, forbid_unknown_fields=True):
    slot_id: Id
    channel: Channel
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    overrides: Overrides = msgspec.field(default_factory=list)


def overrides_of(body: list[OverrideBody]) -> list[Override]:
    return [Override(o.rule_id, o.reason) for o in body]


class RescheduleReply(msgspec.Struct):
    previous_appointment_id: int
    appointment: BookedAppointment


async def book(call: Call) -> BookReply:
    b: BookBody = call.body
    items = [BookItem(i.order_id, i.slot_id) for i in b.items]
    booked = await call.services.booking.book(
        call.staff, b.patient_id, b.channel, items, b.reason, overrides_of(b.overrides)
    )
    return BookReply(booked)


async def cancel(call: Call) -> CancelReply:
    b: CancelBody = call.body
    appointment_id = call.path_int("appointment_id")
    slot_id = await call.services.booking.cancel(call.staff, appointment_id, b.channel, b.reason)
    return CancelReply(appointment_id, "cancelled", slot_id)


async def reschedule(call: Call) -> RescheduleReply:
    b: RescheduleBody = call.body
    appointment_id = call.path_int("appointment_id")
    moved = await call.services.booking.reschedule(
        call.staff, appointment_id, b.slot_id, b.channel, b.reason, overrides_of(b.overrides)
    )
    return RescheduleReply(appointment_id, moved)


async def get_appointment(call: Call) -> dict[str, Any]:
    appointment_id = call.path_int("appointment_id")
    row = await booking_repo.appointment_by_id(call.services.pool, appointment_id)
    if row is None:
        raise NotFound("预约不存在", detail=f"appointment {appointment_id} not found")
    check_patient_access(call.staff, row["patient_id"])
    await patient_repo.audit(
        call.services.pool, call.staff, "read", "appointment", str(appointment_id), row["patient_id"]
    )
    return dict(row.items())


routes = [
    api_route(
        "/api/v1/appointments",
        book,
        methods=("POST",),
        roles=BOOKERS,
        status=201,
        summary="Book one or more orders of a patient, all or nothing",
        tag="booking",
        body=BookBody,
        response=BookReply,
        limit="booking",
    ),
    api_route(
        "/api/v1/appointments/{appointment_id:int}",
        get_appointment,
        roles=READERS,
        summary="One appointment",
        tag="booking",
    ),
    api_route(
        "/api/v1/appointments/{appointment_id:int}/cancel",
        cancel,
        methods=("POST",),
        roles=BOOKERS,
        summary="Cancel; the place returns to the pool it came from",
        tag="booking",
        body=CancelBody,
        response=CancelReply,
    ),
    api_route(
        "/api/v1/appointments/{appointment_id:int}/reschedule",
        reschedule,
        methods=("POST",),
        roles=BOOKERS,
        summary="Move to another slot; the new place is taken before the old is released",
        tag="booking",
        body=RescheduleBody,
        response=RescheduleReply,
    ),
]
