"""HL7 v2.5 SIU scheduling messages out of the outbox's events, and the reading of their ACKs.

Pure: `trigger_for` says which SIU event (if any) an outbox row becomes, `build_siu` turns an
appointment's facts into the message's bytes in the peer's character set, `read_ack` classifies
the peer's answer. The field mapping is documented in docs/outbound.md.

Event mapping:
- appointment.booked → S12, appointment.rescheduled → S13 (the new appointment; SCH-2 stays),
  appointment.cancelled → S15, order.status `no_show` → S26;
- order.status `pay` and `checked_in` → S14 (modification: the order was paid / the patient
  arrived; SCH-6 says which). Every other order.status event is no SIU (the booking functions'
  own order events duplicate the appointment topics; report states belong to ORU/webhooks).

Every message is built from the appointment's own row (an appointment's times and resource never
change; a reschedule makes a new one), so a message sent late still says what happened then, and
every attempt sends the same bytes: MSH-7 is the outbox row's time and MSH-10 `HY<outbox id>`.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from zoneinfo import ZoneInfo

import msgspec
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message

SENDING_APPLICATION = "HUIYUE"
CHARSETS = {"UTF-8": ("UNICODE UTF-8", "utf-8"), "GB18030": ("GB 18030-2000", "gb18030")}


class Trigger(enum.StrEnum):
    BOOKED = "S12"
    RESCHEDULED = "S13"
    MODIFIED = "S14"
    CANCELLED = "S15"
    NO_SHOW = "S26"


_TOPIC_TRIGGERS = {
    "appointment.booked": Trigger.BOOKED,
    "appointment.rescheduled": Trigger.RESCHEDULED,
    "appointment.cancelled": Trigger.CANCELLED,
}
_ORDER_EVENT_TRIGGERS = {"no_show": Trigger.NO_SHOW, "pay": Trigger.MODIFIED, "checked_in": Trigger.MODIFIED}
HL7_TOPICS: tuple[str, ...] = (*_TOPIC_TRIGGERS, "order.status")

# SCH-6 event reason and SCH-25 / AIS-10 filler status (HL7 table 0278) per trigger / order event.
_REASONS = {
    Trigger.BOOKED: ("BOOKED", "预约"),
    Trigger.RESCHEDULED: ("RESCHEDULED", "改约"),
    Trigger.CANCELLED: ("CANCELLED", "取消预约"),
    Trigger.NO_SHOW: ("NOSHOW", "爽约"),
    "pay": ("PAID", "已缴费"),
    "checked_in": ("ARRIVED", "已签到"),
}
_FILLER_STATUS = {
    Trigger.BOOKED: "Booked",
    Trigger.RESCHEDULED: "Booked",
    Trigger.MODIFIED: "Booked",
    Trigger.CANCELLED: "Cancelled",
    Trigger.NO_SHOW: "Noshow",
}
_ACTION = {
    Trigger.BOOKED: "A",
    Trigger.RESCHEDULED: "U",
    Trigger.MODIFIED: "U",
    Trigger.CANCELLED: "D",
    Trigger.NO_SHOW: "U",
}
_PATIENT_CLASS = {"outpatient": "O", "inpatient": "I", "emergency": "E", "checkup": "O"}


def trigger_for(topic: str, payload: dict[str, object]) -> tuple[Trigger, str] | None:
    """(SIU trigger, reason key) for an outbox row, or None when it is no SIU message."""
    if topic in _TOPIC_TRIGGERS:
        t = _TOPIC_TRIGGERS[topic]
        return t, t.value
    if topic == "order.status":
        event = payload.get("event")
        if event == "pay" and payload.get("to") != "paid":
            return None  # paid before it was booked: no appointment to modify yet
        if isinstance(event, str) and event in _ORDER_EVENT_TRIGGERS:
            t = _ORDER_EVENT_TRIGGERS[event]
            return t, (event if t is Trigger.MODIFIED else t.value)
    return None


class Peer(msgspec.Struct, frozen=True):
    """An HL7 receiver: MLLP address, MSH-5/6 names, the character set it reads."""

    name: str
    host: str
    port: int
    application: str = ""
    facility: str = ""
    charset: str = "UTF-8"  # or GB18030
    timeout_s: float = 10.0

    @property
    def destination(self) -> str:
        return f"hl7:{self.name}"


class AppointmentFacts(msgspec.Struct, frozen=True):
    """What one SIU message says about one appointment (read from PostgreSQL by the relay)."""

    appointment_id: int
    root_appointment_id: int  # the first appointment of this booking (before any reschedule)
    order_id: int
    order_no: str
    accession_no: str | None
    starts_at: datetime
    ends_at: datetime
    patient_mrn: str
    patient_name: str
    patient_gender: str
    patient_birth_date: date
    patient_class: str
    priority: str
    ordering_doctor: str
    ordering_department: str
    ward_id: str | None
    bed_no: str | None
    exam_code: str
    exam_name: str
    exam_minutes: int
    modality: str
    prep_text: str
    resource_id: str
    resource_name: str
    resource_kind: str  # device / room / physician
    resource_location: str
    resource_department: str
    campus_id: str
    campus_name: str
    ae_title: str | None
    booked_by: int | None
    reason: str = ""  # the cancellation / no-show reason as recorded


class MessageMeta(msgspec.Struct, frozen=True):
    control_id: str  # MSH-10
    created_at: datetime  # MSH-7: the outbox row's time, the same on every attempt
    sending_facility: str
    processing_id: str = "P"


def escape(text: str) -> str:
    """HL7 v2 escaping of a value with the default encoding characters; line breaks become spaces
    (a field of type ST cannot hold them; NTE lines are split beforehand)."""
    out = (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )
    return " ".join(out.splitlines()).strip() if ("\n" in out or "\r" in out) else out


def _c(*components: str | None) -> str:
    """Components of one field, each escaped, trailing empty ones dropped."""
    parts = [escape(c) if c else "" for c in components]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def hl7_time(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%Y%m%d%H%M%S%z")


def prep_lines(text: str, width: int = 200) -> list[str]:
    """The preparation text as NTE comment lines: one per line of the text, long ones cut."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        while line:
            lines.append(line[:width])
            line = line[width:].strip()
    return lines


