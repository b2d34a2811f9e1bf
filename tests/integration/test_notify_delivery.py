"""The notice relay against a real HTTP gateway on 127.0.0.1 (uvicorn + Starlette, in the test's
event loop) and the real PostgreSQL: a gateway down for a while (503, then a closed port) delays
messages and loses none; afterwards each is delivered exactly once, in order per patient. A gateway
that takes a message and then times out gets the retry as a duplicate it drops (the stable message
id). Concurrent relays never send one row twice. Permanent refusals, WeChat with SMS fallback and
the development sender's log."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.db import notify_repo
from app.db.pool import create_pool
from app.notify.factory import build_sender
from app.notify.relay import deliver_due
from app.notify.senders import SmsHttpSender
from app.notify.settings import NotifySettings, notify_settings
from app.settings import DatabaseSettings
from tests.conftest import CloneDb

REFUSED_PHONE = "13900000400"  # the gateway answers 400 (invalid number) for this one
UNSUBSCRIBED_OPENID = "o_unsubscribed_0001"


class Gateway:
    """An SMS gateway and a WeChat template API that keep one copy per client message id, as real
    ones do, and can be switched down (503), closed (no listener) or made to hang after taking a
    message (its answer is lost to the client's timeout)."""

    def __init__(self) -> None:
        self.mode = "up"  # up | down | hang
        self.hang_s = 1.5
        self.delay_s = 0.0
        self.received: list[str] = []  # every request's message id, in arrival order
        self.accepted: list[str] = []  # first copies, in arrival order
        self.duplicates: list[str] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.channel: dict[str, str] = {}
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def _take(self, channel: str, message_id: str, body: dict[str, Any]) -> bool | None:
        """None: down; False: a duplicate; True: a new message."""
        self.received.append(message_id)
        if self.mode == "down":
            return None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if message_id in self.bodies:
            self.duplicates.append(message_id)
            return False
        self.bodies[message_id] = body
        self.accepted.append(message_id)
        self.channel[message_id] = channel
        if self.mode == "hang":
            await asyncio.sleep(self.hang_s)
        return True

    async def sms(self, request: Request) -> Response:
        body = await request.json()
        if body.get("phone") == REFUSED_PHONE:
            self.received.append(body["out_id"])
            return JSONResponse({"error": "invalid phone number " + body["phone"]}, status_code=400)
        taken = await self._take("sms", body["out_id"], body)
        if taken is None:
            return JSONResponse({"error": "maintenance"}, status_code=503)
        return JSONResponse({"ok": True, "duplicate": not taken})

    async def wechat(self, request: Request) -> Response:
        body = await request.json()
        if request.query_params.get("access_token") != "wx-token":
            return JSONResponse({"errcode": 40001, "errmsg": "invalid credential"})
        if body.get("touser") == UNSUBSCRIBED_OPENID:
            self.received.append(body["client_msg_id"])
            return JSONResponse({"errcode": 43004, "errmsg": "require subscribe"})
        taken = await self._take("wechat", body["client_msg_id"], body)
        if taken is None:
            return JSONResponse({"errcode": -1, "errmsg": "system error"})
        return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": 1})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = Starlette(
            routes=[Route("/sms", self.sms, methods=["POST"]), Route("/wechat", self.wechat, methods=["POST"])]
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", ws="none", http="h11", timeout_graceful_shutdown=3
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # up to 5 s
            if self._server.started:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("the test gateway did not start")

    async def stop(self) -> None:
        """Close the listener: connections are refused until start() again (same port)."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def pool(empty_db: CloneDb) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(DatabaseSettings(url=empty_db.url, pool_min=1, pool_max=10), empty_db.url)
    await p.execute("INSERT INTO hospital (id, name, short_name) VALUES ('h1', '测试医院', '测试')")
    yield p
    await p.close()


async def _patients(pool: asyncpg.Pool, phones: list[str | None], openids: list[str | None] | None = None) -> list[int]:
    openids = openids or [None] * len(phones)
    rows = await pool.fetch(
        """INSERT INTO patient (hospital_id, mrn, name, gender, birth_date, phone, wechat_openid)
           SELECT 'h1', 'N' || n, '测试患者' || n, 'U', DATE '1980-01-01', ph, oid
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(ph, oid, n) ORDER BY n RETURNING id""",
        phones,
        openids,
    )
    return [r["id"] for r in rows]


async def _queue_round_robin(pool: asyncpg.Pool, patients: list[int], per_patient: int) -> dict[int, list[int]]:
    """per_patient notices each, interleaved across patients; {patient: [outbox ids in order]}."""
    out: dict[int, list[int]] = {p: [] for p in patients}
    for n in range(per_patient):
        for p in patients:
            oid = await notify_repo.queue_notice(pool, p, {"kind": "test", "message": f"第{n + 1}条通知"})
            assert oid is not None
            out[p].append(oid)
    return out


def _sms_sender(gw: Gateway, timeout_s: float = 2.0) -> SmsHttpSender:
    return SmsHttpSender(gw.url + "/sms", token="sms-token", sign="测试医院", timeout_s=timeout_s)


async def _states(pool: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT id, attempts, next_attempt_at, delivered_at, dead_at, last_error FROM outbox ORDER BY id"
    )
    return {r["id"]: r for r in rows}


def _per_patient(ids: list[str], queued: dict[int, list[int]]) -> dict[int, list[int]]:
    owner = {oid: p for p, oids in queued.items() for oid in oids}
    out: dict[int, list[int]] = {p: [] for p in queued}
    for mid in ids:
        oid = int(mid.removeprefix("hy-"))
        out[owner[oid]].append(oid)
    return out


async def test_gateway_down_then_back_every_message_delivered_exactly_once_in_order_per_patient(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    patients = await _patients(pool, ["13800000001", "13800000002", "13800000003"])
    queued = await _queue_round_robin(pool, patients, 4)
    heads = {oids[0] for oids in queued.values()}
    sender = _sms_sender(gateway)
    settings = NotifySettings(retry_base_s=5, retry_cap_s=600)
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    try:
        # Down (503): only each patient's first message is tried; the rest wait behind it.
        gateway.mode = "down"
        report = await deliver_due(pool, sender, t0, settings)
        assert (report.delivered, report.retried, report.failed) == (0, 3, 0)
        states = await _states(pool)
        assert {oid for oid, s in states.items() if s["attempts"] == 1} == heads
        assert all(states[oid]["attempts"] == 0 for oid in states if oid not in heads)
        assert all(s["delivered_at"] is None and s["dead_at"] is None for s in states.values())
        assert all("http 503" in states[h]["last_error"] for h in heads)
        first_wait = {h: states[h]["next_attempt_at"] - t0 for h in heads}
        assert all(timedelta(seconds=4) <= w <= timedelta(seconds=5) for w in first_wait.values())

        # A second later nothing is due: the backoff holds them back.
        assert (await deliver_due(pool, sender, t0 + timedelta(seconds=1), settings)).rounds == 0
        assert len(gateway.received) == 3

        # Closed port: connection refused.
        await gateway.stop()
        report = await deliver_due(pool, sender, t0 + timedelta(hours=1), settings)
        assert (report.delivered, report.retried) == (0, 3)
        states = await _states(pool)
        assert all(states[h]["attempts"] == 2 and "ConnectError" in states[h]["last_error"] for h in heads)
        second_wait = {h: states[h]["next_attempt_at"] - (t0 + timedelta(hours=1)) for h in heads}
        assert all(timedelta(seconds=8) <= w <= timedelta(seconds=10) for w in second_wait.values())

        # Listening again but still answering 503.
        await gateway.start()
        report = await deliver_due(pool, sender, t0 + timedelta(hours=2), settings)
        assert (report.delivered, report.retried) == (0, 3)
        assert gateway.accepted == [] and sorted(gateway.received) == sorted(f"hy-{h}" for h in heads for _ in (1, 2))

        # Back: everything goes, once, each patient's in outbox order.
        gateway.mode = "up"
        report = await deliver_due(pool, sender, t0 + timedelta(hours=3), settings)
        assert (report.delivered, report.retried, report.failed, report.skipped) == (12, 0, 0, 0)
        assert report.rounds == 4  # one message per patient per round
        assert gateway.duplicates == []
        assert sorted(gateway.accepted) == sorted(f"hy-{oid}" for oids in queued.values() for oid in oids)
        assert len(set(gateway.accepted)) == len(gateway.accepted) == 12
        assert _per_patient(gateway.accepted, queued) == queued
        states = await _states(pool)
        assert all(s["delivered_at"] is not None and s["last_error"] is None for s in states.values())
        assert all(states[oid]["attempts"] == (3 if oid in heads else 0) for oid in states)
        body = gateway.bodies[f"hy-{queued[patients[0]][0]}"]
        assert body == {"out_id": body["out_id"], "phone": "13800000001", "content": "第1条通知", "sign": "测试医院"}

        # Nothing is sent again.
        assert (await deliver_due(pool, sender, t0 + timedelta(hours=4), settings)).rounds == 0
        assert len(gateway.accepted) == 12
    finally:
        await sender.aclose()


async def test_a_gateway_that_took_the_message_but_timed_out_gets_the_retry_as_a_duplicate(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    (patient,) = await _patients(pool, ["13800000011"])
    queued = await _queue_round_robin(pool, [patient], 2)
    first, second = queued[patient]
    sender = _sms_sender(gateway, timeout_s=0.3)
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    try:
        gateway.mode = "hang"
        report = await deliver_due(pool, sender, t0)
        assert (report.delivered, report.retried) == (0, 1)
        states = await _states(pool)
        assert states[first]["attempts"] == 1 and "Timeout" in states[first]["last_error"]
        assert states[second]["attempts"] == 0  # waits behind the unconfirmed first one

        gateway.mode = "up"
        report = await deliver_due(pool, sender, t0 + timedelta(minutes=5))
        assert report.delivered == 2
        assert gateway.received == [f"hy-{first}", f"hy-{first}", f"hy-{second}"]
        assert gateway.accepted == [f"hy-{first}", f"hy-{second}"]  # the patient got each once
        assert gateway.duplicates == [f"hy-{first}"]
    finally:
        await sender.aclose()


async def test_concurrent_relays_never_send_a_row_twice_and_keep_each_patients_order(
    empty_db: CloneDb, pool: asyncpg.Pool, gateway: Gateway
) -> None:
    patients = await _patients(pool, [f"138000001{n:02d}" for n in range(20)])
    queued = await _queue_round_robin(pool, patients, 3)
    gateway.delay_s = 0.02  # keep sends in flight so the relays overlap
    settings = NotifySettings(batch_size=4, concurrency=4)
    pools = [
        await create_pool(DatabaseSettings(url=empty_db.url, pool_min=1, pool_max=4), empty_db.url) for _ in range(4)
    ]
    senders = [_sms_sender(gateway) for _ in pools]
    now = datetime.now(UTC) + timedelta(seconds=1)
    try:
        reports = await asyncio.gather(*(deliver_due(p, s, now, settings) for p, s in zip(pools, senders, strict=True)))
        assert sum(r.delivered for r in reports) >= 12
        assert sum(1 for r in reports if r.delivered) >= 2, "the relays did not overlap"
        for _ in range(30):  # relays that ended early (everything locked by the others) leave the rest
            if not (await deliver_due(pool, senders[0], now, settings)).rounds:
                break
        assert len(gateway.received) == len(set(gateway.received)) == 60  # no row was ever sent twice
        assert gateway.duplicates == []
        assert _per_patient(gateway.accepted, queued) == queued
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == 0
    finally:
        for s in senders:
            await s.aclose()
        for p in pools:
            await p.close()


async def test_a_refused_number_is_set_aside_and_the_patients_next_message_follows(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    refused, no_phone = await _patients(pool, [REFUSED_PHONE, None])
    queued = await _queue_round_robin(pool, [refused, no_phone], 2)
    bad = await notify_repo.queue_notice(pool, refused, {"kind": "test"})  # no message text
    assert bad is not None
    sender = _sms_sender(gateway)
    try:
        report = await deliver_due(pool, sender, datetime.now(UTC) + timedelta(seconds=1))
        assert (report.delivered, report.retried, report.failed) == (0, 0, 5)
        states = await _states(pool)
        assert all(s["dead_at"] is not None for s in states.values())
        last_errors = {states[oid]["last_error"] for oid in queued[refused]}
        assert len(last_errors) == 1
        (error,) = last_errors
        assert error.startswith("http 400") and REFUSED_PHONE not in error and "139****0400" in error
        assert {states[oid]["last_error"] for oid in queued[no_phone]} == {"no phone number"}
        assert states[bad]["last_error"] == "payload has no message text"
        backlog = await notify_repo.backlog(pool, datetime.now(UTC))
        assert (backlog["pending"], backlog["dead"]) == (0, 5)
    finally:
        await sender.aclose()


async def test_wechat_for_patients_with_an_openid_sms_for_the_others_and_when_wechat_refuses(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    with_openid, without, unsubscribed = await _patients(
        pool, ["13800000021", "13800000022", "13800000023"], ["o_patient_0001", None, UNSUBSCRIBED_OPENID]
    )
    queued = await _queue_round_robin(pool, [with_openid, without, unsubscribed], 1)
    env = {
        "HY_NOTIFY_SENDER": "wechat",
        "HY_SMS_URL": gateway.url + "/sms",
        "HY_WECHAT_URL": gateway.url + "/wechat",
        "HY_WECHAT_TOKEN": "wx-token",
        "HY_WECHAT_TEMPLATE_ID": "TPL-1",
    }
    sender = build_sender(env, pool)
    try:
        report = await deliver_due(pool, sender, datetime.now(UTC) + timedelta(seconds=1), notify_settings(env))
        assert report.delivered == 3
        by_patient = {p: f"hy-{oids[0]}" for p, oids in queued.items()}
        assert gateway.channel == {
            by_patient[with_openid]: "wechat",
            by_patient[without]: "sms",
            by_patient[unsubscribed]: "sms",
        }
        body = gateway.bodies[by_patient[with_openid]]
        assert body["touser"] == "o_patient_0001" and body["template_id"] == "TPL-1"
        assert body["client_msg_id"] == by_patient[with_openid]
        assert body["data"]["keyword1"]["value"] == "第1条通知"
    finally:
        await sender.aclose()


async def test_dev_sender_records_masked_messages_once_for_the_demo_page(pool: asyncpg.Pool) -> None:
    a, b = await _patients(pool, ["13812345678", None], [None, "o_dev_openid_1234"])
    queued = await _queue_round_robin(pool, [a, b], 2)
    sender = build_sender({}, pool)
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert (await deliver_due(pool, sender, now)).delivered == 4
    latest = await notify_repo.latest_dev_messages(pool, 10)
    for patient, oids in queued.items():  # per patient, newest first
        assert [r["message_id"] for r in latest if r["patient_id"] == patient] == [f"hy-{o}" for o in oids[::-1]]
    assert {(r["patient_id"], r["channel"], r["destination"]) for r in latest} == {
        (a, "sms", "138****5678"),
        (b, "wechat", "o_de****1234"),
    }
    assert all("13812345678" not in r["destination"] for r in latest)
    assert [r["text"] for r in await notify_repo.latest_dev_messages(pool, 1, patient_id=a)] == ["第2条通知"]
    # A send repeated after a lost commit is recorded once, as a gateway would.
    await pool.execute("UPDATE outbox SET delivered_at = NULL WHERE id = $1", queued[a][0])
    await pool.execute("UPDATE outbox SET delivered_at = NULL WHERE id = $1", queued[a][1])
    assert (await deliver_due(pool, sender, now)).delivered == 2
    assert await pool.fetchval("SELECT count(*) FROM notice_log") == 4


async def test_a_dedupe_key_queues_a_notice_once_whoever_inserts_it(pool: asyncpg.Pool) -> None:
    (patient,) = await _patients(pool, ["13800000031"])
    payload = {"kind": "queue_delay", "message": "预计10:45开始", "dedupe": "queue_delay:1:7"}
    first = await notify_repo.queue_notice(pool, patient, payload)
    assert first is not None
    assert await notify_repo.queue_notice(pool, patient, payload) is None
    # booking_repo.insert_notice (other code's path) writes the same row: the trigger drops it too.
    from app.db import booking_repo

    await booking_repo.insert_notice(pool, patient, payload)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    # A rolled-back insert does not hold the key.
    with contextlib.suppress(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            assert await notify_repo.queue_notice(conn, patient, {**payload, "dedupe": "k2"}) is not None
            raise RuntimeError("roll back")
    assert await notify_repo.queue_notice(pool, patient, {**payload, "dedupe": "k2"}) is not None


async def test_the_notification_loop_delivers_queued_notices_until_stopped(pool: asyncpg.Pool) -> None:
    from zoneinfo import ZoneInfo

    from app.notify.worker import run_notifications

    (patient,) = await _patients(pool, ["13800000041"])
    sender = build_sender({}, pool)
    stop = asyncio.Event()
    loop = asyncio.create_task(
        run_notifications(pool, sender, "h1", ZoneInfo("Asia/Shanghai"), NotifySettings(), stop, interval_s=0.05)
    )
    try:
        oid = await notify_repo.queue_notice(pool, patient, {"kind": "test", "message": "循环投递"})
        for _ in range(200):
            if await pool.fetchval("SELECT delivered_at IS NOT NULL FROM outbox WHERE id = $1", oid):
                break
            await asyncio.sleep(0.05)
        assert [r["message_id"] for r in await notify_repo.latest_dev_messages(pool)] == [f"hy-{oid}"]
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=5)


async def test_a_login_code_leaves_no_trace_in_the_outbox_once_sent_or_set_aside(
    pool: asyncpg.Pool, gateway: Gateway
) -> None:
    """The SMS carries the code; the outbox row (and every backup of it) keeps only a placeholder,
    whether the message was delivered or set aside. Other notices keep their text."""
    sent_to, refused = await _patients(pool, ["13800000031", REFUSED_PHONE])
    code_text = "【汇约】您的登录验证码为482913，5分钟内有效。请勿将验证码告诉他人。"
    ids = [
        await notify_repo.queue_notice(pool, p, {"kind": notify_repo.LOGIN_CODE_KIND, "message": code_text})
        for p in (sent_to, refused)
    ]
    other = await notify_repo.queue_notice(pool, sent_to, {"kind": "test", "message": "普通通知"})
    sender = _sms_sender(gateway)
    try:
        report = await deliver_due(pool, sender, datetime.now(UTC) + timedelta(seconds=1))
    finally:
        await sender.aclose()
    assert (report.delivered, report.failed) == (2, 1)
    assert gateway.bodies[f"hy-{ids[0]}"]["content"].endswith(code_text)  # the patient got it
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, payload->>'message' AS message FROM outbox")}
    assert rows[ids[0]]["message"] == rows[ids[1]]["message"] == notify_repo.REDACTED
    assert rows[other]["message"] == "普通通知"
    assert "482913" not in str(await pool.fetch("SELECT payload FROM outbox"))
