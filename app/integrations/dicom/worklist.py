"""The DICOM Modality Worklist (MWL, PS3.4 K.6): what a modality's C-FIND finds.

An entry is a live appointment (status 'booked') of an order not yet started (booked, paid or
checked in). The query's keys are matched the DICOM way (PS3.4 C.2.2.2): an empty key matches
everything (universal matching) and asks for the attribute back; strings match as given or with the
wildcards `*` and `?`; dates and times match a single value or a range (`A-B`, `A-`, `-B`), and the
Scheduled Procedure Step Start Date and Time given together match as one date-time range; UIDs
match a list. Keys we cannot match on are returned empty (zero length), as the standard asks.

The answer carries only the keys asked for, plus Specific Character Set: UTF-8 (`ISO_IR 192`)
unless the query asks for GB18030 or GBK, which is then used for the Chinese names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from app.db import dicom_repo

logger = logging.getLogger(__name__)

SPS = "ScheduledProcedureStepSequence"
UTF8 = "ISO_IR 192"
CHINESE_SETS = ("GB18030", "GBK")

# Our modality codes are DICOM Modality defined terms already (PS3.3 C.7.3.1.1.1: DX digital
# radiography, ES endoscopy, ECG electrocardiography); the table is the one place to change that.
DICOM_MODALITY: Mapping[str, str] = {"CT": "CT", "MR": "MR", "DX": "DX", "US": "US", "ES": "ES", "ECG": "ECG"}
OUR_MODALITY: Mapping[str, str] = {v: k for k, v in DICOM_MODALITY.items()}
PRIORITY: Mapping[str, str] = {"emergency": "STAT", "urgent": "HIGH", "routine": "ROUTINE"}
SEX: Mapping[str, str] = {"M": "M", "F": "F"}  # 'U' (unknown) goes out empty
CODING_SCHEME = "99HUIYUE"  # private coding scheme of our exam codes (PS3.16 8.2: "99" + local name)
STEP_ID_PREFIX = "A"  # Scheduled Procedure Step ID = the slip's barcode: A + ten digits of the appointment id


class QueryError(Exception):
    """A key whose value cannot be read (a malformed date or time range)."""


class Code(msgspec.Struct, frozen=True):
    """One item of a code sequence (Requested Procedure Code Sequence, Scheduled Protocol Code Sequence)."""

    value: str
    scheme: str
    meaning: str

    def item(self) -> Dataset:
        ds = Dataset()
        ds.CodeValue = self.value
        ds.CodingSchemeDesignator = self.scheme
        ds.CodeMeaning = self.meaning
        return ds


class Entry(msgspec.Struct, frozen=True):
    """One worklist entry: its attributes by keyword, at the top level and in its (one) Scheduled
    Procedure Step item, and the local start time (for date-time range matching)."""

    appointment_id: int
    top: dict[str, Any]
    step: dict[str, Any]
    starts: datetime


def step_id(appointment_id: int) -> str:
    return f"{STEP_ID_PREFIX}{appointment_id:010d}"


def appointment_of_step(value: str) -> int | None:
    """The appointment id of one of our Scheduled Procedure Step IDs (None when it is not ours)."""
    text = value.strip().upper()
    digits = text[len(STEP_ID_PREFIX) :] if text.startswith(STEP_ID_PREFIX) else ""
    return int(digits) if digits.isdigit() and int(digits) > 0 else None


def _clip(text: str, length: int) -> str:
    return text[:length]


def entry_of(row: asyncpg.Record, tz: ZoneInfo) -> Entry:
    """A worklist entry from a row of dicom_repo.worklist, times in the hospital's time zone."""
    starts = row["starts_at"].astimezone(tz)
    ends = row["ends_at"].astimezone(tz)
    code = Code(row["exam_code"], CODING_SCHEME, _clip(row["exam_name"], 64))
    location = ""
    if row["patient_class"] == "inpatient":
        location = _clip(" ".join(x for x in (row["ward_name"], row["bed_no"]) if x), 64)
    top: dict[str, Any] = {
        "PatientName": _clip(row["patient_name"], 64),
        "PatientID": row["mrn"],
        "PatientBirthDate": row["birth_date"].strftime("%Y%m%d"),
        "PatientSex": SEX.get(row["gender"], ""),
        "AccessionNumber": row["accession_no"] or "",
        "ReferringPhysicianName": _clip(row["ordering_doctor"], 64),
        "RequestingPhysician": _clip(row["ordering_doctor"], 64),
        "RequestingService": _clip(row["ordering_department"], 64),
        "CurrentPatientLocation": location,
        "PlacerOrderNumberImagingServiceRequest": _clip(row["order_no"], 64),
        "FillerOrderNumberImagingServiceRequest": row["accession_no"] or "",
        "RequestedProcedureID": row["accession_no"] or "",
        "RequestedProcedureDescription": _clip(row["exam_name"], 64),
        "RequestedProcedureCodeSequence": code,
        "RequestedProcedurePriority": PRIORITY.get(row["priority"], "ROUTINE"),
        "StudyInstanceUID": row["study_uid"] or "",
    }
    step: dict[str, Any] = {
        "ScheduledStationAETitle": row["ae_title"],
        "ScheduledStationName": _clip(row["resource_id"], 16),
        "ScheduledProcedureStepLocation": _clip(row["resource_location"], 16),
        "ScheduledProcedureStepStartDate": starts.strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": starts.strftime("%H%M%S"),
        "ScheduledProcedureStepEndDate": ends.strftime("%Y%m%d"),
        "ScheduledProcedureStepEndTime": ends.strftime("%H%M%S"),
        "Modality": DICOM_MODALITY.get(row["modality"], row["modality"]),
        "ScheduledPerformingPhysicianName": "",
        "ScheduledProcedureStepDescription": _clip(row["exam_name"], 64),
        "ScheduledProtocolCodeSequence": code,
        "ScheduledProcedureStepID": step_id(row["appointment_id"]),
        "ScheduledProcedureStepStatus": "ARRIVED" if row["order_status"] == "checked_in" else "SCHEDULED",
    }
    return Entry(appointment_id=row["appointment_id"], top=top, step=step, starts=starts.replace(tzinfo=None))


