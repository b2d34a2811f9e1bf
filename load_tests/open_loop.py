"""An open-loop booking load: requests arrive at a fixed rate whatever the answers.

    python -m load_tests.open_loop --url http://127.0.0.1:8000 --token T --pairs pairs.txt \
        --slots 1,2,3 --rate 1000 --seconds 20

Arrivals are a Poisson process of `--rate` a second; each is sent at once on an idle keep-alive
connection, or on a new one (up to `--max-connections`), so a slow answer never delays the next
arrival (Locust's paced users and wrk's closed loop both wait for answers). Latency is measured
from the moment the request was due, not from when it could be sent, so a queue in front of the
server counts in full. Each request is one write on a TCP_NODELAY socket: Locust's client writes a
POST's headers and body separately without TCP_NODELAY, and Nagle's algorithm against the server's
delayed ACK added up to ~40 ms to requests of quiet connections (measured: p50 11 ms at 50
bookings/s from 10 users, 73 ms from 100 users).

`--pairs` has one "patient_id order_id" per line (run_bench writes it); each is booked once, into
the slots round-robin. Prints one line, `OPENLOOP_JSON {...}`: requests due and sent, answers by
kind (201 booked, 409 slot_unavailable full, anything else an error, transport errors),
percentiles of the latency in ms, the achieved rate, and this process's CPU seconds.
Only 127.0.0.1 is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import sys
import time
from urllib.parse import urlsplit

import orjson
import uvloop


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.booked = 0
        self.full = 0
        self.other = 0
        self.transport = 0
        self.sent = 0
        self.other_samples: list[str] = []
        self.last_answer = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


# uvicorn closes a keep-alive connection idle for 5 s: one idle longer than this is not reused (a
# request written as the server closes it would be lost with no answer).
IDLE_REUSE_S = 4.0


class Connections:
    """Idle keep-alive connections to the server, the most recently used first; a new one is opened
    when none is idle."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.idle_since: list[float] = []
        self.open = 0
        self.freed = asyncio.Condition()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            while self.idle:
                conn, since = self.idle.pop(), self.idle_since.pop()
                if time.monotonic() - since < IDLE_REUSE_S:
                    return conn
                conn[1].close()  # too old to trust: the server may be closing it right now
                self.open -= 1
            if self.open < self.limit:
                self.open += 1
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    self.open -= 1
                    raise
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return reader, writer
            async with self.freed:
                await self.freed.wait()

    async def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            self.idle.append(conn)
            self.idle_since.append(time.monotonic())
        else:
            self.open -= 1
        async with self.freed:
            self.freed.notify()


async def _one(conns: Connections, request: bytes, due: float, stats: Stats) -> None:
    conn = None
    try:
        conn = await conns.take()
        reader, writer = conn
        writer.write(request)
        status, body = await _read_response(reader)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        stats.transport += 1
        if len(stats.other_samples) < 5:
            stats.other_samples.append(f"transport: {type(exc).__name__}: {exc}"[:200])
        if conn is not None:
            conn[1].close()
        await conns.give_back(None)
        return
    stats.last_answer = time.perf_counter()
    stats.latencies.append(stats.last_answer - due)
    if status == 201:
        stats.booked += 1
    elif status == 409 and b'"slot_unavailable"' in body:
        stats.full += 1
    else:
        stats.other += 1
        if len(stats.other_samples) < 5:
            stats.other_samples.append(f"{status} {body[:160]!r}")
    await conns.give_back(conn)


def _request(host: str, port: int, token: str, patient_id: int, order_id: int, slot_id: int) -> bytes:
    body = orjson.dumps(
        {"patient_id": patient_id, "channel": "desk", "items": [{"order_id": order_id, "slot_id": slot_id}]}
    )
    head = (
        f"POST /api/v1/appointments HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run(args: argparse.Namespace, pairs: list[tuple[int, int]], slots: list[int]) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "", parts.port or 80
    conns = Connections(host, port, args.max_connections)
    stats = Stats()
    rng = random.Random(args.seed)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    due = start
    n = 0
    end = start + args.seconds
    while n < len(pairs):
        due += rng.expovariate(args.rate)
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        patient_id, order_id = pairs[n]
        request = _request(host, port, args.token, patient_id, order_id, slots[n % len(slots)])
        n += 1
        stats.sent += 1
        task = asyncio.create_task(_one(conns, request, due, stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sending_s = time.perf_counter() - start
    if tasks:
        await asyncio.wait(tasks, timeout=args.drain_seconds)
    for _, writer in conns.idle:
        writer.close()
    lat = sorted(stats.latencies)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rate_offered": args.rate,
        "seconds": round(sending_s, 3),
        "sent": stats.sent,
        "answered": len(lat),
        "unanswered": stats.sent - len(lat) - stats.transport,
        "booked": stats.booked,
        "full": stats.full,
        "other": stats.other,
        "transport_errors": stats.transport,
        "other_samples": stats.other_samples,
        "pairs_exhausted": n >= len(pairs),
        "connections": conns.open,
        "achieved_rate": round(stats.sent / sending_s, 1) if sending_s else 0.0,
        # from the first arrival to the last answer: bookings / this is the rate the server kept up
        "answer_seconds": round(max(sending_s, stats.last_answer - start), 3),
        "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0) if lat else None},
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.open_loop", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--pairs", required=True, help='file of "patient_id order_id" lines')
    p.add_argument("--slots", required=True, help="comma-separated slot ids")
    p.add_argument("--rate", type=float, required=True, help="arrivals per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-connections", type=int, default=2000)
    p.add_argument("--drain-seconds", type=float, default=30.0, help="wait for answers after the last arrival")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if urlsplit(args.url).hostname != "127.0.0.1":
        print("open_loop talks to 127.0.0.1 only", file=sys.stderr)
        return 2
    with open(args.pairs, encoding="ascii") as f:
        pairs = [(int(a), int(b)) for a, b in (line.split() for line in f if line.strip())]
    slots = [int(s) for s in args.slots.split(",")]
    result = uvloop.run(run(args, pairs, slots))
    print("OPENLOOP_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
