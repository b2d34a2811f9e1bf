"""The live availability index in Redis: the only module that talks to the Redis client for slots.

Every write is one Lua script (app/booking/lua/*.lua), so each change of a hospital-day is atomic.
Redis errors become CacheUnavailable at this boundary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import date
from importlib import resources
from typing import Any, TypeVar

import msgspec
import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.booking.index import DayIndex
from app.booking.keys import KeyBuilder
from app.coalesce import Coalescer
from app.errors import CacheUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

REBUILD_WINDOW_MS = 600_000  # a day's rebuild takes milliseconds to seconds; its window, at most this
SCRIPT_NAMES = ("grab", "confirm", "release", "reap", "cancel", "lock", "unlock", "reconcile")


def load_script(name: str) -> str:
    return resources.files("app.booking").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class GrabItem(msgspec.Struct, frozen=True):
    slot_id: int
    exam_code: str
    order_id: int


class GrabResult(msgspec.Struct, frozen=True):
    ok: bool
    pools: list[str]  # per item, when ok: "o" or "q:<channel>"
    reasons: list[str]  # per item, when not ok


class SlotView(msgspec.Struct, frozen=True):
    slot_id: int
    resource_id: str
    starts_at: int  # epoch seconds
    ends_at: int
    status: str
    capacity: int
    booked: int
    open_left: int
    quota_left: dict[str, int]
    locked_channels: list[str]  # "*" for all


class HoldRecord(msgspec.Struct, frozen=True):
    hold_id: str
    patient_id: int
    channel: str
    expires_ms: int
    items: list[tuple[int, str]]  # (slot_id, pool field)


class ScriptCall(msgspec.Struct, frozen=True):
    """One Lua script call, to run with others in one round trip (`run_commands`)."""

    script: Any  # redis.commands.core.AsyncScript
    keys: list[str]
    args: list[Any]


# A command for `run_commands`: a script call, or a plain command as its words ("HGETALL", key).
Command = ScriptCall | tuple[Any, ...]


async def run_commands(client: aioredis.Redis, calls: Sequence[Command]) -> list[Any]:
    """Run several commands in one round trip (a pipeline, not a transaction); returns each one's
    reply or its error. A script Redis does not know (NOSCRIPT: a restarted or flushed Redis) is run
    again on its own, which loads it. A connection failure raises RedisError/OSError."""
    async with client.pipeline(transaction=False) as pipe:
        for c in calls:
            if isinstance(c, ScriptCall):
                pipe.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
            else:
                pipe.execute_command(*c)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    for n, (c, result) in enumerate(zip(calls, results, strict=True)):
        if isinstance(result, NoScriptError) and isinstance(c, ScriptCall):
            script: AsyncScript = c.script
            try:
                results[n] = await script(keys=c.keys, args=c.args)
            except RedisError as exc:
                results[n] = exc
    return results


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        logger.warning("redis unavailable: %s", type(exc).__name__)
        raise CacheUnavailable(detail=f"redis: {type(exc).__name__}") from exc
    except RedisError as exc:
        logger.error("redis error: %s", exc)
        raise CacheUnavailable(detail=f"redis error: {exc}") from exc


class SlotStore:
    """Slot availability, holds and locks of the booking horizon, in Redis."""

    def __init__(self, client: aioredis.Redis, keys: KeyBuilder, *, max_batch: int = 64, in_flight: int = 2) -> None:
        self.client = client
        self.keys = keys
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPT_NAMES}
        # The booking path's commands (the gate's read, the grab, the confirm and grid publish) of
        # concurrent requests share round trips (app/coalesce.py).
        self.pipeline: Coalescer[list[Command], list[Any]] = Coalescer(
            self._send_batch, max_batch=max_batch, in_flight=in_flight
        )

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """`commands` in one round trip, shared with those of concurrent callers: each one's reply
        or its error. A connection failure raises RedisError/OSError (the same for every caller)."""
        return await self.pipeline.submit(list(commands))

    async def _send_one(self, command: Command) -> Any:
        async with redis_errors():
            (reply,) = await self.send([command])
            if isinstance(reply, Exception):
                raise reply
            return reply

    async def _send_batch(self, batch: list[list[Command]]) -> list[list[Any]]:
        replies = await run_commands(self.client, [c for commands in batch for c in commands])
        out, at = [], 0
        for commands in batch:
            out.append(replies[at : at + len(commands)])
            at += len(commands)
        return out

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async with redis_errors():
            return await self._scripts[name](keys=list(keys), args=list(args))

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with redis_errors():
            return await fn()

    # -- holds -------------------------------------------------------------------------------

    async def grab(
        self,
        day: date,
        hold_id: str,
        patient_id: int,
        channel: str,
        items: Sequence[GrabItem],
        now_ms: int,
        expires_ms: int,
        replacing_slot_id: int | None = None,
    ) -> GrabResult:
        """Take all `items` (slots of one day) as a hold, or none of them."""
        k = self.keys.day(day)
        keys = [k.holds, k.hold(hold_id), k.patient(patient_id), k.members]
        keys += [k.slot(item.slot_id) for item in items]
        args: list[Any] = [hold_id, patient_id, channel, now_ms, expires_ms, replacing_slot_id or ""]
        for item in items:
            args += [item.slot_id, item.exam_code, item.order_id]
        reply = await self._send_one(ScriptCall(self._scripts["grab"], keys, args))
        values = [_text(v) for v in reply[1:]]
        if int(reply[0]) == 1:
            return GrabResult(ok=True, pools=values, reasons=[])
        return GrabResult(ok=False, pools=[], reasons=values)

    async def confirm(self, day: date, hold_id: str, patient_id: int) -> bool:
        call = self.confirm_call(day, hold_id, patient_id)
        return int(await self._run("confirm", call.keys, call.args)) == 1

    def confirm_call(self, day: date, hold_id: str, patient_id: int) -> ScriptCall:
        """`confirm` as a call for `send` (its reply: 1 confirmed, 0 the hold is gone)."""
        k = self.keys.day(day)
        keys = [k.holds, k.hold(hold_id), k.patient(patient_id), *k.rebuilding]
        return ScriptCall(self._scripts["confirm"], keys, [hold_id])

    async def release(self, day: date, hold_id: str, patient_id: int, slot_ids: Sequence[int]) -> bool:
        """Give a hold's places back. `slot_ids` must be the hold's slots, in its order."""
        k = self.keys.day(day)
        keys = [k.holds, k.hold(hold_id), k.patient(patient_id)] + [k.slot(s) for s in slot_ids]
        return int(await self._run("release", keys, [hold_id])) == 1

    async def read_hold(self, day: date, hold_id: str) -> HoldRecord | None:
        raw = await self._call(lambda: self.client.hgetall(self.keys.day(day).hold(hold_id)))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        items = []
        for part in fields["items"].split(","):
            slot_id, pool = part.split(":", 1)
            items.append((int(slot_id), pool))
        return HoldRecord(hold_id, int(fields["patient"]), fields["channel"], int(fields["exp"]), items)

    async def claim_expired(self, day: date, now_ms: int, lease_ms: int, limit: int = 100) -> list[str]:
        reply = await self._run("reap", [self.keys.day(day).holds], [now_ms, lease_ms, limit])
        return [_text(v) for v in reply]

    async def cancel(self, day: date, slot_id: int, patient_id: int, pool: str) -> bool:
        k = self.keys.day(day)
        keys = [k.slot(slot_id), k.patient(patient_id), *k.rebuilding]
        return int(await self._run("cancel", keys, [slot_id, pool, patient_id])) == 1

    # -- locks -------------------------------------------------------------------------------

    async def lock(self, day: date, slot_ids: Sequence[int], channels: Sequence[str] | None) -> int:
        if not slot_ids:
            return 0
        k = self.keys.day(day)
        return int(await self._run("lock", [k.slot(s) for s in slot_ids], list(channels or ["*"])))

    async def unlock(self, day: date, slot_ids: Sequence[int], channels: Sequence[str] | None) -> int:
        if not slot_ids:
            return 0
        k = self.keys.day(day)
        return int(await self._run("unlock", [k.slot(s) for s in slot_ids], list(channels or ["*"])))

    # -- reconcile ---------------------------------------------------------------------------

    async def open_rebuild(self, day: date) -> int:
        """Open a rebuild window on the day, before its snapshot is read from PostgreSQL: confirms
        and cancels are logged until `replace_day` (given the returned log position) closes it, or
        `close_rebuild` does after a failure. The window lasts REBUILD_WINDOW_MS at most."""
        rb, log = self.keys.day(day).rebuilding
        async with redis_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.incr(rb)
            pipe.pexpire(rb, REBUILD_WINDOW_MS)
            pipe.llen(log)
            _, _, start = await pipe.execute()
        return int(start)

    async def close_rebuild(self, day: date) -> None:
        """Close a window `replace_day` did not (the rebuild failed on the way)."""
        rb, log = self.keys.day(day).rebuilding
        async with redis_errors():
            if int(await self.client.decr(rb)) <= 0:
                await self.client.delete(rb, log)

    async def replace_day(self, index: DayIndex, log_from: int | None = None, attempts: int = 20) -> int:
        """Atomically replace the day's keys with `index`; returns the day's new version. Holds
        in flight survive: those `index` already counts (committed) as they are, the others with
        their places taken again. With `log_from` (from `open_rebuild`), the confirms and cancels
        logged since are replayed onto `index` and the window is closed (reconcile.lua)."""
        k = self.keys.day(index.day)
        new_keys, payload = index.to_payload(k)
        body = orjson.dumps(payload).decode()
        for _ in range(attempts):
            async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
                pipe.smembers(k.members)
                pipe.get(k.version)
                members, version = await pipe.execute()
            current = sorted(_text(m) for m in members)
            keys = [k.members, k.version, *current, *new_keys, k.holds, *k.rebuilding]
            args = [_text(version) if version else "", len(current), body, k.tag, "" if log_from is None else log_from]
            reply = await self._run("reconcile", keys, args)
            if int(reply[0]) == 1:
                return int(reply[1])
            if _text(reply[1]) == "WINDOW":
                raise CacheUnavailable(detail=f"rebuild window of {index.day} expired before the index was written")
        raise CacheUnavailable(detail=f"reconcile of {index.day} kept racing with writers")

    async def server_identity(self) -> tuple[str, str | None]:
        """The answering server's run id (new at every start of a server, so a promoted replica
        has its own) and the run id the index was last rebuilt on (None: never, on this data)."""
        async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
            pipe.info("server")  # one pipeline, one connection: both answers come from one server
            pipe.get(self.keys.index_server)
            info, built_on = await pipe.execute()
        return str(info["run_id"]), _text(built_on) if built_on is not None else None

    async def set_index_server(self, run_id: str) -> None:
        await self._call(lambda: self.client.set(self.keys.index_server, run_id))

    # -- reads -------------------------------------------------------------------------------

    async def read_slots(self, day: date, resource_ids: Sequence[str]) -> list[SlotView]:
        """The day's slots of the given resources, in start order per resource."""
        k = self.keys.day(day)
        async with redis_errors():
            async with self.client.pipeline(transaction=False) as pipe:
                for rid in resource_ids:
                    pipe.zrange(k.resource_index(rid), 0, -1)
                id_lists = await pipe.execute()
            slot_ids = [int(_text(s)) for ids in id_lists for s in ids]
            if not slot_ids:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for sid in slot_ids:
                    pipe.hgetall(k.slot(sid))
                rows = await pipe.execute()
        return [_slot_view(sid, row) for sid, row in zip(slot_ids, rows, strict=True) if row]

    async def read_slots_by_id(self, day: date, slot_ids: Sequence[int]) -> list[SlotView | None]:
        """The given slots of one day, in order (None where the index has no such slot)."""
        k = self.keys.day(day)
        if len(slot_ids) == 1:  # the common case: in a round trip shared with concurrent bookings
            rows = [await self._send_one(("HGETALL", k.slot(slot_ids[0])))]
        else:
            async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
                for sid in slot_ids:
                    pipe.hgetall(k.slot(sid))
                rows = await pipe.execute()
        return [_slot_view(sid, row) if row else None for sid, row in zip(slot_ids, rows, strict=True)]

    async def read_slot(self, day: date, slot_id: int) -> SlotView | None:
        row = await self._call(lambda: self.client.hgetall(self.keys.day(day).slot(slot_id)))
        return _slot_view(slot_id, row) if row else None

    async def patient_entries(self, day: date, patient_id: int) -> dict[int, str]:
        raw = await self._call(lambda: self.client.hgetall(self.keys.day(day).patient(patient_id)))
        return {int(_text(k)): _text(v) for k, v in raw.items()}

    async def counters(self, day: date, slot_ids: Sequence[int]) -> list[tuple[int, int, str] | None]:
        """(b, cap, st) of each slot, in order; None where the index has no such slot."""
        k = self.keys.day(day)
        async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
            for sid in slot_ids:
                pipe.hmget(k.slot(sid), "b", "cap", "st")
            rows = await pipe.execute()
        return [None if b is None else (int(b), int(cap), _text(st)) for b, cap, st in rows]

    async def held_places(self, day: date) -> Counter[int]:
        """Places the day's live holds take, per slot."""
        k = self.keys.day(day)
        ids = await self.live_hold_ids(day)
        held: Counter[int] = Counter()
        if not ids:
            return held
        async with redis_errors(), self.client.pipeline(transaction=False) as pipe:
            for hold_id in ids:
                pipe.hget(k.hold(hold_id), "items")
            for items in await pipe.execute():
                for part in _text(items).split(",") if items else ():
                    held[int(part.split(":", 1)[0])] += 1
        return held

    async def live_hold_ids(self, day: date) -> list[str]:
        raw = await self._call(lambda: self.client.zrange(self.keys.day(day).holds, 0, -1))
        return [_text(v) for v in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _slot_view(slot_id: int, row: dict[Any, Any]) -> SlotView:
    f = {_text(k): _text(v) for k, v in row.items()}
    quota_left = {name[2:]: int(v) for name, v in f.items() if name.startswith("q:")}
    locked = sorted(name[3:] for name, v in f.items() if name.startswith("lk:") and int(v) > 0)
    return SlotView(
        slot_id=slot_id,
        resource_id=f["r"],
        starts_at=int(f["s"]),
        ends_at=int(f["e"]),
        status=f["st"],
        capacity=int(f["cap"]),
        booked=int(f["b"]),
        open_left=int(f.get("o", "0")),
        quota_left=quota_left,
        locked_channels=locked,
    )