# -- matching ---------------------------------------------------------------------------------------


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def _wild(pattern: str, *, fold: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if fold else 0))


def string_matches(pattern: str, value: str, *, fold: bool = False) -> bool:
    """Single value or wildcard matching (PS3.4 C.2.2.2.1, C.2.2.2.4); `fold` for PN."""
    if "*" in pattern or "?" in pattern:
        return _wild(pattern, fold=fold).fullmatch(value) is not None
    return pattern.casefold() == value.casefold() if fold else pattern == value


def _name_matches(pattern: str, value: str) -> bool:
    """A Person Name key against a name kept whole (Chinese names have no family^given split here):
    each component group of the key is tried, its `^` separators ignored."""
    groups = [g.replace("^", "").strip() for g in pattern.split("=")]
    return any(string_matches(g, value, fold=True) for g in groups if g)


def _date(text: str) -> date:
    digits = text.strip().replace(".", "")
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        raise QueryError(f"bad date {text!r}") from None


def date_range(text: str) -> tuple[date | None, date | None]:
    """`YYYYMMDD`, `A-B`, `A-` or `-B` as inclusive bounds."""
    text = text.strip()
    if "-" not in text:
        d = _date(text)
        return d, d
    lo, _, hi = text.partition("-")
    return (_date(lo) if lo.strip() else None), (_date(hi) if hi.strip() else None)


def _time(text: str, *, upper: bool) -> time:
    digits = text.strip().replace(":", "")
    whole, _, frac = digits.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (frac and not frac.isdigit()):
        raise QueryError(f"bad time {text!r}")
    hh, mm, ss = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int((frac + "000000")[:6]) if frac else 0
    if upper:  # the whole of the precision given: 10 -> 10:59:59.999999, 1030 -> 10:30:59.999999
        if len(whole) == 2:
            mm, ss, micro = 59, 59, 999999
        elif len(whole) == 4:
            ss, micro = 59, 999999
        elif not frac:
            micro = 999999
    try:
        return time(hh, mm, min(ss, 59), micro)
    except ValueError:
        raise QueryError(f"bad time {text!r}") from None


