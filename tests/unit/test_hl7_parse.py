"""Reading inbound HL7 messages and building their ACKs: pure, no servers. ACKs are read back with
an independent parser (the `hl7` package)."""

from __future__ import annotations

from datetime import date, datetime

import hl7
import pytest

from app.integrations.hl7.ack import build_ack, escape
from app.integrations.hl7.inbound_settings import hl7_inbound_settings
from app.integrations.hl7.parse import (
    Header,
    Rejection,
    parse,
    priority_of,
    sniff_header,
    unescape,
)
from app.integrations.hl7.parse import separators as seps_of

ID_NUMBER = "11010519491231002X"


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def msh(kind: str, control: str = "M1", charset: str = "", version: str = "2.5") -> str:
    return f"MSH|^~\\&|HIS|H1|HUIYUE|H1|20261130120000||{kind}|{control}|P|{version}||||||{charset}"


def rejected(raw: bytes) -> Rejection:
    with pytest.raises(Rejection) as exc:
        parse(raw)
    return exc.value


def test_charset_is_read_from_msh18_before_decoding() -> None:
    assert sniff_header(msh("ADT^A04", charset="GB18030").encode()).codec == "gb18030"
    assert sniff_header(msh("ADT^A04", charset="UNICODE UTF-8").encode()).codec == "utf-8"
    assert sniff_header(msh("ADT^A04").encode(), "gb18030").codec == "gb18030"  # empty: the configured default
    exc = rejected(msh("ADT^A04", charset="EBCDIC").encode())
    assert (exc.ack_code, exc.error_code, exc.field) == ("AR", 102, 18)
    assert exc.header is not None and exc.header.control_id == "M1"


def test_a_gb18030_order_reads_patient_visit_and_order() -> None:
    text = "\r".join(
        [
            msh("ORM^O01^ORM_O01", charset="GB18030"),
            seg(
                "PID",
                {1: "1", 3: f"P1^^^H1^MR~{ID_NUMBER}^^^^NNCHN", 5: "张三", 8: "", 13: "^PRN^PH^^^^^^^^^13812345678"},
            ),
            seg("PV1", {1: "1", 2: "I", 3: "W-GI^801^12"}),
            seg("ORC", {1: "nw", 2: "ORD1", 7: "^^^^^A", 12: "D001^李^医生", 16: "^患者要求", 17: "GI"}),
            seg("OBR", {1: "1", 2: "ORD1", 4: "CT-HEAD^头颅CT", 13: "头痛\\T\\三天"}),
            seg("ORC", {1: "CA", 2: "ORD2"}),
            seg("OBR", {1: "2", 4: "X^^^CT-CHEST", 5: "S"}),
        ]
    )
    msg = parse(text.encode("gb18030"))
    assert msg.is_order and msg.header.codec == "gb18030" and msg.header.message_type == "ORM^O01"
    p = msg.patient
    assert p is not None
    assert (p.mrn, p.name, p.id_number, p.phone) == ("P1", "张三", ID_NUMBER, "13812345678")
    assert p.birth_date == date(1949, 12, 31)  # no PID-7: taken from the ID number
    assert p.gender is None
    assert msg.visit is not None and (msg.visit.patient_class, msg.visit.location, msg.visit.bed) == (
        "inpatient",
        "W-GI",
        "12",
    )
    first, second = msg.orders
    assert (first.control, first.order_no, first.exam_code, first.priority) == ("NW", "ORD1", "CT-HEAD", "urgent")
    assert (first.clinical_note, first.department, first.doctor, first.reason) == (
        "头痛&三天",
        "GI",
        "李医生",
        "患者要求",
    )
    assert (second.control, second.exam_code, second.exam_code_alt, second.priority) == (
        "CA",
        "X",
        "CT-CHEST",
        "emergency",
    )


