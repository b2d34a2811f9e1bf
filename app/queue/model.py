"""Pure parts of the day of the exam: priority classes and marks, tickets, the spoken line,
expected start times in a room's queue, and who must be told when the queue is reordered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

# Priority classes, most urgent first (DOMAIN.md section 6).
EMERGENCY, GREEN, MARKED, NORMAL = 0, 1, 2, 3
REQUESTABLE: Mapping[str, int] = {"emergency": EMERGENCY, "green": GREEN, "normal": NORMAL}
MARK_NAMES: Mapping[str, str] = {
    "emergency": "急诊",
    "green": "绿色通道",
    "elderly": "老年",
    "child": "儿童",
    "military": "军人",
}


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def priority_of(
    *,
    order_priority: str,
    patient_class: str,
    birth_date: date,
    day: date,
    military: bool,
    elderly_age: int,
    child_age: int,
    requested: str | None = None,
) -> tuple[int, str]:
    """(priority class, mark) of a patient checking in. An emergency order is always emergency;
    a requested class (an authorised role's green channel or emergency insertion) can only raise
    the class; otherwise age and the military fact give the marked class."""
    if order_priority == "emergency" or patient_class == "emergency" or requested == "emergency":
        return EMERGENCY, "emergency"
    if requested == "green":
        return GREEN, "green"
    age = age_on(birth_date, day)
    if age >= elderly_age:
        return MARKED, "elderly"
    if age < child_age:
        return MARKED, "child"
    if military:
        return MARKED, "military"
    return NORMAL, ""


def ticket_text(ticket: int) -> str:
    return f"{ticket:04d}"


def room_call_name(name: str, location: str) -> str:
    """What the voice call names: the room part of the location ('医技楼1层 CT2室' -> 'CT2室'),
    else the resource's name up to any bracket."""
    if location.strip():
        return location.split()[-1]
    return name.split("(")[0].split("（")[0].strip()


def call_line(ticket: int, room: str) -> str:
    """The spoken line (number and room only: never a name)."""
    return f"请 {ticket_text(ticket)} 号 到 {room} 检查"


def expected_starts(state: Mapping[str, Any], now_ms: int) -> dict[str, int]:
    """Expected start (epoch ms) of everyone called or waiting, one patient at a time in the room:
    whoever is in the exam finishes first (started at `sa`, `dur` minutes), the called go next, then
    the line in order; nobody is expected before their appointment time."""
    free = now_ms
    for e in state.get("in_exam", []):
        started = int(e.get("sa") or 0) or now_ms
        free = max(free, started + int(e["dur"]) * 60_000)
    out: dict[str, int] = {}
    for e in [*reversed(state.get("calling", [])), *state.get("waiting", [])]:
        start = max(free, int(e["at"]) * 1000)
        out[str(e["id"])] = start
        free = start + int(e["dur"]) * 60_000
    return out


def delayed(before: Mapping[str, int], after: Mapping[str, int], threshold_ms: int) -> list[tuple[str, int, int]]:
    """(id, old, new) of everyone whose expected start moved later by more than the threshold."""
    return [
        (i, before[i], t)
        for i, t in sorted(after.items(), key=lambda kv: kv[1])
        if i in before and t - before[i] > threshold_ms
    ]


def waiting_ids(state: Mapping[str, Any]) -> list[str]:
    return [str(e["id"]) for e in state.get("waiting", [])]


def public_entry(e: Mapping[str, Any], room: str) -> dict[str, Any]:
    """An entry as a waiting-room screen shows it."""
    return {
        "ticket": ticket_text(int(e["t"])),
        "name": e.get("nm", ""),
        "exam": e.get("ex", ""),
        "mark": e.get("mk", ""),
        "mark_name": MARK_NAMES.get(str(e.get("mk", "")), ""),
        "calls": e.get("calls", 0),
        "say": call_line(int(e["t"]), room),
    }


def sort_key(e: Mapping[str, Any]) -> tuple[int, int, int, int]:
    return (int(e["pc"]), int(e["at"]), int(e["ci"]), int(e["id"]))


def is_sorted(entries: Sequence[Mapping[str, Any]]) -> bool:
    keys = [sort_key(e) for e in entries]
    return keys == sorted(keys)
