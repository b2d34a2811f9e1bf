"""Webhooks: a local HTTP receiver (Starlette on uvicorn, random port) verifies each delivery's
HMAC, is down (503) for a while, then takes every event once, in order per exam order."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.booking.service import BookItem
from app.errors import NotFound, ValidationFailed
from app.integrations import webhooks
from app.integrations.outbound.relay import deliver_outbound
from app.integrations.outbound.settings import OutboundSettings
from app.integrations.webhooks import WebhookRegistry
from app.services import Services
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.status = 503  # down until told otherwise
        self.attempts: list[str] = []
        self.kept: dict[str, dict[str, Any]] = {}  # once per delivery id, in arrival order
        self.bad_signatures = 0

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        h = request.headers
        delivery = h[webhooks.DELIVERY_HEADER]
        self.attempts.append(delivery)
        if not webhooks.verify(self.secret, h[webhooks.TIMESTAMP_HEADER], body, h[webhooks.SIGNATURE_HEADER]):
            self.bad_signatures += 1
            return Response(status_code=401)
        assert not webhooks.verify("hyw_wrong", h[webhooks.TIMESTAMP_HEADER], body, h[webhooks.SIGNATURE_HEADER])
        if self.status != 200:
            return Response(status_code=self.status)
        event = orjson.loads(body)
        assert event["id"] == delivery and event["topic"] == h[webhooks.EVENT_HEADER]
        self.kept.setdefault(delivery, event)
        return Response(status_code=200)


@contextlib.asynccontextmanager
async def serve(receiver: Receiver) -> AsyncIterator[str]:
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


def _config(services: Services) -> OutboundSettings:
    return OutboundSettings(timezone=services.settings.booking.timezone, retry_base_s=1.0, retry_cap_s=30.0)


async def test_signed_events_arrive_once_in_order_after_the_receiver_was_down(services: Services) -> None:
    receiver = Receiver()
    admin = await actor_for(services, "admin")
    registry = WebhookRegistry(services.pool, services.settings.booking.hospital_id)
    config = _config(services)
    now = datetime.now(UTC)
    async with serve(receiver) as url:
        created = await registry.create(
            admin, "叫号系统", url, ["appointment.booked", "appointment.cancelled", "order.status"]
        )
        receiver.secret = created.secret
        assert created.secret.startswith(webhooks.SECRET_PREFIX)
        [listed] = await registry.list()
        assert listed.id == created.id and not hasattr(listed, "secret")  # shown once, at creation

        clerk = await actor_for(services, "clerk")
        slots = await open_slots(services, "US-THYROID", future_day(services), limit=10)
        patients = await new_patients_with_orders(services.pool, 2, ["US-THYROID"])
        booked = []
        for (patient, [order]), slot in zip(patients, slots, strict=False):
            [appt] = await services.booking.book(clerk, patient, "desk", [BookItem(order, slot["id"])])
            booked.append(appt)
        await services.booking.cancel(clerk, booked[0].appointment_id, "desk", "测试")
        await services.orders.apply(clerk, booked[1].order_id, "pay", "缴费", "desk")

        expected = await services.pool.fetch(
            """SELECT id, topic, payload FROM outbox
                WHERE topic = ANY($1::text[]) AND (payload ->> 'order_id')::bigint = ANY($2::bigint[]) ORDER BY id""",
            ["appointment.booked", "appointment.cancelled", "order.status"],
            [b.order_id for b in booked],
        )
        assert len(expected) >= 6

        for minutes in (1, 2, 3):  # 503: the receiver is down; every call probes once
            r = await deliver_outbound(services.pool, config, now + timedelta(minutes=minutes))
            assert r.destinations[f"webhook:{created.id}"].down
        assert receiver.kept == {} and len(receiver.attempts) == 3 and receiver.bad_signatures == 0
        [listed] = await registry.list()
        assert listed.pending == len(expected) and listed.last_error == "HTTP 503"

        receiver.status = 200
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=1))
        assert r.destinations[f"webhook:{created.id}"].delivered == len(expected)

        assert sorted(receiver.kept) == sorted(f"hy-{e['id']}" for e in expected)  # every event, once
        assert len(receiver.attempts) == 3 + len(expected)  # no event sent twice once it was taken
        for order_id in (b.order_id for b in booked):
            got = [e["id"] for e in receiver.kept.values() if e["data"].get("order_id") == order_id]
            assert got == sorted(got, key=lambda d: int(d[3:]))
        cancel = next(e for e in receiver.kept.values() if e["topic"] == "appointment.cancelled")
        assert cancel["data"]["appointment_id"] == booked[0].appointment_id

        # Deleted: nothing more is queued for it.
        await registry.delete(admin, created.id)
        assert await registry.list() == []
        with pytest.raises(NotFound):
            await registry.delete(admin, created.id)
        await services.booking.cancel(clerk, booked[1].appointment_id, "desk", "测试")
        r = await deliver_outbound(services.pool, config, now + timedelta(hours=2))
        assert f"webhook:{created.id}" not in r.destinations
        assert len(receiver.kept) == len(expected)


async def test_a_wrong_secret_is_detected_and_refusals_are_parked(services: Services) -> None:
    receiver = Receiver()
    receiver.secret = "hyw_not_the_one"
    admin = await actor_for(services, "admin")
    registry = WebhookRegistry(services.pool, services.settings.booking.hospital_id)
    config = OutboundSettings(timezone="Asia/Shanghai", retry_base_s=1.0, retry_cap_s=30.0, max_refusals=2)
    now = datetime.now(UTC)
    async with serve(receiver) as url:
        await registry.create(admin, "移动护理", url, ["appointment.booked"])
        clerk = await actor_for(services, "clerk")
        [(patient, [order])] = await new_patients_with_orders(services.pool, 1, ["US-THYROID"])
        slot = (await open_slots(services, "US-THYROID", future_day(services, 2), limit=1))[0]
        await services.booking.book(clerk, patient, "desk", [BookItem(order, slot["id"])])
        await deliver_outbound(services.pool, config, now + timedelta(minutes=1))
        await deliver_outbound(services.pool, config, now + timedelta(hours=1))
    assert receiver.bad_signatures == 2 and receiver.kept == {}
    [listed] = await registry.list()
    assert listed.failed == 1 and listed.pending == 0  # a 401 is a refusal: retried, then parked
    with pytest.raises(ValidationFailed):
        await registry.create(admin, "x", "ftp://example.org/hook", ["appointment.booked"])
    with pytest.raises(ValidationFailed):
        await registry.create(admin, "x", url, ["patient.notice"])


def test_signature_scheme() -> None:
    body = b'{"id":"hy-1"}'
    sig = webhooks.sign("s3cret", "1700000000", body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert webhooks.verify("s3cret", "1700000000", body, sig, now=1700000100)
    assert not webhooks.verify("s3cret", "1700000000", body + b" ", sig, now=1700000100)
    assert not webhooks.verify("other", "1700000000", body, sig, now=1700000100)
    assert not webhooks.verify("s3cret", "1700000000", body, sig, now=1700001000)  # stale: a replay
