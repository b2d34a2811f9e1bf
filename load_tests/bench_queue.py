"""Room-queue benchmark: python -m load_tests.bench_queue [--rooms 20] [--patients 60] [--rounds 3]

Needs REDIS_URL (a local server only). It drives the queue script (app/booking/lua/queue.lua)
directly, as the check-in desks, consoles and call screens of a busy morning would: for each of
`--rooms` rooms, `--patients` check-ins (a tenth of them emergency or green channel, so they land
mid-line), then every patient called, started and finished, with a pass and a defer now and then;
rooms run concurrently (one asyncio task each), so the script's atomicity is what keeps every line
in order. Each operation also publishes the whole queue to the room's screens.

It prints operations/s, the latency per operation (p50/p99), the largest event published, and the
same figures for a trivial EVALSHA (`return 1`) on the same connection pool in the same run, so
the ratio holds on a shared, noisy machine. Nothing is asserted; the keys are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid

import msgspec
import redis.asyncio as aioredis

from realtime.publisher import lua_source


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def room(client: aioredis.Redis, script: object, prefix: str, n: int, patients: int, lat: list[float]) -> int:
    keys = [f"{prefix}:q:R{n}:{part}" for part in ("line", "ent", "seq", "ok")]
    channel, topic = f"{prefix}:ev:bench:queue:R{n}", f"queue:R{n}"
    rng = random.Random(n)
    biggest = 0

    async def op(name: str, *args: object) -> list[object]:
        nonlocal biggest
        started = time.perf_counter()
        out = await script(keys=keys, args=[name, channel, topic, int(time.time() * 1000), *args])  # type: ignore[operator]
        lat.append(time.perf_counter() - started)
        biggest = max(biggest, len(out[3] or b""))
        return list(out)

    await op("load", "[]")
    for i in range(patients):
        pc = 0 if rng.random() < 0.05 else 1 if rng.random() < 0.05 else 3
        entry = {
            "id": str(n * 100_000 + i),
            "t": i + 1,
            "pc": pc,
            "at": 1_800_000_000 + i * 600,
            "ci": int(time.time() * 1000),
            "dur": 10,
            "nm": "张*三",
            "ex": "头颅CT平扫",
            "mk": "",
        }
        await op("add", msgspec.json.encode(entry).decode())
    while True:
        code, ident, _, _ = await op("call", "")
        if code in (b"EMPTY", "EMPTY"):
            break
        ident = ident.decode() if isinstance(ident, bytes) else str(ident)
        roll = rng.random()
        if roll < 0.05:
            await op("pass", ident, 2)
            continue
        if roll < 0.08:
            await op("defer", ident)
            await op("resume", ident)
            continue
        await op("start", ident)
        await op("finish", ident)
    await client.delete(*keys)
    return biggest


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    if not url or not any(h in url for h in ("127.0.0.1", "localhost", "[::1]")):
        raise SystemExit("REDIS_URL must point at a local Redis")
    client = aioredis.Redis.from_url(url, max_connections=64)
    script = client.register_script(lua_source("queue"))
    trivial = client.register_script("return 1")
    for r in range(args.rounds):
        prefix = f"hybench:{uuid.uuid4().hex[:8]}"
        lat: list[float] = []
        started = time.perf_counter()
        sizes = await asyncio.gather(*(room(client, script, prefix, n, args.patients, lat) for n in range(args.rooms)))
        queue_s = time.perf_counter() - started
        base: list[float] = []

        async def ping(count: int, into: list[float]) -> None:
            for _ in range(count):
                t = time.perf_counter()
                await trivial()
                into.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(ping(len(lat) // args.rooms, base) for _ in range(args.rooms)))
        base_s = time.perf_counter() - started
        q_rate, b_rate = len(lat) / queue_s, len(base) / base_s
        print(
            f"round {r + 1}: queue ops {len(lat)} in {queue_s:.2f}s = {q_rate:,.0f}/s "
            f"(p50 {statistics.median(lat) * 1e3:.2f} ms, p99 {pct(lat, 0.99) * 1e3:.2f} ms, "
            f"largest event {max(sizes):,} B); trivial EVALSHA {b_rate:,.0f}/s "
            f"(p50 {statistics.median(base) * 1e3:.2f} ms); ratio {q_rate / b_rate:.2f}",
            flush=True,
        )
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
