"""The per-process hub against the real Redis: fan-out, slow consumers dropped without slowing
the others, subscriptions that always end, a lost Redis connection leading to a resync; and the
grid script's events and snapshots sharing one counter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis

from app.booking.availability import places_for
from app.booking.keys import KeyBuilder
from app.booking.service import CHANNELS, BookItem
from app.services import Services
from realtime.hub import RESYNC, Hub, Subscription
from realtime.publisher import GRID_CHANNELS, EventPublisher
from tests.conftest import Servers
from tests.helpers import actor_for, future_day, new_patients_with_orders, open_slots


@pytest.fixture
async def hub(redis_client: aioredis.Redis, redis_prefix: str) -> AsyncIterator[Hub]:
    keys = KeyBuilder(redis_prefix, "h1")
    h = Hub(redis_client, keys.events_prefix, queue_size=8)
    await h.start()
    assert h.ready.is_set()
    yield h
    await h.close()


@pytest.fixture
def publisher(redis_client: aioredis.Redis, redis_prefix: str) -> EventPublisher:
    return EventPublisher(redis_client, KeyBuilder(redis_prefix, "h1"))


async def drain(sub: Subscription, n: int, wait_s: float = 5.0) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(n):
        event = await asyncio.wait_for(sub.get(), wait_s)
        assert event is not None
        out.append(event)
    return out


async def _until_ready(hub: Hub, wait_s: float = 10) -> None:
    deadline = time.monotonic() + wait_s
    while not hub.ready.is_set():
        assert time.monotonic() < deadline, "the hub did not resubscribe"
        await asyncio.sleep(0.05)


async def test_one_event_reaches_every_subscriber_of_its_topic_only(hub: Hub, publisher: EventPublisher) -> None:
    with hub.subscription("queue:CT1") as a, hub.subscription("queue:CT1") as b, hub.subscription("queue:CT2") as c:
        seq = await publisher.publish("queue:CT1", {"event": "called", "number": "0023"})
        assert seq is not None
        (ea,) = await drain(a, 1)
        (eb,) = await drain(b, 1)
        assert ea == eb and ea[0] == seq
        assert orjson.loads(ea[1]) == {"seq": seq, "topic": "queue:CT1", "event": "called", "number": "0023"}
        assert c.pending() == 0
    assert hub.count() == 0


async def test_a_slow_subscriber_is_dropped_and_the_others_get_everything(hub: Hub, publisher: EventPublisher) -> None:
    slow = hub.subscribe("grid:US:x")
    fast = hub.subscribe("grid:US:x")
    received: list[int] = []

    async def consume() -> None:
        while len(received) < 40:
            event = await fast.get()
            assert event is not None
            received.append(event[0])

    consumer = asyncio.create_task(consume())
    for _ in range(40):
        await publisher.publish("grid:US:x", {"event": "booked"})
    await asyncio.wait_for(consumer, 10)
    assert received == list(range(received[0], received[0] + 40))  # all of them, in order
    assert slow.closed == "slow" and fast.closed is None
    assert hub.count("grid:US:x") == 1 and hub.dropped == 1
    assert await slow.get() is None  # its reader learns it was let go
    hub.unsubscribe(fast)


async def test_subscriptions_end_when_their_reader_dies(hub: Hub, publisher: EventPublisher) -> None:
    async def reader() -> None:
        with hub.subscription("metrics:x") as sub:
            await sub.get()
            raise RuntimeError("socket died")

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    assert hub.count("metrics:x") == 1
    await publisher.publish("metrics:x", {"event": "tick"})
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(task, 5)
    assert hub.count("metrics:x") == 0

    cancelled = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert hub.count() == 0


async def test_a_lost_redis_subscription_tells_every_subscriber_to_resync(
    hub: Hub, publisher: EventPublisher, redis_client: aioredis.Redis
) -> None:
    with hub.subscription("grid:RAD:x") as sub:
        # Kill the hub's own connection (the only one of this test's client subscribed to its prefix).
        clients = await redis_client.client_list(_type="pubsub")
        mine = [c for c in clients if int(c.get("psub", 0)) > 0]
        assert mine
        for c in mine:
            await redis_client.client_kill_filter(_id=c["id"])
        event = await asyncio.wait_for(sub.get(), 10)
        assert event is not None and event[0] == RESYNC
        await _until_ready(hub)
        seq = await publisher.publish("grid:RAD:x", {"event": "booked"})
        got = await asyncio.wait_for(sub.get(), 5)
        while got is not None and got[0] == RESYNC:  # other hubs killed alongside may add one
            got = await asyncio.wait_for(sub.get(), 5)
        assert got is not None and got[0] == seq


class _SilentProxy:
    """A TCP relay to Redis that can go silent on the connections it has (bytes swallowed both
    ways, sockets left open), as a firewall that forgets a connection does; new ones still pass."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.silent: list[dict[str, bool]] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.relays: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def go_silent(self) -> None:
        for state in self.silent:
            state["silent"] = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.relays.add(task)
        self.writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.append(up_writer)
        state = {"silent": False}
        self.silent.append(state)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not state["silent"]:
                    dst.write(data)
                    await dst.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.relays:
            task.cancel()
        await asyncio.gather(*self.relays, return_exceptions=True)
        for w in self.writers:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


