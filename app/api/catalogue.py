"""The exam catalogue and live availability."""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any

import msgspec

from app.api.routing import ANY_ROLE, Call, api_route
from app.booking.availability import AvailableSlot, check_range, find_available
from app.booking.service import CHANNELS
from app.errors import ValidationFailed
from app.planning.catalogue import Department, ExamType, Resource

BOOKING_VIEWERS = frozenset(
    {"doctor", "nurse", "clerk", "technician", "dept_admin", "dept_head", "sys_admin", "patient"}
)

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ExamTypeQuery(msgspec.Struct, forbid_unknown_fields=True):
    modality: Code | None = None
    department: Code | None = None


class AvailabilityQuery(msgspec.Struct, forbid_unknown_fields=True):
    date_from: date
    date_to: date | None = None
    exam: Code | None = None
    department: Code | None = None
    resource: Code | None = None
    channel: Code | None = None
    only_open: bool = False


class AvailabilityReply(msgspec.Struct):
    date_from: date
    date_to: date
    channel: str | None
    slots: list[AvailableSlot]


async def exam_types(call: Call) -> list[ExamType]:
    q: ExamTypeQuery = call.query
    return [
        e
        for e in call.services.catalogue.exam_types.values()
        if (q.modality is None or e.modality == q.modality)
        and (q.department is None or e.department_id == q.department)
    ]


async def departments(call: Call) -> list[Department]:
    return list(call.services.catalogue.departments.values())


class HospitalClock(msgspec.Struct):
    hospital_id: str
    timezone: str  # every local time on screens is shown in this zone, wherever the browser is
    today: date
    horizon_days: int


async def hospital(call: Call) -> HospitalClock:
    s = call.services
    b = s.settings.booking
    return HospitalClock(b.hospital_id, b.timezone, s.reconciler.today(), b.horizon_days)


async def resources(call: Call) -> list[dict[str, Any]]:
    cat = call.services.catalogue
    exams_of: dict[str, list[str]] = {rid: [] for rid in cat.resources}
    for code, rids in cat.capable.items():
        for rid in rids:
            exams_of.setdefault(rid, []).append(code)
    return [{**msgspec.to_builtins(r), "exam_codes": sorted(exams_of.get(r.id, []))} for r in cat.resources.values()]


async def availability(call: Call) -> AvailabilityReply:
    q: AvailabilityQuery = call.query
    s = call.services
    if q.channel is not None and q.channel not in CHANNELS:
        raise ValidationFailed(f"预约渠道无效：{q.channel}", detail=f"channel must be one of {CHANNELS}")
    days = check_range(q.date_from, q.date_to, s.reconciler.today(), s.settings.booking.horizon_days)
    slots = await find_available(
        s.store,
        s.catalogue,
        s.reconciler.tz,
        days,
        exam=q.exam,
        department=q.department,
        resource=q.resource,
        channel=q.channel,
        now_s=time.time(),
        only_open=q.only_open,
    )
    return AvailabilityReply(q.date_from, days[-1] if days else q.date_from, q.channel, slots)


routes = [
    api_route(
        "/api/v1/hospital",
        hospital,
        roles=ANY_ROLE,
        summary="The hospital's time zone, today's date there and the booking horizon",
        tag="catalogue",
        response=HospitalClock,
    ),
    api_route(
        "/api/v1/exam-types",
        exam_types,
        roles=ANY_ROLE,
        summary="Exam catalogue",
        tag="catalogue",
        query=ExamTypeQuery,
        response=list[ExamType],
    ),
    api_route(
        "/api/v1/departments",
        departments,
        roles=ANY_ROLE,
        summary="Departments",
        tag="catalogue",
        response=list[Department],
    ),
    api_route(
        "/api/v1/resources",
        resources,
        roles=ANY_ROLE,
        summary="Devices, rooms and physicians with their exams",
        tag="catalogue",
        response=list[Resource],
    ),
    api_route(
        "/api/v1/availability",
        availability,
        roles=BOOKING_VIEWERS,
        summary="Live availability by exam, department or resource over a date range, per channel",
        tag="booking",
        query=AvailabilityQuery,
        response=AvailabilityReply,
    ),
]
