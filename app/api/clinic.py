"""The clinic workstation (诊间): what the HIS doctor workstation calls right after writing orders,
and the one-step booking of today's plan."""

from __future__ import annotations

from typing import Annotated

import msgspec

from app.api.appointments import BookItemBody, Id, OverrideBody, overrides_of
from app.api.routing import Call, api_route
from app.booking.service import BookedAppointment, BookItem
from app.planning.clinic import CHANNEL, ClinicAnswer

CLINICIANS = frozenset({"doctor", "sys_admin"})


class OrdersWrittenBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    order_ids: Annotated[list[Id], msgspec.Meta(max_length=8)] = msgspec.field(default_factory=list)


class ClinicBookBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    items: Annotated[list[BookItemBody], msgspec.Meta(min_length=1, max_length=8)]
    overrides: Annotated[list[OverrideBody], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)


class ClinicBookReply(msgspec.Struct):
    appointments: list[BookedAppointment]


async def orders_written(call: Call) -> ClinicAnswer:
    b: OrdersWrittenBody = call.body
    return await call.services.clinic.orders_written(call.staff, b.patient_id, b.order_ids or None)


async def book(call: Call) -> ClinicBookReply:
    b: ClinicBookBody = call.body
    s = call.services
    today = s.reconciler.today()
    booked = await s.plans.book_plan(
        call.staff,
        b.patient_id,
        CHANNEL,
        [BookItem(i.order_id, i.slot_id) for i in b.items],
        overrides_of(b.overrides),
        earliest=today,
    )
    return ClinicBookReply(booked)


routes = [
    api_route(
        "/api/v1/clinic/orders-written",
        orders_written,
        methods=("POST",),
        roles=CLINICIANS,
        summary="Orders just written at the clinic: today's plan, or the 'go to the booking centre' flag "
        "(reason_code today_full / rules_forbid_today / nothing_in_horizon) with the earliest options",
        tag="clinic",
        body=OrdersWrittenBody,
        response=ClinicAnswer,
    ),
    api_route(
        "/api/v1/clinic/book",
        book,
        methods=("POST",),
        roles=CLINICIANS,
        summary="Book today's plan in one step (clinic channel); a slot gone meanwhile answers 409 with new plans",
        tag="clinic",
        body=ClinicBookBody,
        response=ClinicBookReply,
        status=201,
    ),
]
