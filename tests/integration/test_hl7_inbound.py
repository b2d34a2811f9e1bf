"""The HL7 inbound listener on the real servers, driven by an independent HL7 client (the `hl7`
package's MLLPClient) and read back with its parser: patients in GB18030 and UTF-8, orders created,
cancelled and changed, duplicates, refusals, and malformed input that never stops the listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import hl7
import hl7.client
import pytest

from app.booking.service import BookItem
from app.integrations import mllp
from app.integrations.hl7.inbound import Hl7Inbound
from app.security.crypto import pii_keys
from app.services import Services
from tests.helpers import actor_for, assert_redis_matches_postgres, future_day, open_slots

ID_NUMBER = "11010519491231002X"  # a valid GB 11643 number (check character X)


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields) + 1))


def message(control_id: str, kind: str, *segments: str, charset: str = "UNICODE UTF-8", version: str = "2.5") -> str:
    msh = f"MSH|^~\\&|HIS|H1|HUIYUE|H1|20261130120000||{kind}|{control_id}|P|{version}||||||{charset}"
    return "\r".join([msh, *segments])


def pid(mrn: str, name: str = "张三", **extra: str) -> str:
    fields = {1: "1", 3: f"{mrn}^^^H1^MR", 5: name, 7: "19800101", 8: "M"}
    fields.update({int(k[1:]): v for k, v in extra.items()})
    return seg("PID", fields)


def order(control: str, order_no: str, exam: str = "CT-HEAD", **obr: str) -> tuple[str, str]:
    orc = seg("ORC", {1: control, 2: order_no, 12: "D001^李^医生", 17: "GI^消化内科"})
    fields = {1: "1", 2: order_no, 4: f"{exam}^检查"}
    fields.update({int(k[1:]): v for k, v in obr.items()})
    return orc, seg("OBR", fields)


class Peer:
    """The HIS side: one MLLP connection of the independent client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: hl7.client.MLLPClient | None = None

    async def send(self, msg: str | bytes, encoding: str = "utf-8") -> tuple[Any, bytes]:
        """The ACK parsed by the `hl7` package, and its raw bytes (unframed)."""

        def go() -> bytes:
            if self.client is None:
                self.client = hl7.client.MLLPClient("127.0.0.1", self.port, encoding=encoding)
            self.client.encoding = encoding
            return bytes(self.client.send_message(msg))

        raw = await asyncio.to_thread(go)
        assert raw.startswith(mllp.START) and raw.endswith(mllp.END), raw
        body = raw[1:-2]
        return hl7.parse(body.decode(encoding)), body

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def msa(ack: Any) -> tuple[str, str, str]:
    m = ack.segment("MSA")
    return str(m[1]), str(m[2]), str(m[3]) if len(m) > 3 else ""


@pytest.fixture
async def his(services: Services) -> AsyncIterator[Peer]:
    inbound = Hl7Inbound(
        services.pool,
        services.booking,
        hospital_id=services.settings.booking.hospital_id,
        timezone=services.settings.booking.timezone,
    )
    server = await mllp.serve(inbound.handle, "127.0.0.1", 0)
    peer = Peer(server.port)
    yield peer
    peer.close()
    await server.close()


async def _order(services: Services, order_no: str) -> Any:
    return await services.pool.fetchrow(
        """SELECT o.*, p.mrn FROM exam_order o JOIN patient p ON p.id = o.patient_id WHERE o.order_no = $1""",
        order_no,
    )


async def _book(services: Services, order_no: str, exam: str) -> tuple[int, Any]:
    row = await _order(services, order_no)
    day = future_day(services, 2)
    slot = (await open_slots(services, exam, day))[0]
    clerk = await actor_for(services, "clerk")
    (appt,) = await services.booking.book(clerk, row["patient_id"], "desk", [BookItem(row["id"], int(slot["id"]))])
    return appt.appointment_id, slot


