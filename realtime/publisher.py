"""Publishing change events to Redis pub/sub, right after PostgreSQL commits them.

Publishing is best effort: live screens that miss an event see a gap in the sequence numbers and
reload a snapshot, so a failed publish never fails the booking that caused it.

Two kinds of topic:
* ``grid:<department>:<day>`` — the live slot grid. `slots_changed` publishes the new state of the
  changed slots, per department, numbered from the department-day's counter (app/booking/lua/grid.lua),
  so every screen of a department sees the same numbered deltas and can check them against a
  snapshot read from the same counter (realtime/grid.py).
* anything else (`publish`): a JSON event numbered by a per-topic counter (publish.lua).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.booking.keys import KeyBuilder
from app.booking.slot_store import ScriptCall

logger = logging.getLogger(__name__)

# The booking channels whose places the grid shows (app/booking/service.py::CHANNELS).
GRID_CHANNELS = ("clinic", "desk", "self", "ward", "emergency", "checkup")


def lua_source(name: str) -> str:
    return resources.files("app.booking").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class EventPublisher:
    def __init__(self, client: aioredis.Redis, keys: KeyBuilder) -> None:
        self.client = client
        self.keys = keys
        self._publish = client.register_script(lua_source("publish"))
        self._grid = client.register_script(lua_source("grid"))

    async def publish(self, topic: str, event: dict[str, Any]) -> int | None:
        """Send `event` on `topic`, numbered by a per-topic sequence; returns the number, or None
        when Redis did not take it."""
        channel = self.keys.events_channel(topic)
        try:
            seq = await self._publish(keys=[f"{channel}:seq"], args=[channel, orjson.dumps({"topic": topic, **event})])
        except (RedisError, OSError) as exc:
            logger.warning("publish to %s failed: %s", topic, type(exc).__name__)
            return None
        return int(seq)

    async def slots_changed(self, day: date, slot_ids: Sequence[int], event: str) -> int:
        """Publish the current state of `slot_ids` (one day) to their departments' grid topics;
        returns how many messages went out (0 when Redis did not take them)."""
        call = self.grid_call(day, slot_ids, event)
        if call is None:
            return 0
        try:
            sent = await self._grid(keys=call.keys, args=call.args)
        except (RedisError, OSError) as exc:
            logger.warning("grid publish for %s failed: %s", day, type(exc).__name__)
            return 0
        return int(sent)

    def grid_call(self, day: date, slot_ids: Sequence[int], event: str) -> ScriptCall | None:
        """`slots_changed` as a call for `app.booking.slot_store.SlotStore.send` (None: no slots)."""
        if not slot_ids:
            return None
        k = self.keys.day(day)
        ids = sorted(set(slot_ids))
        args: list[Any] = [
            "publish",
            self.keys.events_channel("grid:"),
            day.isoformat(),
            k.grid_seq(""),
            event,
            ",".join(GRID_CHANNELS),
            *ids,
        ]
        return ScriptCall(self._grid, [k.slot(s) for s in ids], args)
