"""The auditor's (审计员) view of the audit log: search and CSV export.

Separation of duties (等保三级 三权分立): the auditor, and no one else — not the system
administrator — reads the log, and the auditor holds no other role (sql/0014). Every search and
every export is itself written to the log, with its filters, under the auditor's name.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import msgspec
import orjson
from starlette.responses import StreamingResponse

from app.api.routing import MAX_ID, Call, api_route
from app.db import audit_repo
from app.errors import ValidationFailed

AUDITOR = frozenset({"auditor"})
DEFAULT_SPAN = timedelta(days=30)
MAX_EXPORT_SPAN = timedelta(days=366)

# A date (2026-12-01: the whole day, in the hospital's zone) or a date and time, with or without
# an offset (without: the hospital's zone).
_WHEN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"
When = Annotated[str, msgspec.Meta(pattern=_WHEN, max_length=40)]
Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Word = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class AuditQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: When | None = msgspec.field(default=None, name="from")
    to: When | None = None  # a date is inclusive: to=2026-12-31 takes the whole of that day
    patient_id: Id | None = None
    actor_id: Id | None = None
    actor_role: Word | None = None
    action: Word | None = None
    object_type: Word | None = None
    object_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: When | None = msgspec.field(default=None, name="from")
    to: When | None = None
    patient_id: Id | None = None
    actor_id: Id | None = None
    actor_role: Word | None = None
    action: Word | None = None
    object_type: Word | None = None
    object_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class AuditEntry(msgspec.Struct):
    id: int
    at: datetime
    actor_id: int | None
    actor_username: str | None
    actor_name: str | None
    actor_role: str
    action: str
    object_type: str
    object_id: str
    patient_id: int | None
    ip: str
    terminal: str
    detail: Any


class AuditPage(msgspec.Struct):
    total: int
    limit: int
    offset: int
    start: datetime
    end: datetime
    items: list[AuditEntry]


def _zone(call: Call) -> tzinfo:
    return ZoneInfo(call.services.settings.booking.timezone)


def _instant(text: str, zone: tzinfo, *, end: bool) -> datetime:
    """A query bound as an instant; a bare date is the start of that day, or for `to` the start of
    the next (so that the day is included)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1) if end else day, time(), zone)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationFailed(f"时间无效：{text}", detail=f"bad date/time {text!r}: {exc}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _filter(call: Call, q: AuditQuery | ExportQuery) -> audit_repo.AuditFilter:
    zone = _zone(call)
    end = _instant(q.to, zone, end=True) if q.to else datetime.now(zone)
    start = _instant(q.from_, zone, end=False) if q.from_ else end - DEFAULT_SPAN
    if start >= end:
        raise ValidationFailed("开始时间须早于结束时间", detail="from must be before to")
    return audit_repo.AuditFilter(
        start, end, q.patient_id, q.actor_id, q.actor_role, q.action, q.object_type, q.object_id
    )


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(**{f: r[f] for f in AuditEntry.__struct_fields__})


async def search(call: Call) -> AuditPage:
    q: AuditQuery = call.query
    where = _filter(call, q)
    s = call.services
    total, rows = await audit_repo.search(s.pool, where, q.limit, q.offset)
    detail = where.described() | {"limit": q.limit, "offset": q.offset, "total": total, "returned": len(rows)}
    # Recorded before the answer goes out: no one reads the log without leaving a row in it.
    await audit_repo.record(s.pool, call.staff, "query", "audit_log", "", where.patient_id, detail)
    return AuditPage(total, q.limit, q.offset, where.start, where.end, [_entry(r) for r in rows])


CSV_COLUMNS = (
    ("id", "编号"),
    ("at", "时间"),
    ("actor_id", "操作人ID"),
    ("actor_username", "操作人账号"),
    ("actor_name", "操作人姓名"),
    ("actor_role", "角色"),
    ("action", "操作"),
    ("object_type", "对象类型"),
    ("object_id", "对象ID"),
    ("patient_id", "患者ID"),
    ("ip", "IP地址"),
    ("terminal", "终端"),
    ("detail", "详情"),
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, zone: tzinfo) -> str:
    """One cell as text. Text a spreadsheet would take for a formula (=, +, -, @ first) gets a
    leading apostrophe (CSV injection: object ids and details can carry what a caller typed)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(zone).isoformat()
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_text(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


async def _csv(call: Call, where: audit_repo.AuditFilter) -> AsyncIterator[bytes]:
    zone = _zone(call)
    # The BOM lets Excel, which most auditors open it with, read UTF-8 (Chinese) correctly.
    yield "\ufeff".encode() + _csv_text([[f"{zh} {en}" for en, zh in CSV_COLUMNS]])
    async for batch in audit_repo.export(call.services.pool, where):
        yield _csv_text([[csv_cell(r[en], zone) for en, _ in CSV_COLUMNS] for r in batch])


async def export(call: Call) -> StreamingResponse:
    q: ExportQuery = call.query
    where = _filter(call, q)
    if where.end - where.start > MAX_EXPORT_SPAN:
        raise ValidationFailed("一次最多导出366天", detail=f"export span over {MAX_EXPORT_SPAN.days} days")
    await audit_repo.record(
        call.services.pool, call.staff, "export", "audit_log", "", where.patient_id, where.described()
    )
    zone = _zone(call)
    name = f"audit-{where.start.astimezone(zone):%Y%m%d%H%M}-{where.end.astimezone(zone):%Y%m%d%H%M}.csv"
    return StreamingResponse(
        _csv(call, where),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )


routes = [
    api_route(
        "/api/v1/audit",
        search,
        roles=AUDITOR,
        summary="审计日志查询 The audit log, newest first (auditor only; the query is itself audited)",
        tag="audit",
        query=AuditQuery,
        response=AuditPage,
    ),
    api_route(
        "/api/v1/audit/export",
        export,
        roles=AUDITOR,
        summary="审计日志导出 The audit log as CSV, UTF-8 with BOM (auditor only; the export is itself audited)",
        tag="audit",
        query=ExportQuery,
        media_type="text/csv",
    ),
]