async def test_adt_registers_a_patient_named_in_gb18030_and_updates_him_in_utf8(services: Services, his: Peer) -> None:
    a04 = message(
        "ADT-1",
        "ADT^A04^ADT_A01",
        seg("EVN", {1: "A04"}),
        pid("HL7-001", "张三丰", p13="13812345678", p19=ID_NUMBER),
        seg("PV1", {1: "1", 2: "O"}),
        charset="GB18030",
    )
    raw = a04.encode("gb18030")
    assert raw != a04.encode("utf-8")
    ack, body = await his.send(raw, "gb18030")
    assert msa(ack)[:2] == ("AA", "ADT-1")
    assert str(ack.segment("MSH")[18]) == "GB18030" and "患者已登记".encode("gb18030") in body
    row = await services.pool.fetchrow("SELECT * FROM patient WHERE mrn = 'HL7-001'")
    assert (row["name"], row["gender"], str(row["birth_date"])) == ("张三丰", "M", "1980-01-01")
    keys = pii_keys(services.settings)
    assert (keys.open_phone(row["phone_enc"]), keys.open_id_number(row["id_number_enc"])) == ("13812345678", ID_NUMBER)
    assert (row["phone"], row["id_number"]) == (None, None)  # stored encrypted only

    a08 = message("ADT-2", "ADT^A08^ADT_A01", seg("EVN", {1: "A08"}), pid("HL7-001", "张^三丰", p13="13900001111"))
    ack, _ = await his.send(a08)
    assert msa(ack) == ("AA", "ADT-2", "患者信息已更新 / patient updated")
    row = await services.pool.fetchrow("SELECT * FROM patient WHERE mrn = 'HL7-001'")
    assert (row["name"], keys.open_phone(row["phone_enc"]), keys.open_id_number(row["id_number_enc"])) == (
        "张三丰",
        "13900001111",
        ID_NUMBER,
    )
    audits = await services.pool.fetch(
        "SELECT actor_role, action, detail FROM audit_log WHERE patient_id = $1 ORDER BY id", row["id"]
    )
    assert [(a["actor_role"], a["action"]) for a in audits] == [("system", "hl7"), ("system", "hl7")]
    assert audits[0]["detail"]["created"] is True and audits[1]["detail"]["fields"] == ["phone"]
    assert "13900001111" not in str(audits[1]["detail"])  # which fields changed, never their values


async def test_utf8_registration_keeps_the_patient_and_drops_an_invalid_id_number(
    services: Services, his: Peer
) -> None:
    bad_id = ID_NUMBER[:-1] + "1"
    ack, body = await his.send(
        message("ADT-3", "ADT^A01", pid("HL7-002", "欧阳^娜娜", p3=f"HL7-002^^^H1^MR~{bad_id}^^^^NNCHN", p8="F"))
    )
    assert msa(ack)[0] == "AA" and "欧阳" not in body.decode()
    row = await services.pool.fetchrow("SELECT * FROM patient WHERE mrn = 'HL7-002'")
    assert (row["name"], row["gender"], row["id_number_enc"]) == ("欧阳娜娜", "F", None)


async def test_new_order_is_created_once_however_often_it_is_sent(services: Services, his: Peer) -> None:
    msg = message(
        "ORM-1",
        "ORM^O01^ORM_O01",
        pid("HL7-010", "王五"),
        seg("PV1", {1: "1", 2: "I", 3: "W-GI^801^12"}),
        *order("NW", "HIS-0001", "CT-HEAD", p5="A", p13="头痛三天"),
    )
    first, raw1 = await his.send(msg)
    assert msa(first)[:2] == ("AA", "ORM-1")
    _, raw2 = await his.send(msg)
    assert raw2 == raw1  # the stored ACK, byte for byte
    row = await _order(services, "HIS-0001")
    assert (row["mrn"], row["exam_code"], row["status"], row["priority"]) == ("HL7-010", "CT-HEAD", "ordered", "urgent")
    assert (row["patient_class"], row["ward_id"], row["bed_no"]) == ("inpatient", "W-GI", "12")
    assert (row["ordering_department_id"], row["ordering_doctor"], row["clinical_note"]) == ("GI", "李医生", "头痛三天")
    assert await services.pool.fetchval("SELECT count(*) FROM exam_order WHERE order_no = 'HIS-0001'") == 1
    assert await services.pool.fetchval("SELECT count(*) FROM patient WHERE mrn = 'HL7-010'") == 1
    assert await services.pool.fetchval("SELECT count(*) FROM hl7_inbound_message WHERE control_id = 'ORM-1'") == 1
    events = await services.pool.fetch("SELECT event, channel FROM order_event WHERE order_id = $1", row["id"])
    assert [(e["event"], e["channel"]) for e in events] == [("ordered", "hl7")]


