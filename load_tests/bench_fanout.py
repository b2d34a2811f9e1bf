"""Fan-out benchmark: python -m load_tests.bench_fanout [--clients 1000] [--bookings 300] [--concurrency 16]

Needs DATABASE_URL and REDIS_URL (local servers only). It recreates the database hy_bench_fanout,
seeds the demo hospital, starts one server process (`python -m app serve`, one uvicorn worker),
adds a bench CT device with slots on a working day ahead and patients with orders
(load_tests/storm_data.py), then:

1. opens `--clients` WebSockets on that department-day's live grid (/ws/grid?department=RAD&day=…),
   each a well-behaved screen: it acknowledges every 16th frame;
2. books `--bookings` appointments through the HTTP API, `--concurrency` at a time;
3. every client timestamps each delta on arrival; the delta carries the Redis clock at publish
   time (`at`, app/booking/lua/grid.lua), taken right after the booking's PostgreSQL commit.

It prints the delivery latency from publish to client (p50/p95/p99/max) over every
(client, delta) pair, the deliveries per second during the burst, the bookings per second
that produced them, the hub's own counters (dropped screens) and the CPU of the server process.
Both ends share this machine's two cores, so the client process's own receive work is part of
what is measured; the figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
import uuid
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import psutil
import websockets

from load_tests.run_bench import (
    RESULTS,
    Server,
    delete_redis_keys,
    drop_database,
    free_port,
    recreate_database,
    seed_demo,
    with_database,
    working_days_ahead,
)
from load_tests.storm_data import prepare_storm

BENCH_DB = "hy_bench_fanout"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Screen:
    """One live grid client: records (arrival ms - publish ms) for each delta."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.deltas = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.closed: int | None = None

    async def run(self, url: str, token: str, ready: asyncio.Event, ready_count: list[int], total: int) -> None:
        async with websockets.connect(url, additional_headers={"authorization": f"Bearer {token}"}) as ws:
            since_ack = 0
            try:
                async for raw in ws:
                    now_ms = time.time() * 1000
                    parsed = orjson.loads(raw)
                    for frame in parsed if isinstance(parsed, list) else [parsed]:
                        kind = frame.get("type")
                        if kind == "snapshot":
                            ready_count[0] += 1
                            if ready_count[0] == total:
                                ready.set()
                        elif kind == "delta":
                            self.deltas += 1
                            self.latencies.append(now_ms - frame["at"])
                            self.first_at = self.first_at or now_ms
                            self.last_at = now_ms
                        if "seq" in frame:
                            since_ack += 1
                    if since_ack >= 16:
                        since_ack = 0
                        await ws.send(
                            orjson.dumps(
                                {"type": "ack", "seq": parsed[-1]["seq"] if isinstance(parsed, list) else parsed["seq"]}
                            ).decode()
                        )
            except websockets.ConnectionClosed:
                pass
            self.closed = ws.close_code


async def login(client: httpx.AsyncClient, username: str) -> str:
    r = await client.post("/api/v1/auth/login", json={"username": username, "password": "Huiyue@2026"})
    r.raise_for_status()
    return str(r.json()["token"])


