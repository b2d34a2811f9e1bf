"""SIU building and ACK reading, checked with hl7apy's strict validation and the independent `hl7`
parser; the event mapping; the peer list setting."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from app.integrations.hl7.siu import (
    AppointmentFacts,
    MessageMeta,
    Peer,
    Trigger,
    build_siu,
    escape,
    read_ack,
    trigger_for,
)
from app.integrations.outbound.settings import outbound_settings, parse_peers

TZ = ZoneInfo("Asia/Shanghai")

FACTS = AppointmentFacts(
    appointment_id=42,
    root_appointment_id=40,
    order_id=7,
    order_no="HIS-0007",
    accession_no="HY0000000007",
    starts_at=datetime(2026, 12, 1, 0, 30, tzinfo=UTC),
    ends_at=datetime(2026, 12, 1, 0, 45, tzinfo=UTC),
    patient_mrn="MRN|01",
    patient_name="欧阳娜娜",
    patient_gender="F",
    patient_birth_date=date(1980, 1, 2),
    patient_class="inpatient",
    priority="routine",
    ordering_doctor="李医生",
    ordering_department="GI",
    ward_id="W3",
    bed_no="12",
    exam_code="CT-ABD",
    exam_name="上腹部CT平扫",
    exam_minutes=10,
    modality="CT",
    prep_text="检查前禁食4小时。\n去除金属物品 & 饰品^。",
    resource_id="CT1",
    resource_name="CT1 (西门子)",
    resource_kind="device",
    resource_location="医技楼1层 CT1室",
    resource_department="RAD",
    campus_id="main",
    campus_name="本院",
    ae_title="CT1_AE",
    booked_by=3,
)
META = MessageMeta("HY1001", datetime(2026, 11, 30, 4, 0, tzinfo=UTC), "H1")


def _build(trigger: Trigger, reason: str, charset: str = "UTF-8", facts: AppointmentFacts = FACTS) -> str:
    peer = Peer("ris", "127.0.0.1", 2576, "RIS", "RAD", charset)
    raw = build_siu(trigger, reason, facts, peer, META, TZ)
    return raw.decode("gb18030" if charset == "GB18030" else "utf-8")


@pytest.mark.parametrize(
    ("trigger", "reason", "status"),
    [
        (Trigger.BOOKED, "S12", "Booked"),
        (Trigger.RESCHEDULED, "S13", "Booked"),
        (Trigger.MODIFIED, "pay", "Booked"),
        (Trigger.CANCELLED, "S15", "Cancelled"),
        (Trigger.NO_SHOW, "S26", "Noshow"),
    ],
)
def test_every_siu_validates_strictly_and_parses_independently(trigger: Trigger, reason: str, status: str) -> None:
    text = _build(trigger, reason)
    parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    msg = hl7.parse(text)
    assert str(msg.segment("MSH")[9]) == f"SIU^{trigger.value}^SIU_S12"
    assert str(msg.segment("MSH")[10]) == "HY1001"
    assert str(msg.segment("MSH")[18]) == "UNICODE UTF-8"
    sch = msg.segment("SCH")
    assert str(sch[1][0][0]) == "A42" and str(sch[2][0][0]) == "A40"
    assert str(sch[11]) == "^^^20261201083000+0800^20261201084500+0800"
    assert str(sch[25][0][0]) == status
    assert str(sch[26][0][0]) == "HIS-0007" and str(sch[27][0][0]) == "HY0000000007"
    assert msg.unescape(str(msg.segment("PID")[3][0][0])) == "MRN|01"
    assert str(msg.segment("PID")[5]) == "欧阳娜娜"
    assert str(msg.segment("PV1")[2]) == "I"
    for name in ("RGS", "AIS", "AIG", "AIL", "AIP"):
        assert msg.segments(name), name
    assert str(msg.segment("AIS")[3][0][0]) == "CT-ABD"
    assert str(msg.segment("AIG")[3][0][3]) == "CT1_AE"
    assert str(msg.segment("AIL")[3][0][1]) == "CT1"
    notes = [msg.unescape(str(n[3])) for n in msg.segments("NTE")]
    assert notes == ["检查前禁食4小时。", "去除金属物品 & 饰品^。"]


def test_gb18030_peer_gets_gb18030_bytes() -> None:
    peer = Peer("emr", "127.0.0.1", 2577, "EMR", "", "GB18030")
    raw = build_siu(Trigger.BOOKED, "S12", FACTS, peer, META, TZ)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    msg = hl7.parse(raw.decode("gb18030"))
    assert str(msg.segment("MSH")[18]) == "GB 18030-2000"
    assert str(msg.segment("PID")[5]) == "欧阳娜娜"


def test_a_physician_resource_is_named_in_aip_and_a_room_has_no_aig() -> None:
    import msgspec

    facts = msgspec.structs.replace(FACTS, resource_kind="physician", resource_id="DR-WANG", resource_name="王主任")
    msg = hl7.parse(_build(Trigger.BOOKED, "S12", facts=facts))
    people = [(str(a[3][0][0]), str(a[3][0][1]), str(a[4][0][0])) for a in msg.segments("AIP")]
    assert people == [("DR-WANG", "王主任", "PERF"), ("", "李医生", "REF")]
    assert not [s for s in msg if str(s[0]) == "AIG"]
    room = msgspec.structs.replace(FACTS, resource_kind="room", prep_text="")
    msg = hl7.parse(_build(Trigger.BOOKED, "S12", facts=room))
    assert not [s for s in msg if str(s[0]) in ("AIG", "NTE")]


def test_cancel_reason_goes_into_sch_6() -> None:
    import msgspec

    facts = msgspec.structs.replace(FACTS, reason="患者要求")
    msg = hl7.parse(_build(Trigger.CANCELLED, "S15", facts=facts))
    assert str(msg.segment("SCH")[6]) == "CANCELLED^取消预约：患者要求^L"


def test_event_mapping() -> None:
    assert trigger_for("appointment.booked", {}) == (Trigger.BOOKED, "S12")
    assert trigger_for("appointment.rescheduled", {}) == (Trigger.RESCHEDULED, "S13")
    assert trigger_for("appointment.cancelled", {}) == (Trigger.CANCELLED, "S15")
    assert trigger_for("order.status", {"event": "no_show"}) == (Trigger.NO_SHOW, "S26")
    assert trigger_for("order.status", {"event": "pay", "to": "paid"}) == (Trigger.MODIFIED, "pay")
    assert trigger_for("order.status", {"event": "pay", "to": "ordered"}) is None  # paid before booking
    assert trigger_for("order.status", {"event": "checked_in"}) == (Trigger.MODIFIED, "checked_in")
    for event in ("booked", "rescheduled", "cancelled", "published", "started"):
        assert trigger_for("order.status", {"event": event}) is None
    assert trigger_for("patient.notice", {}) is None


def test_escape_covers_every_delimiter() -> None:
    assert escape("a|b^c~d\\e&f") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert escape("line1\nline2") == "line1 line2"


def test_read_ack() -> None:
    def ack(code: str, control: str = "HY1001", text: str = "") -> bytes:
        return f"MSH|^~\\&|RIS|RAD|HUIYUE|H1|20261130||ACK^S12|A1|P|2.5\rMSA|{code}|{control}|{text}".encode()

    assert read_ack(ack("AA"), "HY1001").accepted
    assert read_ack(ack("CA"), "HY1001").accepted
    refused = read_ack(ack("AE", text="患者不存在"), "HY1001")
    assert not refused.accepted and refused.code == "AE" and refused.text == "患者不存在"
    assert not read_ack(ack("AR"), "HY1001").accepted
    other = read_ack(ack("AA", control="HY9"), "HY1001")
    assert not other.accepted and "HY9" in other.text
    assert not read_ack(b"garbage", "HY1001").accepted
    assert not read_ack(b"MSH|^~\\&|RIS\rPID|1", "HY1001").accepted


def test_peer_list_setting() -> None:
    peers = parse_peers("ris=10.1.2.3:2576;app=RIS;facility=RAD, emr=emr.local:6661;charset=gb18030;timeout=3")
    assert [(p.name, p.host, p.port, p.application, p.facility, p.charset, p.timeout_s) for p in peers] == [
        ("ris", "10.1.2.3", 2576, "RIS", "RAD", "UTF-8", 10.0),
        ("emr", "emr.local", 6661, "EMR", "", "GB18030", 3.0),
    ]
    assert parse_peers("") == ()
    for bad in (
        "ris",
        "ris=host",
        "ris=host:99999",
        "RIS!=h:1",
        "ris=h:1;colour=red",
        "ris=h:1;charset=latin1",
        "a=h:1,a=h:2",
    ):
        with pytest.raises(ValueError, match="HY_HL7_PEERS"):
            parse_peers(bad)
    settings = outbound_settings({"HY_HL7_PEERS": "ris=127.0.0.1:2576", "HY_HOSPITAL_ID": "h1"})
    assert settings.sending_facility == "H1" and settings.peers[0].destination == "hl7:ris"
    with pytest.raises(ValueError, match="HY_HL7_PROCESSING_ID"):
        outbound_settings({"HY_HL7_PROCESSING_ID": "X"})