def build_siu(
    trigger: Trigger, reason_key: str, facts: AppointmentFacts, peer: Peer, meta: MessageMeta, tz: ZoneInfo
) -> bytes:
    """The SIU message (structure SIU_S12) as bytes in the peer's character set."""
    hl7_charset, codec = CHARSETS[peer.charset]
    start, end = hl7_time(facts.starts_at, tz), hl7_time(facts.ends_at, tz)
    minutes = str(max(1, round((facts.ends_at - facts.starts_at).total_seconds() / 60)))
    status = _FILLER_STATUS[trigger]
    action = _ACTION[trigger]
    reason_code, reason_text = _REASONS[reason_key if reason_key in _REASONS else trigger]

    m = Message("SIU_S12", version="2.5", validation_level=VALIDATION_LEVEL.TOLERANT)
    msh = m.msh
    msh.msh_3 = SENDING_APPLICATION
    msh.msh_4 = _c(meta.sending_facility)
    if peer.application:
        msh.msh_5 = _c(peer.application)
    if peer.facility:
        msh.msh_6 = _c(peer.facility)
    msh.msh_7 = hl7_time(meta.created_at, tz)
    msh.msh_9 = f"SIU^{trigger.value}^SIU_S12"
    msh.msh_10 = meta.control_id
    msh.msh_11 = meta.processing_id
    msh.msh_12 = "2.5"
    msh.msh_15 = "AL"  # accept acknowledgement always (original mode ACK answered on the connection)
    msh.msh_16 = "NE"
    msh.msh_17 = "CHN"
    msh.msh_18 = hl7_charset

    sch = m.sch
    sch.sch_1 = _c(f"A{facts.appointment_id}", SENDING_APPLICATION)
    sch.sch_2 = _c(f"A{facts.root_appointment_id}", SENDING_APPLICATION)
    sch.sch_5 = _c(facts.resource_id, facts.resource_name, "L")
    sch.sch_6 = _c(reason_code, reason_text + (f"：{facts.reason}" if facts.reason else ""), "L")
    sch.sch_7 = _c(facts.exam_code, facts.exam_name, "L")
    sch.sch_8 = _c("NORMAL" if facts.priority == "routine" else facts.priority.upper(), None, "HL70277")
    sch.sch_9 = minutes
    sch.sch_10 = _c("min", "minutes", "ANS+")
    sch.sch_11 = f"^^^{start}^{end}"
    sch.sch_16 = _c(SENDING_APPLICATION, "预约中心")
    sch.sch_20 = _c(str(facts.booked_by) if facts.booked_by is not None else "SYSTEM")
    sch.sch_25 = _c(status, None, "HL70278")
    sch.sch_26 = _c(facts.order_no, "HIS")
    if facts.accession_no:
        sch.sch_27 = _c(facts.accession_no, SENDING_APPLICATION)

    patient = m.add_group("SIU_S12_PATIENT")
    pid = patient.pid
    pid.pid_1 = "1"
    pid.pid_3 = _c(facts.patient_mrn, None, None, meta.sending_facility, "MR")
    pid.pid_5 = _c(facts.patient_name)
    pid.pid_7 = facts.patient_birth_date.strftime("%Y%m%d")
    pid.pid_8 = facts.patient_gender if facts.patient_gender in ("M", "F") else "U"
    pv1 = patient.pv1
    pv1.pv1_1 = "1"
    pv1.pv1_2 = _PATIENT_CLASS.get(facts.patient_class, "O")
    if facts.ward_id:
        pv1.pv1_3 = _c(facts.ward_id, None, facts.bed_no)
    pv1.pv1_8 = _c(None, facts.ordering_doctor)
    pv1.pv1_10 = _c(facts.ordering_department)

    resources = m.add_group("SIU_S12_RESOURCES")
    resources.rgs.rgs_1 = "1"
    resources.rgs.rgs_2 = action
    service = resources.add_group("SIU_S12_SERVICE")
    ais = service.ais
    ais.ais_1 = "1"
    ais.ais_2 = action
    ais.ais_3 = _c(facts.exam_code, facts.exam_name, "L")
    ais.ais_4 = start
    ais.ais_7 = minutes
    ais.ais_8 = _c("min", "minutes", "ANS+")
    ais.ais_10 = _c(status, None, "HL70278")
    for i, line in enumerate(prep_lines(facts.prep_text), start=1):
        nte = service.add_segment("NTE")
        nte.nte_1 = str(i)
        nte.nte_2 = "L"
        nte.nte_3 = escape(line)
        nte.nte_4 = _c("PI", "Patient Instructions", "HL70364")

    if facts.resource_kind == "device":
        general: Group = resources.add_group("SIU_S12_GENERAL_RESOURCE")
        aig = general.aig
        aig.aig_1 = "1"
        aig.aig_2 = action
        aig.aig_3 = _c(
            facts.resource_id, facts.resource_name, "L", facts.ae_title, None, "DCM" if facts.ae_title else None
        )
        aig.aig_4 = _c(facts.modality, None, "DCM")
        aig.aig_8 = start
        aig.aig_11 = minutes
        aig.aig_12 = _c("min", "minutes", "ANS+")
        aig.aig_14 = _c(status, None, "HL70278")

    location = resources.add_group("SIU_S12_LOCATION_RESOURCE")
    ail = location.ail
    ail.ail_1 = "1"
    ail.ail_2 = action
    # PL: point of care (department) ^ room (the resource) ^ bed ^ facility (campus) ... ^ description.
    ail.ail_3 = "^".join(
        [
            escape(facts.resource_department),
            escape(facts.resource_id),
            "",
            escape(facts.campus_id),
            "",
            "",
            "",
            "",
            escape(facts.resource_location or facts.resource_name),
        ]
    )
    ail.ail_4 = _c(facts.resource_kind, None, "L")
    ail.ail_6 = start
    ail.ail_9 = minutes
    ail.ail_10 = _c("min", "minutes", "ANS+")
    ail.ail_12 = _c(status, None, "HL70278")

    # AIP: the performing physician when the booked resource is one; always the ordering doctor
    # (as the referring personnel of the appointment), so every message names a person.
    people: list[tuple[str, str, tuple[str, str]]] = []
    if facts.resource_kind == "physician":
        people.append((facts.resource_id, facts.resource_name, ("PERF", "执行医生")))
    people.append(("", facts.ordering_doctor, ("REF", "开单医生")))
    for i, (person_id, person_name, (role, role_text)) in enumerate(people, start=1):
        personnel = resources.add_group("SIU_S12_PERSONNEL_RESOURCE")
        aip = personnel.aip
        aip.aip_1 = str(i)
        aip.aip_2 = action
        aip.aip_3 = _c(person_id or None, person_name)
        aip.aip_4 = _c(role, role_text, "L")
        aip.aip_6 = start
        aip.aip_9 = minutes
        aip.aip_10 = _c("min", "minutes", "ANS+")
        aip.aip_12 = _c(status, None, "HL70278")

    return str(m.to_er7()).encode(codec)


