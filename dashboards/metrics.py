"""The utilisation wall's figures for one hospital-day, shaped for the charts (pure, apart from
`compute`, which reads them through app/db/metrics_repo.py).

Definitions (DOMAIN.md section 8):
* bookings by department and channel — appointments *made* that day, whatever day the exam is on;
* device utilisation — exam minutes booked (the exam types' durations) / open minutes of the
  device's slots that day;
* slot utilisation — places booked / places released (capacity of open slots) that day;
* cancel rate — appointments for the day that were cancelled / all made for it (moves to another
  slot are not cancels);
* no-show rate — appointments for the day marked no-show / those live or no-show;
* days from order to exam — mean over the day's live appointments, per modality;
* same-day rate for outpatients — share of the day's scheduled outpatient exams ordered that same day.

From the closed loop's event log (order_event, queue_entry):
* punctuality — exams started that day: mean minutes from check-in to start, and the share
  started no later than 15 minutes after the appointment time;
* same-day completion — outpatient exams finished that day that were ordered the same day;
* report turnaround — reports verified that day: mean minutes from the end of the exam, and the
  share within `report_target` (DOMAIN.md: emergency DX 30 min, emergency CT/MR 1 h, outpatient
  CT/MR 4 h, inpatient CT/MR 6 h; measured in elapsed time — the standard's "working hours" for
  outpatients and inpatients would need the hospital's reporting rota, which the platform does not
  hold, so elapsed time is the stricter reading).
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
        live, cancelled, no_show = (o["live"], o["cancelled"], o["no_show"]) if o is not None else (0, 0, 0)
        departments.append(
            {
                **d,
                "slot_utilisation": _rate(d["booked"], d["released"]),
                "cancelled": cancelled,
                "cancel_rate": _rate(cancelled, live + cancelled),
                "no_show": no_show,
                "no_show_rate": _rate(no_show, live + no_show),
            }
        )
    waits = [{"modality": r["modality"], "n": r["n"], "avg_days": round(r["avg_days"], 2)} for r in figures["waits"]]
    same = figures["same_day"][0] if figures["same_day"] else {"n": 0, "same_day": 0}
    released = sum(d["released"] for d in departments)
    booked = sum(d["booked"] for d in departments)
    cancelled = sum(d["cancelled"] for d in departments)
    live = sum(o["live"] for o in figures["outcomes"])
    no_show = sum(d["no_show"] for d in departments)
    punct: Mapping[str, Any] = (
        figures["punctuality"][0] if figures["punctuality"] else {"n": 0, "avg_wait_min": None, "on_time": 0}
    )
    done = figures["completed"][0] if figures["completed"] else {"n": 0, "same_day": 0}
    reports = [
        {
            "modality": r["modality"],
            "patient_class": r["patient_class"],
            "n": r["n"],
            "avg_min": round(r["avg_min"], 1),
            "target_min": r["target_min"],
            "on_target_rate": _rate(r["on_target"], r["with_target"]),
        }
        for r in figures["reports"]
    ]
    with_target = sum(r["with_target"] for r in figures["reports"])
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
            "no_show_rate": _rate(no_show, live + no_show),
            "outpatients": same["n"],
            "outpatient_same_day": same["same_day"],
            "outpatient_same_day_rate": _rate(same["same_day"], same["n"]),
            "started": punct["n"],
            "checkin_to_start_min": round(punct["avg_wait_min"], 1) if punct["avg_wait_min"] is not None else None,
            "on_time_start_rate": _rate(punct["on_time"], punct["n"]),
            "outpatients_completed": done["n"],
            "same_day_completion_rate": _rate(done["same_day"], done["n"]),
            "reports_verified": sum(r["n"] for r in figures["reports"]),
            "report_on_target_rate": _rate(sum(r["on_target"] for r in figures["reports"]), with_target),
        },
        "reports": reports,
        "bookings": bookings,
        "devices": devices,
        "departments": departments,
        "waits": waits,
    }


async def compute(pool: asyncpg.Pool, catalogue: Catalogue, hospital_id: str, tz: str, day: date) -> dict[str, Any]:
    figures = await metrics_repo.day_figures(pool, hospital_id, day, tz)
    return shape(figures, catalogue, day)
