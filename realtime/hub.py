"""The per-process pub/sub hub: one Redis subscription for the whole process, fanned out to the
local subscribers (WebSocket handlers) through bounded queues.

* One pattern subscription (``<prefix>*``, the hospital's event channels) per process, so a
  subscriber registered with `subscribe` hears every event published after that call returns —
  a handler subscribes first and reads its snapshot second, and loses nothing in between.
* Fan-out never waits: each subscriber has a bounded queue; a subscriber whose queue is full is
  dropped (`Subscription.closed` says why) and its handler closes the socket. A slow or dead
  client therefore never slows anyone else.
* Subscriptions always end: `subscription()` is a context manager, and `close()` ends them all.
* When the Redis connection is lost and comes back, events in between are lost: every subscriber
  then gets `RESYNC` and reloads a snapshot. A connection that dies without a word (a firewall or
  NAT that forgets it, a peer gone without a reset) is found by a health check: after `health_s`
  of silence the hub sends PING on the subscription, and no answer within `health_s` more counts as
  a lost connection. Events carry a sequence number (parsed here once per
  event, not once per subscriber) so handlers can also detect gaps themselves.
* `local` topics (`publish_local`) are fed by this process only (the metrics wall, computed once
  per process and shared by its sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Final

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RESYNC: Final = -1  # the sequence number of the "reload your snapshot" marker
HEARTBEAT: Final = -2  # ... and of the "nothing happened for a while" marker (realtime/stream.py)
Event = tuple[int, bytes]  # (sequence number, the event as JSON)


class Subscription:
    """One local subscriber of one topic."""

    __slots__ = ("_queue", "closed", "topic")

    def __init__(self, topic: str, size: int) -> None:
        self.topic = topic
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(size)
        self.closed: str | None = None  # why the hub let go of it: "slow" or "shutdown"

    def offer(self, event: Event) -> bool:
        """Queue an event without waiting; False when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # wakes a waiting reader; a full queue has no waiter

    async def get(self) -> Event | None:
        """The next event, or None once the hub has let go of this subscriber."""
        if self.closed is not None:
            return None
        event = await self._queue.get()
        return None if self.closed is not None else event

    def get_ready(self, limit: int) -> list[Event]:
        """Up to `limit` events already queued, without waiting (a sender batches them)."""
        out: list[Event] = []
        while len(out) < limit and self.closed is None:
            try:
                event = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if event is None:
                break
            out.append(event)
        return out

    def pending(self) -> int:
        return self._queue.qsize()


class Hub:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        queue_size: int = 256,
        retry_s: float = 0.5,
        health_s: float = 5.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.queue_size = queue_size
        self.retry_s = retry_s
        self.health_s = health_s
        self._topics: dict[str, set[Subscription]] = {}
        self._watchers: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.ready = asyncio.Event()  # set while the Redis subscription is live
        self.delivered = 0
        self.dropped = 0
        self.events = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; waits (up to `wait_s`) until the subscription is live. If Redis is down
        the hub keeps retrying in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="realtime-hub")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), wait_s)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for subs in list(self._topics.values()):
            for sub in list(subs):
                sub.end("shutdown")
        self._topics.clear()

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, topic: str) -> Subscription:
        sub = Subscription(topic, self.queue_size)
        if self._closing:
            sub.end("shutdown")
            return sub
        self._topics.setdefault(topic, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._topics.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._topics[sub.topic]

    @contextlib.contextmanager
    def subscription(self, topic: str) -> Iterator[Subscription]:
        sub = self.subscribe(topic)
        try:
            yield sub
        finally:
            self.unsubscribe(sub)

    def watch(self, callback: Callable[[str], None]) -> None:
        """Call `callback(topic)` for every event the process hears (cheap: no I/O in it)."""
        self._watchers.append(callback)

    def count(self, topic: str | None = None) -> int:
        if topic is not None:
            return len(self._topics.get(topic, ()))
        return sum(len(s) for s in self._topics.values())

    def topics(self) -> list[str]:
        return sorted(self._topics)

    # -- fan-out -----------------------------------------------------------------------------

    def publish_local(self, topic: str, seq: int, data: bytes) -> None:
        """Hand an event to this process's subscribers of `topic` (no Redis)."""
        self._deliver(topic, (seq, data))

    def _deliver(self, topic: str, event: Event) -> None:
        subs = self._topics.get(topic)
        if not subs:
            return
        for sub in list(subs):
            if sub.offer(event):
                self.delivered += 1
            else:
                self.dropped += 1
                subs.discard(sub)
                sub.end("slow")
                logger.info("dropped a slow subscriber of %s", topic)
        if not subs:
            self._topics.pop(topic, None)

    def _resync_all(self) -> None:
        for topic in list(self._topics):
            self._deliver(topic, (RESYNC, b""))

    def _on_message(self, channel: bytes, data: bytes) -> None:
        topic = channel.decode()[len(self.prefix) :]
        self.events += 1
        for watcher in self._watchers:
            try:
                watcher(topic)
            except Exception:
                logger.exception("hub watcher failed")
        if topic not in self._topics:
            return
        try:
            seq = int(orjson.loads(data)["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed event on %s", topic)
            return
        self._deliver(topic, (seq, data))

    async def _run(self) -> None:
        lost = False
        loop = asyncio.get_running_loop()
        while not self._closing:
            pubsub = self.client.pubsub()
            try:
                await pubsub.psubscribe(self.prefix + "*")
                heard, pinged = loop.time(), None
                while not self._closing:
                    msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=min(1.0, self.health_s))
                    now = loop.time()
                    if msg is None:
                        if pinged is not None and now - pinged >= self.health_s:
                            raise ConnectionError(f"no answer to PING in {self.health_s:g} s")
                        if pinged is None and now - heard >= self.health_s:
                            await pubsub.ping()
                            pinged = now
                        continue
                    heard, pinged = now, None
                    kind = msg["type"]
                    if kind == "psubscribe":
                        self.ready.set()
                        if lost:
                            logger.info("hub subscription is back: every screen reloads its snapshot")
                            self._resync_all()
                            lost = False
                    elif kind == "pmessage":
                        self._on_message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.ready.is_set():
                    logger.warning("hub lost its Redis subscription: %s", type(exc).__name__)
                self.ready.clear()
                lost = True
                await asyncio.sleep(self.retry_s)
            except Exception:  # never let the process's only subscription die quietly
                logger.exception("hub listener failed; resubscribing")
                self.ready.clear()
                lost = True
                await asyncio.sleep(self.retry_s)
            finally:
                with contextlib.suppress(Exception):  # a dead peer must not hold the hub up either
                    await asyncio.wait_for(pubsub.aclose(), self.health_s)  # type: ignore[no-untyped-call]