async def test_a_subscription_that_goes_silent_is_found_by_the_health_check(
    servers: Servers, redis_prefix: str, publisher: EventPublisher
) -> None:
    """No reset, no error: the connection just stops carrying anything. Without a health check the
    hub would wait on it for ever and every screen would freeze on its last frame."""
    url = urlsplit(servers.redis)
    proxy = _SilentProxy(url.hostname or "127.0.0.1", url.port or 6379)
    port = await proxy.start()
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    hub = Hub(client, KeyBuilder(redis_prefix, "h1").events_prefix, health_s=0.3)
    try:
        await hub.start()
        assert hub.ready.is_set()
        with hub.subscription("queue:CT1") as sub:
            first = await publisher.publish("queue:CT1", {"event": "called"})
            assert (await drain(sub, 1))[0][0] == first
            proxy.go_silent()
            await publisher.publish("queue:CT1", {"event": "called"})  # swallowed on the way
            event = await asyncio.wait_for(sub.get(), 10)
            assert event is not None and event[0] == RESYNC
            await _until_ready(hub)
            third = await publisher.publish("queue:CT1", {"event": "called"})
            assert (await drain(sub, 1))[0][0] == third
    finally:
        await hub.close()
        await client.aclose()
        await proxy.close()


async def test_grid_events_and_snapshots_share_the_department_day_counter(services: Services) -> None:
    live = services.live
    await live.start()
    day = future_day(services)
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, ["US-THYROID"])
    slot = (await open_slots(services, "US-THYROID", day, limit=1))[0]
    dept = services.catalogue.resources[slot["resource_id"]].department_id
    seq0, frame0 = await live.grid_snapshot(dept, day)
    before = {s["id"]: s for s in orjson.loads(frame0)["slots"]}
    assert slot["id"] in before

    with live.hub.subscription(f"grid:{dept}:{day.isoformat()}") as sub:
        clerk = await actor_for(services, "clerk")
        await services.booking.book(clerk, pid, "desk", [BookItem(order, slot["id"])])
        seq, data = await asyncio.wait_for(sub.get(), 5) or (0, b"")
    delta = orjson.loads(data)
    assert delta["type"] == "delta" and delta["event"] == "booked" and seq == delta["seq"] == seq0 + 1
    (changed,) = delta["slots"]
    assert changed["id"] == slot["id"] and changed["b"] == before[slot["id"]]["b"] + 1
    assert changed["left"]["desk"] == before[slot["id"]]["left"]["desk"] - 1

    seq1, frame1 = await live.grid_snapshot(dept, day)
    after = {s["id"]: s for s in orjson.loads(frame1)["slots"]}
    assert seq1 == seq and after[slot["id"]] == changed

    # The places the screen shows are the ones the booking path would grant (places_for).
    assert set(GRID_CHANNELS) == set(CHANNELS)
    views = await services.store.read_slots(day, services.catalogue.resources_for(department_id=dept))
    now = time.time()
    for v in views:
        shown = after[v.slot_id]
        for ch in CHANNELS:
            expected, locked = places_for(v, ch, now)
            assert shown["left"][ch] == expected, (v, ch)
            assert locked == (shown["lk"] == "*" or ch in shown["lk"].split(","))