async def test_concurrent_copies_of_a_message_apply_once_and_get_one_ack(services: Services, his: Peer) -> None:
    msg = message("ORM-C", "ORM^O01", pid("HL7-015", "孙七"), *order("NW", "HIS-0015", "CT-CHEST"))
    peers = [Peer(his.port) for _ in range(8)]
    try:
        answers = await asyncio.gather(*(p.send(msg) for p in peers))
    finally:
        for p in peers:
            p.close()
    assert len({raw for _, raw in answers}) == 1 and msa(answers[0][0])[0] == "AA"
    assert await services.pool.fetchval("SELECT count(*) FROM exam_order WHERE order_no = 'HIS-0015'") == 1
    assert await services.pool.fetchval("SELECT count(*) FROM hl7_inbound_message WHERE control_id = 'ORM-C'") == 1
    audits = await services.pool.fetchval(
        "SELECT count(*) FROM audit_log a JOIN patient p ON p.id = a.patient_id WHERE p.mrn = 'HL7-015'"
    )
    assert audits == 1


async def test_cancel_of_a_booked_order_cancels_the_appointment_and_returns_its_place(
    services: Services, his: Peer
) -> None:
    ack, _ = await his.send(message("OMG-1", "OMG^O19^OMG_O19", pid("HL7-020"), *order("NW", "HIS-0002", "ECG-REST")))
    assert msa(ack)[0] == "AA"
    appointment_id, slot = await _book(services, "HIS-0002", "ECG-REST")
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", slot["id"]) == slot["booked"] + 1

    cancel = message("OMG-2", "OMG^O19^OMG_O19", pid("HL7-020"), *order("CA", "HIS-0002", "ECG-REST"))
    ack, _ = await his.send(cancel)
    assert msa(ack) == ("AA", "OMG-2", "检查申请已取消 / order cancelled")
    assert await services.pool.fetchval("SELECT status FROM appointment WHERE id = $1", appointment_id) == "cancelled"
    assert (await _order(services, "HIS-0002"))["status"] == "cancelled"
    assert await services.pool.fetchval("SELECT booked FROM slot WHERE id = $1", slot["id"]) == slot["booked"]
    await assert_redis_matches_postgres(services, slot["day"])
    # The same cancel again: the stored ACK, nothing else happens.
    again, _ = await his.send(cancel)
    assert msa(again) == msa(ack)


async def test_cancel_after_check_in_is_refused_with_the_reason(services: Services, his: Peer) -> None:
    await his.send(message("OMG-3", "OMG^O19", pid("HL7-030"), *order("NW", "HIS-0003", "ECG-REST")))
    appointment_id, slot = await _book(services, "HIS-0003", "ECG-REST")
    clerk = await actor_for(services, "clerk")
    order_id = (await _order(services, "HIS-0003"))["id"]
    await services.orders.apply(clerk, order_id, "pay", "", "desk")
    services.queues.clock = lambda: slot["starts_at"].timestamp() - 600
    await services.queues.check_in(clerk, appointment_id, "desk")

    ack, _ = await his.send(message("OMG-4", "OMG^O19", pid("HL7-030"), *order("DC", "HIS-0003", "ECG-REST")))
    code, control, text = msa(ack)
    assert (code, control) == ("AE", "OMG-4")
    assert "已签到" in text and "checked_in" in text
    err = ack.segment("ERR")
    assert str(err[3][0][0]) == "207" and "已签到" in str(err[8])
    assert (await _order(services, "HIS-0003"))["status"] == "checked_in"
    assert await services.pool.fetchval("SELECT status FROM appointment WHERE id = $1", appointment_id) == "booked"


