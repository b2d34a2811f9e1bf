"""Serving one live screen over a WebSocket: a snapshot, then the deltas numbered after it.

The protocol (JSON text frames, server to client):
* ``{"type":"snapshot","seq":n,...}`` — the whole state, numbered n: on connect, on the client's
  ``{"type":"resync"}``, after a gap in the sequence, and after the hub lost Redis for a while;
* ``{"type":"delta","seq":n+1,...}`` — each change after it, in order, none skipped; when several
  are waiting they go together as one JSON array of deltas (one frame instead of many: under a
  burst the per-frame cost, not the bytes, is what a worker with a thousand screens runs out of);
* ``{"type":"heartbeat"}`` — when nothing happened for `heartbeat_s`, so a screen can tell a quiet
  day from a dead network and show its "reconnecting" mark.

The utilisation wall (`/ws/wall`, realtime/live.py) has no deltas: every frame, the first one
included, is the whole set of figures, typed ``{"type":"metrics","seq":n,"data":...}``, and plays
the part of the snapshot.

Client to server: ``{"type":"auth","token":...}`` (first frame, see app/api/routing.py::ws_route),
``{"type":"resync"}``, and ``{"type":"ack","seq":n}`` — the last frame it has handled, at least
every 16 frames. A client more than `max_unacked` frames behind is too slow and is
dropped: the server's own write buffers cannot be trusted to push back (a client whose socket
still takes bytes but whose program does not read them would otherwise grow them without bound).

Close codes: 4400 bad request, 4401 not logged in, 4403 role not allowed, 4408 too slow (the
client did not keep up and was dropped), 1001 server shutting down, 1013 try again later (the
snapshot could not be read), 1011 internal error (logged, no details to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from realtime.hub import HEARTBEAT, RESYNC, Subscription

logger = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_LATER = 1013

Snapshot = Callable[[], Awaitable[tuple[int, bytes]]]  # (seq, the snapshot frame)
HEARTBEAT_FRAME = orjson.dumps({"type": "heartbeat"}).decode()
BATCH_MAX = 64  # deltas sent together at most


async def close_quietly(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason), 2.0)


class _Acks:
    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0  # the last frame the client said it handled


async def _listen(ws: WebSocket, sub: Subscription, acks: _Acks) -> None:
    """Read what the client sends until it goes away: acknowledgements, resync requests. When it
    goes, the subscription ends, which wakes the sender."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if not text:
                continue
            if '"ack"' in text:
                try:
                    acks.seq = max(acks.seq, int(orjson.loads(text)["seq"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
            elif '"resync"' in text:
                sub.offer((RESYNC, b""))
    finally:
        sub.end("client left")


async def _heartbeat(sub: Subscription, every_s: float, sent: list[float]) -> None:
    """Queue a heartbeat marker whenever nothing was sent for `every_s`."""
    loop = asyncio.get_running_loop()
    while sub.closed is None:
        await asyncio.sleep(max(0.05, sent[0] + every_s - loop.time()))
        if loop.time() - sent[0] >= every_s:
            sub.offer((HEARTBEAT, b""))
            sent[0] = loop.time()


async def stream(
    ws: WebSocket,
    sub: Subscription,
    snapshot: Snapshot,
    *,
    send_timeout_s: float = 5.0,
    heartbeat_s: float = 15.0,
    max_unacked: int = 256,
) -> str:
    """Serve `sub` on `ws` until the client leaves, is too slow, or the hub shuts down; returns
    why it ended. The caller owns the subscription (and ends it)."""

    loop = asyncio.get_running_loop()
    sent = [loop.time()]  # when the last frame went out

    async def send(text: str) -> None:
        async with asyncio.timeout(send_timeout_s):  # a timer, not a task per frame (wait_for)
            await ws.send_text(text)
        sent[0] = loop.time()

    async def fresh() -> int:
        seq, frame = await snapshot()
        await send(frame.decode())
        return seq

    acks = _Acks()
    helpers = [
        asyncio.create_task(_listen(ws, sub, acks)),
        asyncio.create_task(_heartbeat(sub, heartbeat_s, sent)),
    ]
    try:
        last = await fresh()
        acks.seq = last  # the snapshot itself needs no acknowledgement
        while True:
            if last - acks.seq > max_unacked:
                await close_quietly(ws, CLOSE_TOO_SLOW, "too slow")
                return "too slow"
            event = await sub.get()
            if event is None:
                if sub.closed == "slow":
                    await close_quietly(ws, CLOSE_TOO_SLOW, "too slow")
                    return "too slow"
                if sub.closed == "client left":
                    return "client left"
                if sub.closed == "revoked":
                    await close_quietly(ws, CLOSE_NOT_AUTHENTICATED, "revoked")
                    return "revoked"
                await close_quietly(ws, CLOSE_GOING_AWAY, "shutdown")
                return "shutdown"
            batch: list[bytes] = []
            for seq, data in [event, *sub.get_ready(BATCH_MAX - 1)]:
                if seq == HEARTBEAT:
                    if not batch:
                        await send(HEARTBEAT_FRAME)
                elif seq == RESYNC or seq > last + 1:
                    if batch:
                        await _send_batch(send, batch)
                        batch = []
                    last = await fresh()  # its counter is at least this event's number
                    acks.seq = max(acks.seq, last)  # the snapshot replaces what it skipped: a new start
                elif seq == last + 1:
                    batch.append(data)
                    last = seq
                # seq <= last: already in the snapshot
            if batch:
                await _send_batch(send, batch)
    except (TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
        # A client that stopped reading (send timed out) or vanished mid-send.
        await close_quietly(ws, CLOSE_TOO_SLOW, "too slow")
        return "send failed"
    finally:
        for task in helpers:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _send_batch(send: Callable[[str], Awaitable[None]], batch: list[bytes]) -> None:
    if len(batch) == 1:
        await send(batch[0].decode())
    else:
        await send("[" + b",".join(batch).decode() + "]")