class AckResult(msgspec.Struct, frozen=True):
    accepted: bool
    code: str  # AA / AE / AR (CA / CE / CR), or "" when the answer is no ACK
    text: str


def read_ack(answer: bytes, control_id: str, charset: str = "UTF-8") -> AckResult:
    """Classify the peer's answer to message `control_id`: accepted on AA / CA; anything else
    (AE / AR / CE / CR, an ACK of another message, no MSA) is a refusal with the peer's text."""
    codec = CHARSETS.get(charset, CHARSETS["UTF-8"])[1]
    text = answer.decode(codec, errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        return AckResult(False, "", "answer is no HL7 message")
    sep = segments[0][3]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA" + sep)), None)
    if msa is None or len(msa) < 2:
        return AckResult(False, "", "answer has no MSA segment")
    code = msa[1].strip().upper()
    acked = msa[2].strip() if len(msa) > 2 else ""
    detail = msa[3].strip() if len(msa) > 3 else ""
    err = next((s.split(sep) for s in segments if s.startswith("ERR" + sep)), None)
    if err is not None and not detail:
        detail = sep.join(err[1:])[:200]
    if acked != control_id:
        return AckResult(False, code, f"ACK names message {acked!r}, expected {control_id!r}")
    return AckResult(code in ("AA", "CA"), code, detail)