async def test_xo_changes_an_unbooked_order_and_is_refused_once_it_is_booked(services: Services, his: Peer) -> None:
    await his.send(message("ORM-5", "ORM^O01", pid("HL7-040"), *order("NW", "HIS-0005", "ECG-REST")))
    ack, _ = await his.send(message("ORM-6", "ORM^O01", pid("HL7-040"), *order("XO", "HIS-0005", "ECG-REST", p5="S")))
    assert msa(ack)[0] == "AA"
    row = await _order(services, "HIS-0005")
    assert row["priority"] == "emergency"
    changed = await services.pool.fetchrow(
        "SELECT detail, channel FROM order_event WHERE order_id = $1 AND event = 'changed'", row["id"]
    )
    assert changed["channel"] == "hl7" and changed["detail"]["priority"] == ["routine", "emergency"]

    await _book(services, "HIS-0005", "ECG-REST")
    ack, _ = await his.send(message("ORM-7", "ORM^O01", pid("HL7-040"), *order("XO", "HIS-0005", "ECG-REST", p5="R")))
    assert msa(ack)[0] == "AE" and "已预约" in msa(ack)[2]
    assert (await _order(services, "HIS-0005"))["priority"] == "emergency"


async def test_malformed_and_refused_messages_get_reasons_and_the_listener_keeps_answering(
    services: Services, his: Peer
) -> None:
    ack, _ = await his.send(b"\x00\xffthis is not hl7 at all")
    assert msa(ack)[:2] == ("AR", "") and "MSH" in msa(ack)[2]

    ack, _ = await his.send(pid("HL7-050"))
    assert msa(ack)[0] == "AR"

    ack, _ = await his.send(message("BAD-1", "ADT^A04", pid("HL7-050"), charset="EBCDIC"))
    assert msa(ack)[:2] == ("AR", "BAD-1") and "EBCDIC" in msa(ack)[2]
    assert str(ack.segment("ERR")[3][0][0]) == "102"

    # Declared GB18030, with bytes that are not GB18030 in the name.
    broken = (
        message("BAD-2", "ADT^A04", pid("HL7-050", "NAME"), charset="GB18030").encode().replace(b"NAME", b"\xff\xfe")
    )
    ack, _ = await his.send(broken, "gb18030")
    assert msa(ack)[:2] == ("AR", "BAD-2") and "GB18030" in msa(ack)[2]

    ack, _ = await his.send(message("BAD-3", "SIU^S12", pid("HL7-050")))
    assert msa(ack)[:2] == ("AR", "BAD-3") and str(ack.segment("ERR")[3][0][0]) == "200"

    unknown = message("BAD-4", "ORM^O01", pid("HL7-050"), *order("NW", "HIS-0050", "NO-SUCH-EXAM"))
    ack, raw = await his.send(unknown)
    assert msa(ack)[:2] == ("AE", "BAD-4") and "NO-SUCH-EXAM" in msa(ack)[2]
    assert str(ack.segment("ERR")[3][0][0]) == "103"
    assert (await his.send(unknown))[1] == raw  # a refusal is remembered like an acceptance
    assert await _order(services, "HIS-0050") is None
    assert await services.pool.fetchval("SELECT count(*) FROM patient WHERE mrn = 'HL7-050'") == 0

    ack, _ = await his.send(message("BAD-5", "OMG^O19", pid("HL7-050"), *order("CA", "HIS-NOPE")))
    assert msa(ack)[0] == "AE" and str(ack.segment("ERR")[3][0][0]) == "204"

    ack, _ = await his.send(message("", "ADT^A04", pid("HL7-050")))
    assert msa(ack)[0] == "AR" and "MSH-10" in msa(ack)[2]

    # Still listening on the same connection, and on a new one.
    ack, _ = await his.send(message("GOOD-1", "ADT^A04", pid("HL7-050", "赵六")))
    assert msa(ack)[:2] == ("AA", "GOOD-1")
    fresh = Peer(his.port)
    try:
        ack, _ = await fresh.send(message("GOOD-2", "ADT^A08", pid("HL7-050", "赵六")))
        assert msa(ack)[:2] == ("AA", "GOOD-2")
    finally:
        fresh.close()
    rejected = await services.pool.fetchval("SELECT count(*) FROM hl7_inbound_message WHERE status = 'AR'")
    assert rejected >= 5
