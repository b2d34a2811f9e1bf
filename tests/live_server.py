"""A real uvicorn server for tests that need real sockets (WebSockets, browsers), in the test's
own event loop and on the test's databases; a second worker as its own process; and throw-away
redis-server processes for the tests that kill Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
import uvicorn
import websockets
from redis.exceptions import ConnectionError as RedisConnectionError

from app.main import create_app
from app.services import Services
from app.settings import PROJECT_ROOT
from tests.helpers import new_patients_with_orders, open_slots, token_for

REDIS_SERVER = shutil.which("redis-server")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def free_ports(n: int) -> list[int]:
    """`n` different free ports (all bound at once: `free_port` twice may return one port twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(free_socket())
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


async def start_redis(
    port: int, *args: str, password: str | None = None, tls: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    """A throw-away redis-server (no RDB, no AOF) on `port`, ready to answer; `args` are more
    command-line options (e.g. "--replicaof", "127.0.0.1", "6380"), `password` its requirepass.
    A server that speaks TLS only (`args` with "--port 0 --tls-port <port>" and its tls-* files) is
    asked whether it is ready with the client's SSL arguments `tls`."""
    assert REDIS_SERVER is not None
    auth = ["--requirepass", password, "--masterauth", password] if password else []
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; its readiness is awaited below
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            # Its own folder: a replica's full sync writes an RDB file there, not into the checkout.
            "--dir",
            tempfile.mkdtemp(prefix="hy-redis-"),
            *auth,
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_redis(port, password=password, tls=tls)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proc


async def wait_for_redis(
    port: int, *, password: str | None = None, wait_s: float = 5.0, tls: dict[str, Any] | None = None
) -> None:
    """Until the Redis (or Sentinel) server on `port` answers PING (over TLS with `tls`, redis-py's
    SSL arguments)."""
    client = aioredis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=0.2, **(tls or {}))
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RedisConnectionError):
                if await client.ping():
                    return
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    raise TimeoutError(f"redis-server on port {port} did not start")


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)


@contextlib.asynccontextmanager
async def serve_app(services: Services) -> AsyncIterator[str]:
    """Serve the app on the test's services; yields its base URL (http://127.0.0.1:port)."""
    app = create_app(services.settings, "", "", background=False, services=services)
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws_ping_interval=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def worker_process(database_url: str, redis_url: str, prefix: str, **extra_env: str) -> AsyncIterator[str]:
    """`python -m app serve` as a separate process on the same databases (a second worker)."""
    async with running_worker(database_url, redis_url, prefix, **extra_env) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def running_worker(
    database_url: str, redis_url: str, prefix: str, **extra_env: str
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like `worker_process`, and hands over the process too (to kill it mid-work)."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HY_REDIS_PREFIX": prefix,
        "HY_LOG_LEVEL": "warning",
        "HY_DB_POOL_MIN": "1",
        "HY_DB_POOL_MAX": "4",
        **extra_env,
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on below without blocking the loop
        [sys.executable, "-m", "app", "serve", "--no-demo", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"worker exited with {proc.returncode}: {log.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url + "/ready")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("worker did not become ready")
                await asyncio.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 15)
        log.close()


async def open_socket(
    base_url: str, path: str, token: str | None, *, rcvbuf: int | None = None, **kw: Any
) -> websockets.ClientConnection:
    """A WebSocket with the session in the Authorization header (as a non-browser client would).
    `rcvbuf` pins the kernel's receive buffer (no autotuning), for clients meant to fall behind."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if rcvbuf is not None:
        host, port = base_url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        kw["sock"] = sock
    return await websockets.connect(base_url.replace("http", "ws", 1) + path, additional_headers=headers, **kw)


_pending: weakref.WeakKeyDictionary[websockets.ClientConnection, list[dict[str, Any]]] = weakref.WeakKeyDictionary()


async def next_frame(ws: websockets.ClientConnection, wait_s: float = 10.0, ack: bool = True) -> dict[str, Any]:
    """The next frame that is not a heartbeat (a burst of deltas arrives as one JSON array: they
    come out one by one), acknowledged as a live screen does (realtime/stream.py)."""
    pending = _pending.setdefault(ws, [])
    while not pending:
        parsed = orjson.loads(await asyncio.wait_for(ws.recv(), wait_s))
        frames = parsed if isinstance(parsed, list) else [parsed]
        pending.extend(f for f in frames if f.get("type") != "heartbeat")
        if ack and frames and "seq" in frames[-1]:
            await ws.send(orjson.dumps({"type": "ack", "seq": frames[-1]["seq"]}).decode())
    frame: dict[str, Any] = pending.pop(0)
    return frame


async def book_through_api(base: str, services: Services, exam: str, day: date, dept: str) -> int:
    """Book a new patient's `exam` on `day` in `dept` through the HTTP API as the clerk; the slot id."""
    (pid, (order,)), *_ = await new_patients_with_orders(services.pool, 1, [exam])
    resources = services.catalogue.resources
    slot = next(s for s in await open_slots(services, exam, day) if resources[s["resource_id"]].department_id == dept)
    token = await token_for(services, "clerk")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post(
            "/api/v1/appointments",
            json={"patient_id": pid, "channel": "desk", "items": [{"order_id": order, "slot_id": slot["id"]}]},
            headers={"authorization": f"Bearer {token}"},
        )
    assert r.status_code == 201, r.text
    return int(slot["id"])
