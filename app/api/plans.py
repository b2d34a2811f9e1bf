"""Smart booking (智能预约): propose plans for a patient's pending orders, book a plan, explain."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import msgspec

from app.api.appointments import BookItemBody, Channel, Id, OverrideBody, overrides_of
from app.api.routing import Call, api_route
from app.booking.service import BookedAppointment, BookItem
from app.planning.plan_service import plan_payload
from app.planning.planner import Preferences

PLANNERS = frozenset({"doctor", "nurse", "clerk", "patient", "sys_admin"})
EXPLAINERS = PLANNERS | {"technician"}


class PreferencesBody(msgspec.Struct, forbid_unknown_fields=True):
    part_of_day: Literal["any", "morning", "afternoon"] = "any"
    avoid_days: Annotated[list[date], msgspec.Meta(max_length=31)] = msgspec.field(default_factory=list)
    campus: Annotated[str, msgspec.Meta(max_length=32)] | None = None

    def to_preferences(self) -> Preferences:
        return Preferences(self.part_of_day, list(self.avoid_days), self.campus)


class ProposeBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    channel: Channel
    order_ids: Annotated[list[Id], msgspec.Meta(max_length=8)] = msgspec.field(default_factory=list)
    earliest: date | None = None
    preferences: PreferencesBody = msgspec.field(default_factory=PreferencesBody)
    max_plans: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3


class BookPlanBody(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    channel: Channel
    items: Annotated[list[BookItemBody], msgspec.Meta(min_length=1, max_length=8)]
    overrides: Annotated[list[OverrideBody], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    earliest: date | None = None  # used when a slot is gone and the plan is made again
    preferences: PreferencesBody = msgspec.field(default_factory=PreferencesBody)


class BookPlanReply(msgspec.Struct):
    appointments: list[BookedAppointment]


class ExplainQuery(msgspec.Struct, forbid_unknown_fields=True):
    patient_id: Id
    order_id: Id
    slot_id: Id
    channel: Channel


async def propose(call: Call) -> dict[str, Any]:
    b: ProposeBody = call.body
    s = call.services
    proposal = await s.plans.propose(
        call.staff,
        b.patient_id,
        b.channel,
        order_ids=b.order_ids or None,
        earliest=b.earliest,
        preferences=b.preferences.to_preferences(),
        max_plans=b.max_plans,
    )
    return {
        "patient_id": proposal.patient_id,
        "channel": proposal.channel,
        "earliest": proposal.earliest,
        "order_ids": proposal.orders,
        "complete_search": proposal.result.complete_search,
        "plans": [plan_payload(p, s.rules, s.reconciler) for p in proposal.result.plans],
    }


async def book_plan(call: Call) -> BookPlanReply:
    b: BookPlanBody = call.body
    booked = await call.services.plans.book_plan(
        call.staff,
        b.patient_id,
        b.channel,
        [BookItem(i.order_id, i.slot_id) for i in b.items],
        overrides_of(b.overrides),
        preferences=b.preferences.to_preferences(),
        earliest=b.earliest,
    )
    return BookPlanReply(booked)


async def explain(call: Call) -> dict[str, Any]:
    q: ExplainQuery = call.query
    return await call.services.plans.explain(call.staff, q.patient_id, q.order_id, q.slot_id, q.channel)


routes = [
    api_route(
        "/api/v1/plans/propose",
        propose,
        methods=("POST",),
        roles=PLANNERS,
        tag="planning",
        body=ProposeBody,
        summary="Best plans for a patient's pending orders: fewest visits, least time, earliest; explained",
    ),
    api_route(
        "/api/v1/plans/book",
        book_plan,
        methods=("POST",),
        roles=PLANNERS,
        tag="planning",
        status=201,
        body=BookPlanBody,
        response=BookPlanReply,
        summary="Book a plan as one bundle; if a slot was taken, 409 plan_slot_taken with new alternatives",
        limit="booking",
    ),
    api_route(
        "/api/v1/plans/explain",
        explain,
        roles=EXPLAINERS,
        tag="planning",
        query=ExplainQuery,
        summary="Why an order can or cannot go into a slot: capacity and every rule it would break",
    ),
]
