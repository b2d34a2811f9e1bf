"""The de-identified statistics export for department heads (个人信息保护法: 去标识化).

`GET /api/v1/stats/export?from=YYYY-MM-DD&to=YYYY-MM-DD[&department=RAD]` answers a CSV (UTF-8 with
a BOM, so Excel opens it) of the appointments whose exam day falls in the range, one line each:

- patient_key: HMAC-SHA256 of the patient id under HY_PII_PSEUDONYM_KEY (16 hex): the same patient
  has the same key in every export, and only the key's holder could link it back;
- age_band: age on the exam day in ten-year bands (0-9 ... 80-89, 90+); sex: M / F / U;
- exam_code, exam_name, modality, department: the exam and the department doing it;
- channel, patient_class, status: how it was booked, outpatient / inpatient / ..., and booked /
  cancelled / rescheduled / no_show;
- exam_date, exam_hour, booked_hour, ended_hour, lead_days: the exam day, the exam's start, the
  booking and its end (cancel / move) truncated to the hour in the hospital's zone, and the days
  from booking to exam.

Nothing else about the patient: no name, MRN, ID number, phone, birth date, order number, bed,
doctor or free text. A department head exports his own department (his account's); the system
administrator any one, or all. At most 366 days per export. Every export is audited.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from datetime import date, datetime
from typing import Any

import msgspec
from starlette.responses import Response, StreamingResponse

from app.api.routing import Call, api_route
from app.db import patient_repo, stats_repo
from app.errors import Forbidden, NotFound, ValidationFailed
from app.security.actor import Actor
from app.security.crypto import KeyRing, pii_keys

EXPORTERS = frozenset({"dept_head", "sys_admin"})
MAX_DAYS = 366
COLUMNS = (
    "patient_key",
    "age_band",
    "sex",
    "exam_code",
    "exam_name",
    "modality",
    "department",
    "channel",
    "patient_class",
    "status",
    "exam_date",
    "exam_hour",
    "booked_hour",
    "ended_hour",
    "lead_days",
)
_CHUNK_ROWS = 500


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: date = msgspec.field(name="from")
    to: date
    department: str | None = None


def age_band(age: int | None) -> str:
    """Ten-year bands, 90 and over together; '' when unknown (a birth date after the exam)."""
    if age is None or age < 0:
        return ""
    if age >= 90:
        return "90+"
    low = age // 10 * 10
    return f"{low}-{low + 9}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:00")
    if not isinstance(value, str):
        return str(value)
    # A spreadsheet would run a text cell starting with these as a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_lines(rows: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def export_line(keys: KeyRing, row: Any) -> tuple[Any, ...]:
    """One CSV line of an appointment row (stats_repo.appointment_rows)."""
    return (
        keys.pseudonym(int(row["patient_id"])),
        age_band(row["age"]),
        row["gender"],
        row["exam_code"],
        row["exam_name"],
        row["modality"],
        row["department_id"],
        row["channel"],
        row["patient_class"],
        row["status"],
        row["exam_day"],
        row["exam_hour"],
        row["booked_hour"],
        row["ended_hour"],
        row["lead_days"],
    )


def _department(actor: Actor, asked: str | None) -> str | None:
    """The department the actor may export: a department head his own, the administrator any."""
    if "sys_admin" in actor.roles or actor.department_id is None:
        return asked
    if asked is not None and asked != actor.department_id:
        raise Forbidden("只能导出本科室的统计数据", detail=f"department {asked} is not {actor.department_id}")
    return actor.department_id


async def export(call: Call) -> Response:
    q: ExportQuery = call.query
    if q.to < q.from_:
        raise ValidationFailed("结束日期早于开始日期", detail="to is before from")
    if (q.to - q.from_).days + 1 > MAX_DAYS:
        raise ValidationFailed(f"一次最多导出{MAX_DAYS}天", detail=f"at most {MAX_DAYS} days per export")
    s = call.services
    department = _department(call.staff, q.department)
    if department is not None and department not in s.catalogue.departments:
        raise NotFound(f"科室不存在：{department}", detail=f"department {department} not found")
    keys = pii_keys(s.settings)
    b = s.settings.booking
    rows = stats_repo.appointment_rows(s.pool, b.hospital_id, q.from_, q.to, department, b.timezone)
    first = await anext(rows, None)  # opens the snapshot: a database error is still a problem+json
    try:
        await patient_repo.audit(
            s.pool,
            call.staff,
            "export",
            "stats.appointments",
            f"{q.from_}/{q.to}",
            None,
            {"from": str(q.from_), "to": str(q.to), "department": department, "deidentified": True},
        )
    except BaseException:
        await rows.aclose()  # gives its connection back now
        raise

    async def body() -> AsyncIterator[bytes]:
        yield ("\ufeff" + csv_lines([COLUMNS])).encode()
        if first is None:
            return
        chunk = [export_line(keys, first)]
        async for row in rows:
            chunk.append(export_line(keys, row))
            if len(chunk) >= _CHUNK_ROWS:
                yield csv_lines(chunk).encode()
                chunk = []
        if chunk:
            yield csv_lines(chunk).encode()

    name = f"appointments_{q.from_}_{q.to}{'_' + department if department else ''}.csv"
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )


routes = [
    api_route(
        "/api/v1/stats/export",
        export,
        roles=EXPORTERS,
        summary="De-identified appointments as CSV (pseudonymous patient key, age band, sex; no name, ID, "
        "phone or MRN): ?from=&to=[&department=] (audited)",
        tag="stats",
        query=ExportQuery,
        media_type="text/csv",
    ),
]