def test_names_identifiers_and_nulls() -> None:
    text = "\n".join(  # LF between segments is accepted too
        [
            msh("ADT^A08", charset="UTF-8", version="2.3"),
            seg(
                "PID",
                {1: "1", 2: "EXT9", 3: f"{ID_NUMBER[:-1]}1^^^^ID", 5: "欧阳^娜娜", 7: "19900307", 8: "O", 13: '""'},
            ),
        ]
    )
    p = parse(text.encode()).patient
    assert p is not None
    assert (p.mrn, p.name, p.gender, p.birth_date) == ("EXT9", "欧阳娜娜", "U", date(1990, 3, 7))
    assert (p.id_number, p.id_number_invalid, p.phone) == (None, True, "")  # bad number dropped; phone cleared


@pytest.mark.parametrize(
    ("raw", "ack_code", "code"),
    [
        (b"garbage", "AR", 100),
        (b"PID|1||P1", "AR", 100),
        (msh("ADT^A04", control="").encode() + b"\rPID|1||P1||X", "AR", 101),
        (msh("ADT^A04", version="2.9").encode() + b"\rPID|1||P1||X", "AR", 203),
        (msh("SIU^S12").encode() + b"\rPID|1||P1||X", "AR", 200),
        (msh("ADT^A99").encode() + b"\rPID|1||P1||X", "AR", 201),
        (msh("ADT^A04").encode() + b"\rXYZ|1", "AR", 100),
        (msh("ADT^A04").encode() + b"\rEVN|A04", "AE", 100),
        (msh("ADT^A04").encode() + b"\rPID|1||||X", "AE", 101),
        (msh("ORM^O01").encode() + b"\rPID|1||P1||X\rORC|SC|O1", "AE", 103),
        (msh("ORM^O01").encode() + b"\rPID|1||P1||X\rORC|NW|", "AE", 101),
        (msh("ADT^A04", charset="GB18030").encode() + b"\rPID|1||P1||\xff\xfe", "AR", 102),
    ],
)
def test_unreadable_or_unsupported_messages_are_rejected_with_a_code(raw: bytes, ack_code: str, code: int) -> None:
    exc = rejected(raw)
    assert (exc.ack_code, exc.error_code) == (ack_code, code), exc.text
    assert exc.zh and exc.en


def test_priority_and_escapes() -> None:
    assert [priority_of(c) for c in ("S", "A", "R", "T", "")] == ["emergency", "urgent", "routine", "routine", None]
    seps = seps_of("^~\\&")
    text = "a|b^c&d~e\\f"
    assert unescape(escape(text), seps) == text


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5", "2.6", "2.7"])
def test_ack_swaps_sender_and_receiver_and_reads_back_with_another_parser(version: str) -> None:
    header = Header(
        sending_application="HIS",
        sending_facility="H1",
        receiving_application="HUIYUE",
        receiving_facility="H1",
        message_code="ORM",
        trigger="O01",
        control_id="C-42",
        version=version,
        charset_label="GB18030",
        codec="gb18030",
    )
    refusal = Rejection("AE", 204, "检查申请不存在：A|B", "unknown placer order number A|B", segment="ORC", field=2)
    text = build_ack(
        header, "AE", message_id="HY1", application="HUIYUE", facility="h1", now=datetime(2026, 1, 1), rejection=refusal
    )
    ack = hl7.parse(text.encode("gb18030").decode("gb18030"))
    m = ack.segment("MSH")
    assert [str(m[i]) for i in (3, 4, 5, 6, 10, 18)] == ["HUIYUE", "H1", "HIS", "H1", "HY1", "GB18030"]
    assert str(m[9]) == "ACK^O01^ACK"
    assert str(m[12]) == (version if version != "2.7" else "2.5")
    a = ack.segment("MSA")
    assert (str(a[1]), str(a[2])) == ("AE", "C-42")
    assert unescape(str(a[3]), seps_of("^~\\&")).startswith("检查申请不存在：A|B")
    assert "204" in str(ack.segment("ERR"))


def test_settings_map_the_default_charset() -> None:
    s = hl7_inbound_settings({"HY_HL7_PORT": "3575", "HY_HL7_CHARSET": "GB18030"})
    assert (s.host, s.port, s.default_codec) == ("127.0.0.1", 3575, "gb18030")
    assert hl7_inbound_settings({}).port == 2575
    with pytest.raises(ValueError, match="HY_HL7_CHARSET"):
        hl7_inbound_settings({"HY_HL7_CHARSET": "EBCDIC"})
