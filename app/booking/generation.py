"""Slot generation from weekly templates: which windows a resource opens on which day. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import msgspec


class Template(msgspec.Struct, frozen=True):
    id: int
    resource_id: str
    weekday: int  # ISO: 1 = Monday
    start_time: time
    end_time: time
    window_min: int
    capacity: int
    quotas: dict[str, int]
    valid_from: date
    valid_to: date | None


class PlannedSlot(msgspec.Struct, frozen=True):
    resource_id: str
    template_id: int
    day: date
    starts_at: datetime
    ends_at: datetime
    capacity: int
    quotas: dict[str, int]


def windows(template: Template, day: date, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The template's windows on `day` as aware datetimes; a last window that would run past
    end_time is dropped rather than cut short."""
    if day.isoweekday() != template.weekday or day < template.valid_from:
        return []
    if template.valid_to is not None and day > template.valid_to:
        return []
    start = datetime.combine(day, template.start_time, tz)
    end = datetime.combine(day, template.end_time, tz)
    step = timedelta(minutes=template.window_min)
    out = []
    while start + step <= end:
        out.append((start, start + step))
        start += step
    return out


def plan_slots(templates: Iterable[Template], days: Sequence[date], tz: ZoneInfo) -> list[PlannedSlot]:
    planned: dict[tuple[str, datetime], PlannedSlot] = {}
    for day in days:
        for t in templates:
            for starts_at, ends_at in windows(t, day, tz):
                # Two templates opening the same window: the first one wins, deterministically.
                planned.setdefault(
                    (t.resource_id, starts_at),
                    PlannedSlot(t.resource_id, t.id, day, starts_at, ends_at, t.capacity, dict(t.quotas)),
                )
    return sorted(planned.values(), key=lambda p: (p.day, p.resource_id, p.starts_at))


def horizon_days(today: date, days: int) -> list[date]:
    return [today + timedelta(days=n) for n in range(days)]
