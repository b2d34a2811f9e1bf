"""FHIR search parameters and Bundles (pure).

Searches are strict: an unknown parameter is refused (400 OperationOutcome) rather than silently
ignored, so a client never mistakes an unfiltered answer for a filtered one. Supported forms:
dates with the prefixes eq (default), ge, gt, le, lt at day, minute or second precision (a date or
dateTime without an offset is in the hospital's zone); references as `Type/id` or a bare id (an
absolute URL's tail counts); tokens as `system|code` or `code`; comma-separated values are ORed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import urlencode

import msgspec

from app.fhir.outcome import FhirBadRequest

DEFAULT_COUNT = 50
MAX_COUNT = 200
COMMON = frozenset({"_count", "_offset", "_format"})

_DATE = re.compile(r"^(eq|ge|gt|le|lt)?(\d{4}-\d{2}-\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$")


class Query(msgspec.Struct):
    """A search's parameters: name -> values (a parameter may repeat, e.g. start=ge..&start=lt..)."""

    params: dict[str, list[str]]
    count: int = DEFAULT_COUNT
    offset: int = 0

    def values(self, name: str) -> list[str]:
        """Every value given for `name`, comma-separated ones split (OR)."""
        return [v.strip() for raw in self.params.get(name, []) for v in raw.split(",") if v.strip()]

    def one(self, name: str) -> str | None:
        vals = self.values(name)
        if len(vals) > 1:
            raise FhirBadRequest(f"查询参数 {name} 只能给一个值", detail=f"{name} takes one value")
        return vals[0] if vals else None

    def has(self, name: str) -> bool:
        return bool(self.values(name))


def parse_query(items: Iterable[tuple[str, str]], allowed: Iterable[str]) -> Query:
    known = frozenset(allowed) | COMMON
    params: dict[str, list[str]] = {}
    for name, value in items:
        if name not in known:
            raise FhirBadRequest(
                f"不支持的查询参数：{name}", detail=f"unsupported search parameter {name}; supported: {sorted(known)}"
            )
        params.setdefault(name, []).append(value)
    q = Query(params)
    q.count = _int(q.one("_count"), "_count", DEFAULT_COUNT, 0, MAX_COUNT)
    q.offset = _int(q.one("_offset"), "_offset", 0, 0, 100_000)
    return q


def _int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise FhirBadRequest(f"查询参数 {name} 须为整数", detail=f"{name} must be an integer") from None
    if not low <= n <= high:
        raise FhirBadRequest(f"查询参数 {name} 须在 {low} 到 {high} 之间", detail=f"{name} out of range")
    return n


def parse_datetime_range(value: str, tz: tzinfo, name: str = "date") -> tuple[str, datetime, datetime]:
    """(prefix, start, end) of a date search value: the interval its precision covers."""
    m = _DATE.match(value)
    if not m:
        raise FhirBadRequest(f"日期格式不正确：{value}", detail=f"{name}: cannot read {value!r}")
    prefix = m.group(1) or "eq"
    text = value[len(m.group(1) or "") :]
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirBadRequest(f"日期格式不正确：{value}", detail=f"{name}: cannot read {value!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=tz)
    if m.group(3) is None:
        step = timedelta(days=1)
    elif m.group(4) is None:
        step = timedelta(minutes=1)
    else:
        step = timedelta(seconds=1)
    return prefix, at, at + step


def date_bounds(values: Sequence[str], tz: tzinfo, name: str = "date") -> tuple[datetime | None, datetime | None]:
    """The half-open interval [low, high) every value's condition allows (values are ANDed)."""
    low: datetime | None = None
    high: datetime | None = None
    for value in values:
        prefix, start, end = parse_datetime_range(value, tz, name)
        lo, hi = {
            "eq": (start, end),
            "ge": (start, None),
            "gt": (end, None),
            "lt": (None, start),
            "le": (None, end),
        }[prefix]
        if lo is not None:
            low = lo if low is None else max(low, lo)
        if hi is not None:
            high = hi if high is None else min(high, hi)
    return low, high


def parse_reference(value: str, kind: str, name: str) -> str:
    """The id a reference value names: `Kind/id`, an absolute URL ending so, or a bare id."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        if parts[-2] != kind:
            raise FhirBadRequest(f"参数 {name} 须引用 {kind}", detail=f"{name}: expected a {kind} reference")
        ident = parts[-1]
    else:
        ident = parts[0]
    if not ident or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", ident):
        raise FhirBadRequest(f"参数 {name} 的引用不正确：{value}", detail=f"{name}: bad reference {value!r}")
    return ident


def parse_int_id(ident: str, name: str) -> int:
    if not ident.isdigit() or len(ident) > 18:
        raise FhirBadRequest(f"参数 {name} 须为数字编号", detail=f"{name}: {ident!r} is not a numeric id")
    return int(ident)


def parse_token(value: str) -> tuple[str | None, str]:
    if "|" in value:
        system, code = value.split("|", 1)
        return (system or None), code
    return None, value


def bundle(
    resources: Sequence[dict[str, Any]],
    *,
    base: str,
    self_url: str,
    total: int | None = None,
    next_url: str | None = None,
) -> dict[str, Any]:
    """A searchset Bundle of `resources` (all of them matches)."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "total": len(resources) if total is None else total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def page(
    resources: Sequence[dict[str, Any]], query: Query, *, base: str, path: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of the matches and its Bundle; `next` points at the following page when there is one."""
    window = list(resources[query.offset : query.offset + query.count])
    items = [(k, v) for k, vals in query.params.items() if k not in ("_offset", "_format") for v in vals]
    self_url = f"{base}/{path}"
    if query.params:
        self_url += "?" + urlencode(items + ([("_offset", str(query.offset))] if query.offset else []))
    next_url = None
    if query.offset + query.count < len(resources) and query.count > 0:
        rest = [(k, v) for k, v in items if k != "_count"] + [
            ("_count", str(query.count)),
            ("_offset", str(query.offset + query.count)),
        ]
        next_url = f"{base}/{path}?{urlencode(rest)}"
    return window, bundle(window, base=base, self_url=self_url, total=len(resources), next_url=next_url)
