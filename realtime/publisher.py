"""Publishing change events to Redis pub/sub, right after PostgreSQL commits them.

Publishing is best effort: live screens that miss an event see a gap in the sequence numbers and
reload a snapshot, so a failed publish never fails the booking that caused it.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.booking.keys import KeyBuilder

logger = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, client: aioredis.Redis, keys: KeyBuilder) -> None:
        self.client = client
        self.keys = keys
        source = resources.files("app.booking").joinpath("lua", "publish.lua").read_text(encoding="utf-8")
        self._publish = client.register_script(source)

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
