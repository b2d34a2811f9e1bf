"""The utilisation wall's figures for one hospital-day, shaped for the charts (pure, apart from
`compute`, which reads them through app/db/metrics_repo.py).

Definitions (DOMAIN.md section 8):
* bookings by department and channel — appointments *made* that day, whatever day the exam is on;
* device utilisation — exam minutes booked (the exam types' durations) / open minutes of the
  device's slots that day;
* slot utilisation — places booked / places released (capacity of open slots) that day;
* cancel rate — appointments for the day that were cancelled / all made for it (moves to another
  slot are not cancels);
* no-show rate — needs the check-in of the closed loop, not built yet: reported as null;
* days from order to exam — mean over the day's live appointments, per modality;
* same-day rate for outpatients — share of the day's outpatient exams ordered that same day
  (until the closed loop records completion, scheduled exams stand in for completed ones).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from app.db import metrics_repo
from app.planning.catalogue import Catalogue

CHANNEL_NAMES = {
    "clinic": "诊间",
    "desk": "预约中心",
    "self": "自助/手机",
    "ward": "病区",
    "emergency": "急诊",
    "checkup": "体检",
}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def shape(figures: Mapping[str, Sequence[Mapping[str, Any]]], catalogue: Catalogue, day: date) -> dict[str, Any]:
    depts = catalogue.departments

    def dept_name(dept_id: str) -> str:
        d = depts.get(dept_id)
        return d.name if d is not None else dept_id

    bookings = [
        {
            "department_id": r["department_id"],
            "department": dept_name(r["department_id"]),
            "channel": r["channel"],
            "channel_name": CHANNEL_NAMES.get(r["channel"], r["channel"]),
            "count": r["n"],
        }
        for r in figures["bookings"]
    ]
    devices = [
        {
            "resource_id": r["id"],
            "name": r["name"],
            "department_id": r["department_id"],
            "modality": r["modality"],
            "open_min": r["open_min"],
            "exam_min": r["exam_min"],
            "utilisation": _rate(r["exam_min"], r["open_min"]),
        }
        for r in figures["resources"]
    ]
    per_dept: dict[str, dict[str, Any]] = {}
    for r in figures["resources"]:
        d = per_dept.setdefault(
            r["department_id"],
            {
                "department_id": r["department_id"],
                "department": dept_name(r["department_id"]),
                "released": 0,
                "booked": 0,
            },
        )
        d["released"] += r["released"]
        d["booked"] += r["booked"]
    outcomes = {r["department_id"]: r for r in figures["outcomes"]}
    departments = []
    for dept_id in sorted(per_dept):
        d = per_dept[dept_id]
        o = outcomes.get(dept_id)
        live, cancelled = (o["live"], o["cancelled"]) if o is not None else (0, 0)
        departments.append(
            {
                **d,
                "slot_utilisation": _rate(d["booked"], d["released"]),
                "cancelled": cancelled,
                "cancel_rate": _rate(cancelled, live + cancelled),
                "no_show_rate": None,
            }
        )
    waits = [{"modality": r["modality"], "n": r["n"], "avg_days": round(r["avg_days"], 2)} for r in figures["waits"]]
    same = figures["same_day"][0] if figures["same_day"] else {"n": 0, "same_day": 0}
    released = sum(d["released"] for d in departments)
    booked = sum(d["booked"] for d in departments)
    cancelled = sum(d["cancelled"] for d in departments)
    live = sum(o["live"] for o in figures["outcomes"])
    return {
        "day": day.isoformat(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "totals": {
            "bookings_made": sum(b["count"] for b in bookings),
            "released": released,
            "booked": booked,
            "slot_utilisation": _rate(booked, released),
            "device_utilisation": _rate(sum(x["exam_min"] for x in devices), sum(x["open_min"] for x in devices)),
            "cancel_rate": _rate(cancelled, live + cancelled),
            "no_show_rate": None,
            "outpatients": same["n"],
            "outpatient_same_day": same["same_day"],
            "outpatient_same_day_rate": _rate(same["same_day"], same["n"]),
        },
        "bookings": bookings,
        "devices": devices,
        "departments": departments,
        "waits": waits,
    }


async def compute(pool: asyncpg.Pool, catalogue: Catalogue, hospital_id: str, tz: str, day: date) -> dict[str, Any]:
    figures = await metrics_repo.day_figures(pool, hospital_id, day, tz)
    return shape(figures, catalogue, day)
