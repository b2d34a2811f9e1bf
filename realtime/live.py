"""What a worker process needs to serve live screens: the hub, grid snapshots, and the metrics
wall's figures — computed once per process and shared by all its wall screens.

The metrics are recomputed (at most once per `min_interval_s` per day shown) when a grid event
says slots changed, and every `idle_refresh_s` anyway ("as the day goes"); each result goes to
the local topic ``metrics:<day>`` as a whole new frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.booking.keys import KeyBuilder
from app.errors import AppError
from app.planning.catalogue import Catalogue
from realtime.grid import GridReader
from realtime.hub import RESYNC, Hub, Subscription

logger = logging.getLogger(__name__)

Compute = Callable[[date], Awaitable[dict[str, Any]]]


def metrics_topic(day: date) -> str:
    return f"metrics:{day.isoformat()}"


class _Figures:
    __slots__ = ("at", "dirty", "frame", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.frame = b""
        self.at = 0.0  # monotonic time of the last computation
        self.dirty = True


class _Loop:
    """A background loop of the process (`_run`), started once, cancelled on close."""

    name = "live-loop"
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class MetricsFeed(_Loop):
    name = "metrics-feed"

    def __init__(
        self, hub: Hub, compute: Compute, *, min_interval_s: float = 1.0, idle_refresh_s: float = 30.0
    ) -> None:
        self.hub = hub
        self.compute = compute
        self.min_interval_s = min_interval_s
        self.idle_refresh_s = idle_refresh_s
        self._days: dict[date, _Figures] = {}
        self._locks: dict[date, asyncio.Lock] = {}
        self.computations = 0
        hub.watch(self._on_event)

    def _on_event(self, topic: str) -> None:
        if topic.startswith("grid:"):
            # A booking made today changes today's counts whatever day its exam is on: mark all.
            for figures in self._days.values():
                figures.dirty = True

    async def _refresh(self, day: date) -> _Figures:
        figures = self._days.setdefault(day, _Figures())
        async with self._locks.setdefault(day, asyncio.Lock()):
            if figures.frame and not figures.dirty and time.monotonic() - figures.at < self.idle_refresh_s:
                return figures
            figures.dirty = False
            data = await self.compute(day)
            self.computations += 1
            figures.seq += 1
            figures.at = time.monotonic()
            figures.frame = orjson.dumps({"type": "metrics", "seq": figures.seq, "data": data})
        return figures

    async def snapshot(self, day: date) -> tuple[int, bytes]:
        figures = self._days.get(day)
        if figures is None or not figures.frame:
            figures = await self._refresh(day)
        return figures.seq, figures.frame

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.min_interval_s))
            now = time.monotonic()
            for day, figures in list(self._days.items()):
                topic = metrics_topic(day)
                if not self.hub.count(topic):
                    if now - figures.at > self.idle_refresh_s:
                        del self._days[day]  # nobody watches it: forget it
                    continue
                due = figures.dirty and now - figures.at >= self.min_interval_s
                if not due and now - figures.at < self.idle_refresh_s:
                    continue
                try:
                    await self._refresh(day)
                except AppError as exc:
                    logger.warning("metrics for %s not refreshed: %s", day, exc.code)
                    continue
                except Exception:  # the feed outlives any one bad computation
                    logger.exception("metrics for %s failed", day)
                    continue
                self.hub.publish_local(topic, figures.seq, figures.frame)


class DeviceWatch(_Loop):
    """Ends the screens of a display device the moment an admin revokes it: the revoke publishes
    on the `devices` topic, every worker hears it. After a lost Redis connection (revocations may
    have been missed) every watched device is checked again with `still_valid`."""

    name = "device-watch"

    def __init__(self, hub: Hub, still_valid: Callable[[int], Awaitable[bool]]) -> None:
        self.hub = hub
        self.still_valid = still_valid
        self._subs: dict[int, set[Subscription]] = {}

    @contextlib.contextmanager
    def watching(self, device_id: int | None, sub: Subscription) -> Iterator[None]:
        if device_id is None:
            yield
            return
        self._subs.setdefault(device_id, set()).add(sub)
        try:
            yield
        finally:
            subs = self._subs.get(device_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[device_id]

    def revoke(self, device_id: int) -> None:
        for sub in self._subs.pop(device_id, set()):
            sub.end("revoked")

    async def _run(self) -> None:
        while True:
            with self.hub.subscription("devices") as sub:
                while (event := await sub.get()) is not None:
                    seq, data = event
                    if seq == RESYNC:
                        for device_id in list(self._subs):
                            with contextlib.suppress(AppError):
                                if not await self.still_valid(device_id):
                                    self.revoke(device_id)
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        body = orjson.loads(data)
                        if body.get("event") == "revoked":
                            self.revoke(int(body["device_id"]))
            await asyncio.sleep(0.1)  # dropped (never in practice): subscribe again


class Live:
    """The live-screen services of one worker process, started on first use."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeyBuilder,
        compute: Compute,
        catalogue: Callable[[], Catalogue],
        device_valid: Callable[[int], Awaitable[bool]],
        *,
        queue_size: int = 256,
    ) -> None:
        self.hub = Hub(client, keys.events_prefix, queue_size=queue_size)
        self.grid = GridReader(client, keys)
        self.metrics = MetricsFeed(self.hub, compute)
        self.devices = DeviceWatch(self.hub, device_valid)
        self.catalogue = catalogue
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.hub.start()
            self.metrics.start()
            self.devices.start()

    async def close(self) -> None:
        await self.devices.close()
        await self.metrics.close()
        await self.hub.close()

    async def grid_snapshot(self, department_id: str, day: date) -> tuple[int, bytes]:
        seq, slots = await self.grid.snapshot(self.catalogue(), department_id, day)
        frame = orjson.dumps(
            {"type": "snapshot", "seq": seq, "topic": f"grid:{department_id}:{day.isoformat()}", "slots": slots}
        )
        return seq, frame
