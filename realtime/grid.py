"""Snapshots of the live slot grid (one department, one day), read atomically with the counter that
numbers the grid's events (app/booking/lua/grid.lua), so a screen applies exactly the events
numbered after its snapshot."""

from __future__ import annotations

from datetime import date

import orjson
import redis.asyncio as aioredis

from app.booking.keys import KeyBuilder
from app.booking.slot_store import redis_errors
from app.planning.catalogue import Catalogue
from realtime.publisher import GRID_CHANNELS, lua_source


def grid_topic(department_id: str, day: date) -> str:
    return f"grid:{department_id}:{day.isoformat()}"


class GridReader:
    def __init__(self, client: aioredis.Redis, keys: KeyBuilder) -> None:
        self.keys = keys
        self._grid = client.register_script(lua_source("grid"))

    async def snapshot(
        self, catalogue: Catalogue, department_id: str, day: date
    ) -> tuple[int, list[dict[str, object]]]:
        """(sequence number, the department's slots that day in resource then start order)."""
        k = self.keys.day(day)
        resources = sorted(r.id for r in catalogue.resources.values() if r.department_id == department_id)
        keys = [k.grid_seq(department_id)] + [k.resource_index(r) for r in resources]
        async with redis_errors():
            raw = await self._grid(keys=keys, args=["snapshot", k.slot(0)[:-1], ",".join(GRID_CHANNELS)])
        body = orjson.loads(raw)
        return int(body["seq"]), list(body["slots"])
