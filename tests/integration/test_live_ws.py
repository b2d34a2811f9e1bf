"""The live WebSockets over real sockets (uvicorn): authentication on connect, a snapshot then
numbered deltas, a gap answered with a fresh snapshot, sockets that end their subscription when
they die, a client too slow to read dropped with 4408 while another gets everything, and two
worker processes: a booking through one reaches a socket held by the other."""

from __future__ import annotations

import asyncio
import time
from datetime import date

import httpx
import orjson
import pytest
import websockets

from app.services import Services
from tests.conftest import CloneDb, Servers
from tests.helpers import future_day, token_for
from tests.live_server import book_through_api, next_frame, open_socket, serve_app, worker_process


async def _book_one(base: str, services: Services, exam: str, day: date, dept: str = "US") -> tuple[int, str]:
    return await book_through_api(base, services, exam, day, dept), dept


async def _drain_until_closed(ws: websockets.ClientConnection) -> tuple[int, int | None]:
    """Read until the server closes the socket: (frames read, close code)."""
    frames = 0
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 20)
            frames += 1
    return frames, ws.close_code


async def _closed_code(ws: websockets.ClientConnection) -> int | None:
    return (await _drain_until_closed(ws))[1]


async def test_a_booking_reaches_the_grid_socket_as_a_numbered_delta(services: Services) -> None:
    day = future_day(services)
    async with serve_app(services) as base:
        token = await token_for(services, "doctor")
        async with await open_socket(base, f"/ws/grid?department=US&day={day}", token) as ws:
            snap = await next_frame(ws)
            assert snap["type"] == "snapshot" and snap["topic"] == f"grid:US:{day}"
            before = {s["id"]: s for s in snap["slots"]}
            started = time.perf_counter()
            slot_id, dept = await _book_one(base, services, "US-THYROID", day)
            assert dept == "US"
            delta = await next_frame(ws)
            print(f"booking to delta on the socket: {1000 * (time.perf_counter() - started):.1f} ms")
            assert delta["type"] == "delta" and delta["seq"] == snap["seq"] + 1 and delta["event"] == "booked"
            (s,) = delta["slots"]
            assert s["id"] == slot_id and s["b"] == before[slot_id]["b"] + 1


async def test_the_first_frame_may_carry_the_session_and_bad_callers_are_closed(services: Services) -> None:
    day = future_day(services)
    async with serve_app(services) as base:
        ws_base = base.replace("http", "ws", 1)
        token = await token_for(services, "clerk")
        async with websockets.connect(f"{ws_base}/ws/grid?department=RAD&day={day}") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            assert (await next_frame(ws))["type"] == "snapshot"
        cases: list[tuple[str, str | None, int]] = [
            (f"/ws/grid?department=RAD&day={day}", None, 4401),
            (f"/ws/grid?department=RAD&day={day}", "not-a-token", 4401),
            (f"/ws/grid?department=RAD&day={day}", await token_for(services, "patient"), 4403),
            (f"/ws/wall?day={day}", await token_for(services, "clerk"), 4403),
            ("/ws/grid?department=RAD&day=2026-13-40", token, 4400),
            ("/ws/grid?department=NOPE&day=2026-12-01", token, 4400),
            ("/ws/grid?day=2026-12-01", token, 4400),
        ]
        for path, tok, code in cases:
            ws = await open_socket(base, path, tok)
            if tok is None:
                await ws.send('{"type":"hello"}')  # not an auth frame
            assert await _closed_code(ws) == code, path


async def test_a_gap_in_the_numbers_is_answered_with_a_fresh_snapshot(services: Services) -> None:
    day = future_day(services)
    async with serve_app(services) as base:
        token = await token_for(services, "clerk")
        async with await open_socket(base, f"/ws/grid?department=US&day={day}", token) as ws:
            snap = await next_frame(ws)
            # An event lost on its way (the counter moved but nothing was heard).
            await services.redis.incr(services.keys.day(day).grid_seq("US"))
            slot_id, _ = await _book_one(base, services, "US-THYROID", day)
            frame = await next_frame(ws)
            assert frame["type"] == "snapshot" and frame["seq"] == snap["seq"] + 2
            assert {s["id"]: s for s in frame["slots"]}[slot_id]["b"] >= 1
            # And a client that asks gets one too.
            await ws.send('{"type":"resync"}')
            again = await next_frame(ws)
            assert again["type"] == "snapshot" and again["seq"] == frame["seq"]


