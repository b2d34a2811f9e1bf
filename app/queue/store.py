"""The room queues in Redis: one Lua call per change (app/booking/lua/queue.lua), numbered and
published to the room's call screens in the same call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis

from app.booking.keys import KeyBuilder
from app.booking.slot_store import redis_errors
from realtime.publisher import lua_source


def queue_topic(resource_id: str, day: date) -> str:
    return f"queue:{resource_id}:{day.isoformat()}"


class QueueEntry(msgspec.Struct, frozen=True):
    """One checked-in appointment as the queue script stores it (short names: it is repeated in
    every event)."""

    id: str  # appointment id
    t: int  # ticket number of the room-day
    pc: int  # priority class: 0 emergency, 1 green channel, 2 elderly / child / military, 3 normal
    at: int  # appointment start, epoch s
    ci: int  # checked in, epoch ms
    dur: int  # minutes the exam takes
    nm: str = ""  # masked name, or "" (number only)
    ex: str = ""  # exam name
    mk: str = ""  # mark: emergency / green / elderly / child / military
    st: str = "waiting"
    calls: int = 0
    passes: int = 0
    ca: int = 0  # last called, epoch ms
    sa: int = 0  # exam started, epoch ms


class QueueResult(msgspec.Struct, frozen=True):
    code: str  # OK, NOT_LOADED, EMPTY, NO_ENTRY, BAD_STATE, EXISTS
    id: str  # the entry acted on (BAD_STATE: its state)
    seq: int
    state: dict[str, Any]  # empty unless OK


class QueueStore:
    def __init__(self, client: aioredis.Redis, keys: KeyBuilder) -> None:
        self.keys = keys
        self.client = client
        self._script = client.register_script(lua_source("queue"))

    async def loaded(self, resource_ids: Sequence[str], day: date) -> list[str]:
        """The rooms whose queue that day is loaded in Redis."""
        async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
            for rid in resource_ids:
                pipe.exists(self.keys.day(day).queue(rid)[3])
            found = await pipe.execute()
        return [rid for rid, n in zip(resource_ids, found, strict=True) if n]

    async def run(self, resource_id: str, day: date, op: str, now_ms: int, *args: str | int) -> QueueResult:
        topic = queue_topic(resource_id, day)
        async with redis_errors():
            raw = await self._script(
                keys=list(self.keys.day(day).queue(resource_id)),
                args=[op, self.keys.events_channel(topic), topic, now_ms, *args],
            )
        code, ident, seq, body = raw
        text = body.decode() if isinstance(body, bytes) else body
        ident = ident.decode() if isinstance(ident, bytes) else str(ident)
        return QueueResult(
            code.decode() if isinstance(code, bytes) else code, ident, int(seq), orjson.loads(text) if text else {}
        )

    async def load(
        self, resource_id: str, day: date, now_ms: int, entries: Sequence[QueueEntry], *, fill: bool = False
    ) -> QueueResult:
        """Replace the room-day's queue with `entries` (waiting ones in this order); with `fill`, only
        if it is not loaded (then the loaded queue is returned unchanged)."""
        body = msgspec.json.encode(list(entries)).decode()
        return await self.run(resource_id, day, "load", now_ms, body, *(["fill"] if fill else []))
