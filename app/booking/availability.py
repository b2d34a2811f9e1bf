"""Availability as a caller sees it: the live index read from Redis, shaped per channel."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from app.booking.slot_store import SlotStore, SlotView
from app.errors import NotFound, ValidationFailed
from app.planning.catalogue import Catalogue

MAX_RANGE_DAYS = 31


class AvailableSlot(msgspec.Struct):
    slot_id: int
    resource_id: str
    resource_name: str
    department_id: str
    location: str
    day: date
    starts_at: datetime
    ends_at: datetime
    capacity: int
    booked: int
    available: int  # places this channel can take now
    locked: bool
    status: str


def places_for(view: SlotView, channel: str | None, now_s: float) -> tuple[int, bool]:
    """(places the channel can take, whether a lock covers it for the channel)."""
    locked = "*" in view.locked_channels or (channel is not None and channel in view.locked_channels)
    if view.status != "open" or view.ends_at <= now_s or locked:
        return 0, locked
    left = view.capacity - view.booked
    if channel is None:
        return max(0, left), locked
    return max(0, min(left, view.open_left + view.quota_left.get(channel, 0))), locked


def refusal(view: SlotView | None, channel: str, now_s: float) -> str | None:
    """Why the channel cannot take a place in the slot now (the grab script's reason codes), or
    None. Used as a read-only gate before the booking touches PostgreSQL; the grab decides."""
    if view is None:
        return "NO_SLOT"
    if view.status != "open":
        return "CLOSED"
    if view.ends_at <= now_s:
        return "PAST"
    if "*" in view.locked_channels or channel in view.locked_channels:
        return "LOCKED"
    if view.capacity - view.booked <= 0:
        return "FULL"
    if view.quota_left.get(channel, 0) <= 0 and view.open_left <= 0:
        return "QUOTA"
    return None


def check_range(date_from: date, date_to: date | None, today: date, horizon_days: int) -> list[date]:
    last = date_to or date_from
    if date_from < today:
        raise ValidationFailed("不能查询已过去的日期", detail=f"date_from {date_from} is before today {today}")
    if last < date_from:
        raise ValidationFailed("结束日期不能早于开始日期", detail="date_to before date_from")
    if (last - date_from).days >= MAX_RANGE_DAYS:
        raise ValidationFailed(f"一次最多查询 {MAX_RANGE_DAYS} 天", detail=f"range longer than {MAX_RANGE_DAYS} days")
    end = min(last, today + timedelta(days=horizon_days - 1))
    return [date_from + timedelta(days=n) for n in range((end - date_from).days + 1)]


async def find_available(
    store: SlotStore,
    catalogue: Catalogue,
    tz: ZoneInfo,
    days: list[date],
    *,
    exam: str | None,
    department: str | None,
    resource: str | None,
    channel: str | None,
    now_s: float,
    only_open: bool = False,
) -> list[AvailableSlot]:
    if exam is None and department is None and resource is None:
        raise ValidationFailed("请指定检查项目、科室或设备之一", detail="one of exam, department, resource is required")
    if exam is not None and exam not in catalogue.exam_types:
        raise NotFound(f"检查项目不存在：{exam}", detail=f"exam type {exam} not found")
    if department is not None and department not in catalogue.departments:
        raise NotFound(f"科室不存在：{department}", detail=f"department {department} not found")
    if resource is not None and resource not in catalogue.resources:
        raise NotFound(f"设备/诊室不存在：{resource}", detail=f"resource {resource} not found")
    resource_ids = catalogue.resources_for(exam, department, resource)
    out: list[AvailableSlot] = []
    for day in days:
        for view in await store.read_slots(day, resource_ids):
            places, locked = places_for(view, channel, now_s)
            if only_open and places == 0:
                continue
            res = catalogue.resources[view.resource_id]
            out.append(
                AvailableSlot(
                    slot_id=view.slot_id,
                    resource_id=view.resource_id,
                    resource_name=res.name,
                    department_id=res.department_id,
                    location=res.location,
                    day=day,
                    starts_at=datetime.fromtimestamp(view.starts_at, tz),
                    ends_at=datetime.fromtimestamp(view.ends_at, tz),
                    capacity=view.capacity,
                    booked=view.booked,
                    available=places,
                    locked=locked,
                    status=view.status,
                )
            )
    out.sort(key=lambda s: (s.starts_at, s.resource_id))
    return out