async def test_a_dead_socket_ends_its_subscription(services: Services) -> None:
    day = future_day(services)
    topic = f"grid:ECG:{day}"
    async with serve_app(services) as base:
        token = await token_for(services, "clerk")
        ws = await open_socket(base, f"/ws/grid?department=ECG&day={day}", token)
        await next_frame(ws)
        assert services.live.hub.count(topic) == 1
        ws.transport.abort()  # the network goes, no closing handshake
        deadline = time.monotonic() + 10
        while services.live.hub.count(topic):
            assert time.monotonic() < deadline, "subscription leaked"
            await asyncio.sleep(0.05)


async def test_a_client_that_stops_reading_is_dropped_and_never_slows_the_others(
    services: Services, seeded_db: CloneDb, servers: Servers, redis_prefix: str
) -> None:
    """A worker process as in production (uvloop); its hub keeps 16 events per screen."""
    day = future_day(services)
    topic = f"grid:US:{day}"
    channel = services.keys.events_channel(topic)
    seq_key = services.keys.day(day).grid_seq("US")
    async with worker_process(seeded_db.url, servers.redis, redis_prefix, HY_LIVE_QUEUE="16") as base:
        token = await token_for(services, "clerk")
        # It reads nothing after its snapshot (and so acknowledges nothing).
        slow = await open_socket(base, f"/ws/grid?department=US&day={day}", token, max_queue=1, rcvbuf=32_768)
        fast = await open_socket(base, f"/ws/grid?department=US&day={day}", token, max_size=None)
        first = (await next_frame(fast))["seq"]
        await next_frame(slow)
        pad = "x" * 16_000
        count = 3_000
        got: list[int] = []
        progress = asyncio.Condition()

        async def read_fast() -> None:
            while len(got) < count:
                got.append((await next_frame(fast))["seq"])
                async with progress:
                    progress.notify_all()

        reader = asyncio.create_task(read_fast())
        for n in range(count):  # numbered exactly like the grid script numbers its events
            seq = await services.redis.incr(seq_key)
            body = {"type": "delta", "seq": seq, "topic": topic, "event": "test", "slots": [], "pad": pad}
            await services.redis.publish(channel, orjson.dumps(body))
            if n % 8 == 7:  # a client that keeps up: never more than 8 events behind
                async with progress:
                    await asyncio.wait_for(progress.wait_for(lambda n=n: len(got) > n), 10)
        await asyncio.wait_for(reader, 60)
        assert got == list(range(first + 1, first + 1 + count))  # every one, in order
        frames, code = await _drain_until_closed(slow)
        assert code == 4408 and frames < count  # dropped as too slow
        async with httpx.AsyncClient(base_url=base) as c:
            admin = {"authorization": f"Bearer {await token_for(services, 'admin')}"}
            stats = (await c.get("/api/v1/admin/live", headers=admin)).json()
        assert stats["topics"].get(topic) == 1, stats  # its subscription ended; the fast one stays
        await fast.close()


async def test_a_booking_through_one_worker_reaches_a_socket_on_another(
    services: Services, seeded_db: CloneDb, servers: Servers, redis_prefix: str
) -> None:
    day = future_day(services)
    async with (
        worker_process(seeded_db.url, servers.redis, redis_prefix) as first,
        worker_process(seeded_db.url, servers.redis, redis_prefix) as second,
    ):
        token = await token_for(services, "clerk")
        async with await open_socket(second, f"/ws/grid?department=US&day={day}", token) as ws:
            snap = await next_frame(ws)
            started = time.perf_counter()
            slot_id, _ = await _book_one(first, services, "US-THYROID", day)
            delta = await next_frame(ws)
            print(f"booked on one worker, delta on the other: {1000 * (time.perf_counter() - started):.1f} ms")
            assert delta["type"] == "delta" and delta["seq"] == snap["seq"] + 1
            assert [s["id"] for s in delta["slots"]] == [slot_id]