def time_range(text: str) -> tuple[time | None, time | None]:
    text = text.strip()
    if "-" not in text:
        return _time(text, upper=False), _time(text, upper=True)
    lo, _, hi = text.partition("-")
    return (_time(lo, upper=False) if lo.strip() else None), (_time(hi, upper=True) if hi.strip() else None)


class Query(msgspec.Struct):
    """The matching keys of one C-FIND identifier (those with a value), and the exact values that
    narrow the SQL."""

    top: dict[str, tuple[str, Any]]  # keyword -> (VR, value)
    step: dict[str, tuple[str, Any]]
    day_from: date | None = None
    day_to: date | None = None
    start_from: datetime | None = None  # local, naive (combined start date and time range)
    start_to: datetime | None = None
    time_from: time | None = None  # a time range without a date
    time_to: time | None = None


def _keys(ds: Dataset | None) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    if ds is None:
        return out
    for elem in ds:
        if elem.VR == "SQ" or not elem.keyword or elem.tag.group in (0x0000, 0x0002) or elem.tag == 0x00080005:
            continue
        if _values(elem.value):
            out[elem.keyword] = (str(elem.VR), elem.value)
    return out


def parse_query(identifier: Dataset) -> Query:
    """The matching keys of a worklist C-FIND identifier; QueryError for unreadable dates / times."""
    step_item = None
    if SPS in identifier and len(identifier[SPS].value) > 0:
        step_item = identifier[SPS].value[0]
    query = Query(top=_keys(identifier), step=_keys(step_item))
    sd = query.step.pop("ScheduledProcedureStepStartDate", None)
    st = query.step.pop("ScheduledProcedureStepStartTime", None)
    d_lo, d_hi = date_range(str(sd[1])) if sd else (None, None)
    t_lo, t_hi = time_range(str(st[1])) if st else (None, None)
    query.day_from, query.day_to = d_lo, d_hi
    if sd and st:  # PS3.4 C.2.2.2.5.2: a date and a time range together match as one date-time range
        query.start_from = datetime.combine(d_lo, t_lo or time.min) if d_lo else None
        query.start_to = datetime.combine(d_hi, t_hi or time.max) if d_hi else None
    elif st:
        query.time_from, query.time_to = t_lo, t_hi
    return query


def _exact(keys: Mapping[str, tuple[str, Any]], keyword: str) -> str | None:
    """A key's value when it is one value without wildcards (it can narrow the SQL)."""
    if keyword not in keys:
        return None
    vals = _values(keys[keyword][1])
    if len(vals) != 1 or "*" in vals[0] or "?" in vals[0]:
        return None
    return vals[0]


def _key_matches(vr: str, value: Any, have: Any) -> bool:
    patterns = _values(value)
    if not patterns:
        return True
    if isinstance(have, Code):
        return True  # sequences: no matching on their items
    got = str(have if have is not None else "")
    if vr == "UI":  # list of UID matching
        return got in patterns
    if vr == "PN":
        return any(_name_matches(p, got) for p in patterns)
    if vr == "DA":
        for p in patterns:
            lo, hi = date_range(p)
            if not got:
                return False
            d = _date(got)
            if (lo is None or d >= lo) and (hi is None or d <= hi):
                return True
        return False
    if vr == "TM":
        for p in patterns:
            lo_t, hi_t = time_range(p)
            if not got:
                return False
            t = _time(got, upper=False)
            if (lo_t is None or t >= lo_t) and (hi_t is None or t <= hi_t):
                return True
        return False
    return any(string_matches(p, got) for p in patterns)


def matches(query: Query, entry: Entry) -> bool:
    """Whether the entry answers the query (keys we hold no value for match universally)."""
    local = entry.starts
    if query.start_from is not None and local < query.start_from:
        return False
    if query.start_to is not None and local > query.start_to:
        return False
    if query.day_from is not None and local.date() < query.day_from:
        return False
    if query.day_to is not None and local.date() > query.day_to:
        return False
    if query.time_from is not None and local.time() < query.time_from:
        return False
    if query.time_to is not None and local.time() > query.time_to:
        return False
    for keys, values in ((query.top, entry.top), (query.step, entry.step)):
        for keyword, (vr, value) in keys.items():
            if keyword in values and not _key_matches(vr, value, values[keyword]):
                return False
    return True


