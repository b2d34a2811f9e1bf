"""SIU to HL7 peers from the outbox: a small MLLP peer in the test parses every message with an
independent parser (the `hl7` package), records it, and ACKs, refuses, loses the answer or is down."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import hl7
import pytest

from app.booking.service import BookItem
from app.db import outbound_repo
from app.integrations import mllp
from app.integrations.hl7.siu import HL7_TOPICS, Peer
from app.integrations.outbound.relay import deliver_outbound
from app.integrations.outbound.settings import OutboundSettings
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots

Decide = Callable[[str, str, str], str]  # (control id, trigger, order no) -> ACK code, or "lose"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MllpPeer:
    """A receiving system: keeps each message once by MSH-10 (it dedupes, as the contract asks)."""

    def __init__(self, charset: str = "utf-8", decide: Decide | None = None) -> None:
        self.port = _free_port()
        self.charset = charset
        self.decide: Decide = decide or (lambda control, trigger, order_no: "AA")
        self.server: mllp.MllpServer | None = None
        self.seen: list[str] = []  # every control id received, repeats included
        self.kept: dict[str, hl7.Message] = {}  # accepted, once per control id, in arrival order

    async def up(self) -> None:
        self.server = await mllp.serve(self.handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def handle(self, message: bytes, peer: str) -> bytes:
        msg = hl7.parse(message.decode(self.charset))
        control = str(msg.segment("MSH")[10])
        trigger = str(msg.segment("MSH")[9][0][1])
        order_no = str(msg.segment("SCH")[26][0][0])
        self.seen.append(control)
        code = self.decide(control, trigger, order_no)
        if code == "lose":  # took it, then the connection dies before the ACK
            self.kept.setdefault(control, msg)
            raise ConnectionResetError("answer lost")
        if code == "AA":
            self.kept.setdefault(control, msg)
        ack = f"MSH|^~\\&|PEER|X|HUIYUE|H1|20261130120000||ACK^{trigger}|ACK{control}|P|2.5\rMSA|{code}|{control}|"
        return (ack + ("" if code == "AA" else "测试拒收")).encode(self.charset)

    def by_order(self) -> dict[str, list[hl7.Message]]:
        out: dict[str, list[hl7.Message]] = {}
        for msg in self.kept.values():
            out.setdefault(str(msg.segment("SCH")[26][0][0]), []).append(msg)
        return out


def _config(services: Services, *peers: Peer, **kw: Any) -> OutboundSettings:
    return OutboundSettings(
        peers=tuple(peers),
        sending_facility="H1",
        timezone=services.settings.booking.timezone,
        retry_base_s=1.0,
        retry_cap_s=30.0,
        **kw,
    )


def _trigger(msg: hl7.Message) -> str:
    return str(msg.segment("MSH")[9][0][1])


async def _deliveries(services: Services, destination: str) -> list[Any]:
    return await services.pool.fetch(
        """SELECT d.*, o.topic FROM outbox_delivery d JOIN outbox o ON o.id = d.outbox_id
            WHERE d.destination = $1 ORDER BY d.outbox_id""",
        destination,
    )


async def test_a_down_peer_delays_only_its_own_messages_and_loses_none(services: Services) -> None:
    ris, emr = MllpPeer(), MllpPeer("gb18030")
    config = _config(
        services,
        Peer("ris", "127.0.0.1", ris.port, "RIS", "RAD", timeout_s=2),
        Peer("emr", "127.0.0.1", emr.port, "EMR", "", "GB18030", timeout_s=2),
    )
    await emr.up()  # ris stays down for now
    try:
        now = datetime.now(UTC)
        await deliver_outbound(services.pool, config, now)  # the peers' destinations exist from here on
        first_outbox = await services.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")

        clerk = await actor_for(services, "clerk")
        day = future_day(services)
        slots = await open_slots(services, "CT-HEAD", day, limit=300)
        early = slots[0]
        later = [s for s in slots if s["starts_at"] >= early["ends_at"] + timedelta(hours=2)]
        assert len(later) >= 3
        (p_move, [o_move]), (p_cancel, [o_cancel]), (p_miss, [o_miss]) = await new_patients_with_orders(
            services.pool, 3, ["CT-HEAD"]
        )
        await services.pool.execute("UPDATE patient SET name = '欧阳娜娜', gender = 'F' WHERE id = $1", p_move)

        [moved_first] = await services.booking.book(clerk, p_move, "desk", [BookItem(o_move, later[0]["id"])])
        await services.orders.apply(clerk, o_move, "pay", "窗口缴费", "desk")
        moved = await services.booking.reschedule(clerk, moved_first.appointment_id, later[2]["id"], "desk", "患者要求")
        [cancelled] = await services.booking.book(clerk, p_cancel, "desk", [BookItem(o_cancel, later[1]["id"])])
        await services.booking.cancel(clerk, cancelled.appointment_id, "desk", "患者要求")
        [missed] = await services.booking.book(clerk, p_miss, "desk", [BookItem(o_miss, early["id"])])
        report = await services.orders.sweep_no_shows(early["ends_at"] + timedelta(minutes=31))
        assert report.marked >= 1

        hl7_rows = await services.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE id > $1 AND topic = ANY($2::text[])", first_outbox, list(HL7_TOPICS)
        )

        # ris is down: three calls, each probes once (the destination pauses between), nothing is lost.
        for minutes in (10, 20, 30):
            r = await deliver_outbound(services.pool, config, now + timedelta(minutes=minutes))
            assert r.destinations["hl7:ris"].down and r.destinations["hl7:ris"].delivered == 0
        rows = await _deliveries(services, "hl7:ris")
        assert len(rows) == hl7_rows
        # Events that are no SIU are settled without the peer; every SIU waits.
        assert {r["topic"] for r in rows if r["state"] == "skipped"} <= {"order.status"}
        assert {r["state"] for r in rows if r["topic"] != "order.status"} == {"pending"}
        pending = sum(1 for r in rows if r["state"] == "pending")
        assert sum(r["attempts"] for r in rows) == 3
        backlog = {b["name"]: b for b in await outbound_repo.backlog(services.pool, now + timedelta(minutes=30))}
        assert backlog["hl7:ris"]["pending"] == pending >= 7 and backlog["hl7:ris"]["failures"] == 3
        assert backlog["hl7:emr"]["pending"] == 0  # emr did not wait for ris

        await ris.up()
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=1))
        assert not r.destinations["hl7:ris"].down
    finally:
        await ris.down()
        await emr.down()

    order_nos = dict(
        await services.pool.fetch(
            "SELECT id, order_no FROM exam_order WHERE id = ANY($1::bigint[])", [o_move, o_cancel, o_miss]
        )
    )
    prep = await services.pool.fetchval("SELECT prep_text FROM exam_type WHERE code = 'CT-HEAD'")
    for peer, destination in ((ris, "hl7:ris"), (emr, "hl7:emr")):
        rows = await _deliveries(services, destination)
        delivered = [r for r in rows if r["state"] == "delivered"]
        assert {r["state"] for r in rows} <= {"delivered", "skipped"}
        assert all(r["topic"] == "order.status" for r in rows if r["state"] == "skipped")
        # Every message arrived, once, in order per exam order.
        assert sorted(peer.seen) == sorted(set(peer.seen)) == sorted(f"HY{r['outbox_id']}" for r in delivered)
        chains = peer.by_order()
        assert [_trigger(m) for m in chains[order_nos[o_move]]] == ["S12", "S14", "S13"]
        assert [_trigger(m) for m in chains[order_nos[o_cancel]]] == ["S12", "S15"]
        assert [_trigger(m) for m in chains[order_nos[o_miss]]] == ["S12", "S26"]
        for msgs in chains.values():
            controls = [int(str(m.segment("MSH")[10])[2:]) for m in msgs]
            assert controls == sorted(controls)
        for msg in peer.kept.values():
            for name in ("SCH", "PID", "PV1", "RGS", "AIS", "AIL", "AIP", "AIG"):
                assert msg.segments(name), name
            notes = [msg.unescape(str(n[3])) for n in msg.segments("NTE")]
            assert notes and notes[0] == prep.splitlines()[0].strip()
            assert str(msg.segment("SCH")[27][0][0]).startswith("HY")  # the accession number
        s12, s14, s13 = chains[order_nos[o_move]]
        assert str(s13.segment("PID")[5]) == "欧阳娜娜"
        assert str(s12.segment("SCH")[1][0][0]) == f"A{moved_first.appointment_id}"
        assert str(s13.segment("SCH")[1][0][0]) == f"A{moved.appointment_id}"
        assert str(s13.segment("SCH")[2][0][0]) == f"A{moved_first.appointment_id}"  # the booking's stable id
        assert str(s14.segment("SCH")[6][0][0]) == "PAID"
        assert str(chains[order_nos[o_miss]][1].segment("SCH")[25][0][0]) == "Noshow"
        assert str(chains[order_nos[o_miss]][1].segment("SCH")[1][0][0]) == f"A{missed.appointment_id}"
        assert str(chains[order_nos[o_cancel]][1].segment("SCH")[25][0][0]) == "Cancelled"
    assert str(next(iter(emr.kept.values())).segment("MSH")[18]) == "GB 18030-2000"


async def _book_one(services: Services, nth_slot: int) -> tuple[int, int, str]:
    clerk = await actor_for(services, "clerk")
    [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["CT-HEAD"])
    slot = (await open_slots(services, "CT-HEAD", future_day(services, 4), limit=50))[nth_slot]
    [appt] = await services.booking.book(clerk, patient, "desk", [BookItem(order, slot["id"])])
    order_no = await services.pool.fetchval("SELECT order_no FROM exam_order WHERE id = $1", order)
    return order, appt.appointment_id, order_no


async def test_a_refused_message_holds_its_order_then_is_parked_and_the_next_goes(services: Services) -> None:
    refusing: set[str] = set()
    peer = MllpPeer(decide=lambda control, trigger, order_no: "AE" if order_no in refusing else "AA")
    config = _config(services, Peer("ris", "127.0.0.1", peer.port), max_refusals=3)
    now = datetime.now(UTC)
    await deliver_outbound(services.pool, config, now)
    await peer.up()
    try:
        _, appt_a, order_a = await _book_one(services, 0)
        _, _, order_b = await _book_one(services, 1)
        refusing.add(order_a)
        clerk = await actor_for(services, "clerk")
        await services.booking.cancel(clerk, appt_a, "desk", "测试")

        r = await deliver_outbound(services.pool, config, now + timedelta(minutes=1))
        assert r.destinations["hl7:ris"].delivered == 1 and r.destinations["hl7:ris"].retried == 1
        assert [_trigger(m) for m in peer.by_order()[order_b]] == ["S12"]
        assert order_a not in peer.by_order()  # its S15 waits behind the refused S12

        await deliver_outbound(services.pool, config, now + timedelta(hours=1))
        refusing.discard(order_a)  # the S15 will be accepted, the S12 is refused for the third time
        seen = len(peer.seen)
        peer.decide = lambda control, trigger, order_no: "AE" if trigger == "S12" and order_no == order_a else "AA"
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=2))
        assert r.destinations["hl7:ris"].failed == 1 and r.destinations["hl7:ris"].delivered == 1
        assert len(peer.seen) == seen + 2
        assert [_trigger(m) for m in peer.by_order()[order_a]] == ["S15"]

        rows = await _deliveries(services, "hl7:ris")
        [parked] = [r for r in rows if r["state"] == "failed"]
        assert parked["topic"] == "appointment.booked" and parked["refusals"] == 3 and "AE" in parked["last_error"]
        assert [f["outbox_id"] for f in await outbound_repo.failed_deliveries(services.pool, "hl7:ris")] == [
            parked["outbox_id"]
        ]

        # Once the peer's problem is fixed, an operator sends it again.
        peer.decide = lambda control, trigger, order_no: "AA"
        assert await outbound_repo.requeue(services.pool, "hl7:ris", parked["outbox_id"], now + timedelta(hours=3))
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=3))
        assert r.destinations["hl7:ris"].delivered == 1
        assert [_trigger(m) for m in peer.by_order()[order_a]] == ["S15", "S12"]
    finally:
        await peer.down()


async def test_a_lost_ack_sends_the_same_message_id_again(services: Services) -> None:
    lost: set[str] = set()

    def decide(control: str, trigger: str, order_no: str) -> str:
        if control not in lost:
            lost.add(control)
            return "lose"
        return "AA"

    peer = MllpPeer(decide=decide)
    config = _config(services, Peer("ris", "127.0.0.1", peer.port, timeout_s=2))
    now = datetime.now(UTC)
    await deliver_outbound(services.pool, config, now)
    await peer.up()
    try:
        _, _, order_no = await _book_one(services, 2)
        r = await deliver_outbound(services.pool, config, now + timedelta(minutes=1))
        assert r.destinations["hl7:ris"].down
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=1))
        assert r.destinations["hl7:ris"].delivered == 1
    finally:
        await peer.down()
    [control] = set(peer.seen)
    assert peer.seen == [control, control]  # at least once: the same MSH-10 twice
    assert [_trigger(m) for m in peer.by_order()[order_no]] == ["S12"]  # the peer kept it once
    [row] = [r for r in await _deliveries(services, "hl7:ris") if r["state"] == "delivered"]
    assert row["attempts"] == 2 and f"HY{row['outbox_id']}" == control


@pytest.mark.parametrize("configured", [True, False])
async def test_only_configured_peers_get_deliveries(services: Services, configured: bool) -> None:
    peer = MllpPeer()
    config = _config(services, *([Peer("ris", "127.0.0.1", peer.port)] if configured else []))
    await deliver_outbound(services.pool, config, datetime.now(UTC))
    await _book_one(services, 3)
    count = await services.pool.fetchval("SELECT count(*) FROM outbox_delivery WHERE destination = 'hl7:ris'")
    assert (count > 0) is configured
