"""Reading an inbound HL7 v2 message into the plain data HuiYue uses: patient (PID), visit (PV1),
orders (ORC with OBR / TQ1). Pure: bytes in, structs out, or a `Rejection` (see envelope.py for the
character set and the segments). docs/hl7-inbound.md has the field mapping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date

import msgspec

from app.integrations.hl7.charsets import CHARSETS
from app.integrations.hl7.envelope import (
    NULL,
    Header,
    Rejection,
    Segment,
    decode,
    read_segments,
    separators,
    sniff_header,
    unescape,
)
from app.security.idcard import birth_date_of, is_valid_id_number, normalize_id_number

__all__ = [
    "CHARSETS",
    "Header",
    "Inbound",
    "OrderIn",
    "PatientIn",
    "Rejection",
    "VisitIn",
    "parse",
    "separators",
    "sniff_header",
    "unescape",
]

PATIENT_EVENTS = frozenset({"A01", "A04", "A08", "A28", "A31"})
ORDER_MESSAGES = {"ORM": "O01", "OMG": "O19"}
ORDER_CONTROLS = frozenset({"NW", "CA", "DC", "XO"})
# Identifier types (CX.5) that carry the resident ID number (身份证号) in PID-3.
NATIONAL_ID_TYPES = frozenset({"ID", "NNCHN", "NI", "CZ"})
MRN_TYPES = ("MR", "PI", "PT")
_PHONE = re.compile(r"^\+?[0-9][0-9\- ]{2,30}$")


class PatientIn(msgspec.Struct, frozen=True):
    mrn: str
    name: str | None = None
    gender: str | None = None  # M / F / U
    birth_date: date | None = None
    phone: str | None = None  # "" : the sender cleared it
    id_number: str | None = None  # "" : cleared; an invalid number is dropped (id_number_invalid)
    id_number_invalid: bool = False


class VisitIn(msgspec.Struct, frozen=True):
    patient_class: str | None = None  # outpatient / inpatient / emergency
    location: str | None = None  # PV1-3.1: the ward (or clinic) code
    bed: str | None = None


class OrderIn(msgspec.Struct, frozen=True):
    control: str  # NW / CA / DC / XO
    order_no: str
    exam_code: str | None = None
    exam_code_alt: str | None = None  # OBR-4.4, the alternate identifier
    priority: str | None = None  # routine / urgent / emergency
    clinical_note: str | None = None
    department: str | None = None  # ORC-17.1
    doctor: str | None = None
    reason: str | None = None  # ORC-16: why it was cancelled or changed


class Inbound(msgspec.Struct, frozen=True):
    header: Header
    patient: PatientIn | None
    visit: VisitIn | None
    orders: tuple[OrderIn, ...] = ()

    @property
    def is_order(self) -> bool:
        return self.header.message_code in ORDER_MESSAGES


# -- the fields HuiYue uses ----------------------------------------------------------------------


def _given(value: str) -> str | None:
    """None when the sender left the field empty (keep what we have)."""
    return value or None


def gender_of_code(code: str) -> str | None:
    if not code:
        return None
    return {"M": "M", "F": "F"}.get(code.upper(), "U")  # O (other), U, A, N


def date_of_ts(value: str) -> date | None:
    """The date of an HL7 TS / DTM (YYYYMMDD[HHMM[SS]][+ZZZZ]); None for a partial or bad date."""
    digits = value[:8]
    if len(digits) < 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def patient_class_of(code: str) -> str | None:
    if not code:
        return None
    return {"I": "inpatient", "E": "emergency"}.get(code.upper(), "outpatient")


def priority_of(code: str) -> str | None:
    """OBR-5 / TQ.6 / TQ1-9: S (stat) emergency, A (ASAP) urgent, R routine; anything else routine."""
    if not code:
        return None
    return {"S": "emergency", "A": "urgent"}.get(code.upper()[:1], "routine")


def _phone(value: str) -> str | None:
    if value == NULL:
        return ""
    value = value.strip()
    return value if value and _PHONE.match(value) else None


def _name(pid: Segment) -> str | None:
    """PID-5: Chinese names usually come whole in XPN.1 (张三); 张^三 (family^given) joins up."""
    for rep in pid.repetitions(5):
        family, given = pid.component_of(rep, 1), pid.component_of(rep, 2)
        if family == NULL:
            continue
        name = family + given if family and given else (family or given)
        if name:
            return name[:100]
    return None


def _identifiers(pid: Segment) -> tuple[str, str | None]:
    """(MRN, resident ID number or None) from PID-3, PID-2 and PID-19."""
    mrn_by_type: dict[str, str] = {}
    others: list[str] = []
    national: str | None = None
    for rep in pid.repetitions(3):
        value, kind = pid.component_of(rep, 1), pid.component_of(rep, 5).upper()
        if not value or value == NULL:
            continue
        if kind in NATIONAL_ID_TYPES:
            national = national or value
        elif kind in MRN_TYPES:
            mrn_by_type.setdefault(kind, value)
        else:
            others.append(value)
    mrn = next((mrn_by_type[k] for k in MRN_TYPES if k in mrn_by_type), None) or (others[0] if others else "")
    mrn = mrn or pid.get(2)
    ssn = pid.get(19)
    if national is None and ssn:
        national = ssn
    return mrn, national


def patient_of(pid: Segment) -> PatientIn:
    mrn, national = _identifiers(pid)
    if not mrn or len(mrn) > 40:
        raise Rejection(
            "AE", 101, "PID-3缺少患者标识（病历号）", "PID-3 patient identifier (MRN) missing", segment="PID", field=3
        )
    id_number: str | None = None
    invalid = False
    if national == NULL:
        id_number = ""
    elif national:
        normalised = normalize_id_number(national)
        if is_valid_id_number(normalised):
            id_number = normalised
        else:
            invalid = True  # not refused: the rest of the registration still counts
    birth = date_of_ts(pid.get(7))
    if birth is None and id_number:
        birth = birth_date_of(id_number)
    return PatientIn(
        mrn=mrn,
        name=_name(pid),
        gender=gender_of_code(pid.get(8)),
        birth_date=birth,
        phone=next((p for p in (_phone(pid.get(13, c)) for c in (1, 12, 7)) if p is not None), None),
        id_number=id_number,
        id_number_invalid=invalid,
    )


def visit_of(pv1: Segment) -> VisitIn:
    return VisitIn(
        patient_class=patient_class_of(pv1.get(2)),
        location=_given(pv1.get(3, 1)),
        bed=_given(pv1.get(3, 3) or pv1.get(3, 2)),
    )


def _doctor(seg: Segment, n: int) -> str | None:
    """An XCN: the name (family + given) or else the ID."""
    name = seg.get(n, 2) + seg.get(n, 3)
    return (name or seg.get(n, 1))[:100] or None


def order_of(orc: Segment, obr: Segment | None, tq1: Segment | None) -> OrderIn:
    control = orc.get(1).upper()
    if control not in ORDER_CONTROLS:
        raise Rejection(
            "AE",
            103,
            f"不支持的申请单控制码：{control[:4] or '(空)'}（支持 NW、CA、DC、XO）",
            f"unsupported order control in ORC-1: {control[:4]!r} (NW, CA, DC, XO are)",
            segment="ORC",
            field=1,
        )
    order_no = orc.get(2) or (obr.get(2) if obr else "")
    if not order_no or len(order_no) > 60:
        raise Rejection("AE", 101, "ORC-2缺少申请单号", "ORC-2 placer order number missing", segment="ORC", field=2)
    priority = (
        (priority_of(obr.get(5)) if obr else None)
        or priority_of(orc.get(7, 6))
        or (priority_of(tq1.get(9)) if tq1 else None)
    )
    note = None
    if obr is not None:
        note = _given(obr.get(13)) or _given(obr.get(31, 2) or obr.get(31, 1))
    reason = _given(orc.get(16, 2) or orc.get(16, 1))
    return OrderIn(
        control=control,
        order_no=order_no,
        exam_code=_given(obr.get(4, 1)) if obr else None,
        exam_code_alt=_given(obr.get(4, 4)) if obr else None,
        priority=priority,
        clinical_note=note[:2000] if note else None,
        department=_given(orc.get(17, 1)),
        doctor=_doctor(orc, 12) or (_doctor(obr, 16) if obr else None),
        reason=reason[:200] if reason else None,
    )


def _orders(segments: Sequence[Segment]) -> tuple[OrderIn, ...]:
    """Each ORC with the OBR (and TQ1) that follow it, up to the next ORC."""
    groups: list[tuple[Segment, Segment | None, Segment | None]] = []
    for seg in segments:
        if seg.name == "ORC":
            groups.append((seg, None, None))
        elif seg.name == "OBR" and groups and groups[-1][1] is None:
            groups[-1] = (groups[-1][0], seg, groups[-1][2])
        elif seg.name == "TQ1" and groups and groups[-1][2] is None:
            groups[-1] = (groups[-1][0], groups[-1][1], seg)
    if not groups:
        raise Rejection("AE", 100, "申请单消息缺少ORC段", "order message without an ORC segment", segment="ORC")
    return tuple(order_of(*g) for g in groups)


def parse(raw: bytes, default_codec: str = "utf-8") -> Inbound:
    """Read one message: its header, patient, visit and orders. Raises Rejection."""
    header = sniff_header(raw, default_codec)
    try:
        return _read(raw, header)
    except Rejection as exc:
        if exc.header is None:
            exc.header = header
        raise


def _read(raw: bytes, header: Header) -> Inbound:
    if not header.control_id:
        raise Rejection("AR", 101, "MSH-10缺少消息控制号", "MSH-10 message control id missing", segment="MSH", field=10)
    text = decode(raw, header)
    segments = read_segments(text, header)
    msh = segments[0]
    if header.charset_label and msh.get(18).upper() != header.charset_label.upper():
        raise Rejection(
            "AR",
            102,
            "MSH段中含有与字符集不符的字节",
            "the MSH segment holds bytes that contradict MSH-18",
            segment="MSH",
            field=18,
        )
    code, trigger = header.message_code.upper(), header.trigger.upper()
    if code == "ADT":
        if trigger not in PATIENT_EVENTS:
            raise Rejection(
                "AR",
                201,
                f"不支持的ADT事件：{trigger[:4]}",
                f"unsupported ADT event {trigger[:4]!r} (A01, A04, A08, A28, A31 are)",
                segment="MSH",
                field=9,
            )
    elif code in ORDER_MESSAGES:
        if trigger != ORDER_MESSAGES[code]:
            raise Rejection(
                "AR",
                201,
                f"不支持的事件：{code}^{trigger[:4]}",
                f"unsupported event {code}^{trigger[:4]}",
                segment="MSH",
                field=9,
            )
    else:
        raise Rejection(
            "AR",
            200,
            f"不支持的消息类型：{code[:4] or '(空)'}",
            f"unsupported message type {code[:4]!r} (ADT, ORM, OMG are)",
            segment="MSH",
            field=9,
        )
    by_name: dict[str, Segment] = {}
    for seg in segments:
        by_name.setdefault(seg.name, seg)
    pid = by_name.get("PID")
    if pid is None and code == "ADT":
        raise Rejection("AE", 100, "消息缺少PID段", "message without a PID segment", segment="PID")
    patient = patient_of(pid) if pid is not None else None
    pv1 = by_name.get("PV1")
    visit = visit_of(pv1) if pv1 is not None else None
    orders = _orders(segments) if code in ORDER_MESSAGES else ()
    return Inbound(header=header, patient=patient, visit=visit, orders=orders)