async def run(args: argparse.Namespace, base: str, db_url: str, day: date) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        storm = await prepare_storm(
            conn, day=day, n_patients=args.bookings, n_slots=30, capacity_per_slot=max(1, -(-args.bookings // 30))
        )
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        admin = await login(client, "admin")
        clerk = await login(client, "clerk")
        r = await client.post(
            "/api/v1/admin/reconcile", json={"day": day.isoformat()}, headers={"authorization": f"Bearer {admin}"}
        )
        r.raise_for_status()

        url = base.replace("http", "ws", 1) + f"/ws/grid?department=RAD&day={day.isoformat()}"
        screens = [Screen() for _ in range(args.clients)]
        ready = asyncio.Event()
        count = [0]
        tasks = []
        t_connect = time.perf_counter()
        for n, screen in enumerate(screens):
            tasks.append(asyncio.create_task(screen.run(url, clerk, ready, count, args.clients)))
            if n % 50 == 49:
                await asyncio.sleep(0.05)  # do not SYN-flood the listen backlog
        await asyncio.wait_for(ready.wait(), 120)
        connect_s = time.perf_counter() - t_connect
        print(f"{args.clients} screens connected and got their snapshot in {connect_s:.1f} s", flush=True)

        proc = psutil.Process(args.server_pid)
        cpu0 = sum(proc.cpu_times()[:2])
        booked = 0
        failed = 0
        queue: asyncio.Queue[tuple[int, int, int]] = asyncio.Queue()
        for i, (pid, oid) in enumerate(storm.pairs):
            queue.put_nowait((pid, oid, storm.slot_ids[i % len(storm.slot_ids)]))
        headers = {"authorization": f"Bearer {clerk}"}

        async def booker() -> None:
            nonlocal booked, failed
            while not queue.empty():
                pid, oid, slot = queue.get_nowait()
                body = {"patient_id": pid, "channel": "desk", "items": [{"order_id": oid, "slot_id": slot}]}
                resp = await client.post("/api/v1/appointments", json=body, headers=headers)
                if resp.status_code == 201:
                    booked += 1
                else:
                    failed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(booker() for _ in range(args.concurrency)))
        burst_s = time.perf_counter() - t0
        expected = booked * args.clients
        deadline = time.monotonic() + 60
        while sum(s.deltas for s in screens) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        cpu1 = sum(proc.cpu_times()[:2])
        stats = (await client.get("/api/v1/admin/live", headers={"authorization": f"Bearer {admin}"})).json()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    latencies = [x for s in screens for x in s.latencies]
    delivered = sum(s.deltas for s in screens)
    first = min((s.first_at for s in screens if s.first_at), default=0.0)
    last = max((s.last_at for s in screens), default=0.0)
    span_s = max((last - first) / 1000, 1e-9)
    return {
        "clients": args.clients,
        "bookings": booked,
        "failed": failed,
        "burst_s": burst_s,
        "bookings_per_s": booked / burst_s if burst_s else 0.0,
        "delivered": delivered,
        "expected": expected,
        "deliveries_per_s": delivered / span_s,
        "p50": pct(latencies, 0.50),
        "p95": pct(latencies, 0.95),
        "p99": pct(latencies, 0.99),
        "max": max(latencies, default=float("nan")),
        "mean": statistics.mean(latencies) if latencies else float("nan"),
        "server_cpu_s": cpu1 - cpu0,
        "hub": stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--bookings", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not database_url or not redis_url:
        print("bench_fanout needs DATABASE_URL and REDIS_URL (local servers)", file=sys.stderr)
        return 2
    for url in (database_url, redis_url):
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            print("refusing a non-local server", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.clients * 2 + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    RESULTS.mkdir(parents=True, exist_ok=True)
    prefix = f"hyfan{uuid.uuid4().hex[:6]}"
    db_url = with_database(database_url, BENCH_DB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HY_")}
    env.update(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "HY_REDIS_PREFIX": prefix,
            "HY_LOG_LEVEL": "warning",
            # Thousands of bookings a second from one loopback address and a few accounts are the
            # point here, not abuse: the per-account and per-address limits stay out of the way.
            "HY_RATE_LIMITS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    server = Server(env, free_port(), RESULTS / "fanout-server.log")
    try:
        asyncio.run(recreate_database(database_url, BENCH_DB))
        seed_demo(env)
        server.start()
        assert server.proc is not None
        args.server_pid = server.proc.pid
        (day,) = working_days_ahead(3, 1)
        r = asyncio.run(run(args, server.base, db_url, day))
    finally:
        server.stop()
        asyncio.run(drop_database(database_url, BENCH_DB))
        delete_redis_keys(redis_url, prefix)
    hub = r["hub"]
    print(
        f"\nfan-out: {r['clients']} screens on one department-day grid, {r['bookings']} bookings ({r['failed']} failed)"
    )
    print(f"  booking rate: {r['bookings_per_s']:.0f}/s over {r['burst_s']:.1f} s ({args.concurrency} in flight)")
    print(f"  deliveries: {r['delivered']:,} of {r['expected']:,} expected, {r['deliveries_per_s']:,.0f} messages/s")
    print(
        f"  publish -> client latency ms: p50 {r['p50']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  "
        f"max {r['max']:.1f}  mean {r['mean']:.1f}"
    )
    print(
        f"  server CPU {r['server_cpu_s']:.1f} s = "
        f"{1e6 * r['server_cpu_s'] / max(1, r['delivered']):.0f} µs per delivery; "
        f"hub: delivered {hub['delivered']:,}, dropped {hub['dropped']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