# -- answers ----------------------------------------------------------------------------------------


def response_charset(identifier: Dataset) -> str:
    """GB18030 (or GBK) when the query names it, else UTF-8."""
    requested = _values(identifier.get("SpecificCharacterSet", ""))
    for term in requested:
        if term.upper() in CHINESE_SETS:
            return term.upper()
    return UTF8


def _element(tag: Any, vr: str, value: Any) -> DataElement:
    if isinstance(value, Code):
        return DataElement(tag, "SQ", Sequence([value.item()]))
    if vr == "SQ":
        return DataElement(tag, "SQ", Sequence([]))
    return DataElement(tag, vr, value if value not in (None, "") else None)


def _vr(elem: DataElement) -> str:
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:
        return str(elem.VR)


def _fill(target: Dataset, asked: Iterable[DataElement], values: Mapping[str, Any]) -> None:
    for elem in asked:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag == 0x00080005:
            continue
        vr = _vr(elem)
        if elem.keyword in values:
            target.add(_element(elem.tag, vr, values[elem.keyword]))
        else:  # asked for, unknown to us: returned empty
            target.add(_element(elem.tag, "SQ" if vr == "SQ" else vr, None))


def _all_step_keys() -> list[DataElement]:
    out = []
    for keyword in (
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "Modality",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepStatus",
        "ScheduledStationName",
        "ScheduledProcedureStepLocation",
    ):
        ds = Dataset()
        setattr(ds, keyword, None)
        out.append(ds[keyword])
    return out


def answer(identifier: Dataset, entry: Entry, charset: str) -> Dataset:
    """The entry as the query asked for it: its keys (empty when we hold nothing for them) and the
    character set. A Scheduled Procedure Step Sequence asked with no item gets the usual keys."""
    out = Dataset()
    out.SpecificCharacterSet = charset
    for elem in identifier:
        if elem.keyword == SPS:
            asked = list(elem.value[0]) if len(elem.value) > 0 else _all_step_keys()
            item = Dataset()
            _fill(item, asked, entry.step)
            out.add(DataElement(elem.tag, "SQ", Sequence([item])))
        else:
            _fill(out, [elem], entry.top)
    return out


# -- the service ------------------------------------------------------------------------------------


class WorklistService:
    def __init__(self, pool: asyncpg.Pool, hospital_id: str, tz: ZoneInfo, max_results: int = 2000) -> None:
        self.pool = pool
        self.hospital_id = hospital_id
        self.tz = tz
        self.max_results = max_results

    def _aware(self, local: datetime | None) -> datetime | None:
        return local.replace(tzinfo=self.tz) if local is not None else None

    async def find(self, identifier: Dataset) -> list[Dataset]:
        """The answers to one worklist C-FIND identifier (QueryError for unreadable keys)."""
        query = parse_query(identifier)
        modality = _exact(query.step, "Modality")
        if modality is not None and modality not in OUR_MODALITY:
            return []
        rows = await dicom_repo.worklist(
            self.pool,
            self.hospital_id,
            day_from=query.day_from,
            day_to=query.day_to,
            start_from=self._aware(query.start_from),
            start_to=self._aware(query.start_to),
            ae_title=_exact(query.step, "ScheduledStationAETitle"),
            accession_no=_exact(query.top, "AccessionNumber"),
            mrn=_exact(query.top, "PatientID"),
            modality=OUR_MODALITY[modality] if modality is not None else None,
            limit=self.max_results + 1,
        )
        if len(rows) > self.max_results:
            logger.warning("worklist query capped at %d entries", self.max_results)
            rows = rows[: self.max_results]
        charset = response_charset(identifier)
        out = []
        for row in rows:
            entry = entry_of(row, self.tz)
            if matches(query, entry):
                out.append(answer(identifier, entry, charset))
        return out
