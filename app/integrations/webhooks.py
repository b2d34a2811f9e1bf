"""Webhooks for the hospital's other systems (queue calling, electronic signature, mobile nursing):
subscriptions to outbox topics, and the signed HTTP delivery of one event.

A delivery is `POST <url>` with the JSON body

    {"id": "hy-<outbox id>", "topic": "...", "aggregate_id": "...", "created_at": "...", "data": {...}}

(`data` is the outbox row's payload: ids and times, no names) and the headers

    X-HuiYue-Delivery:  hy-<outbox id>      the same on every attempt: the receiver dedupes on it
    X-HuiYue-Event:     the topic
    X-HuiYue-Timestamp: Unix seconds of this attempt
    X-HuiYue-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the subscription's secret>

2xx is delivered; 408, 429, 5xx and network errors are retried with backoff (no limit); any other
status is a refusal, retried a few times and then parked (docs/outbound.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import msgspec
import orjson

from app.db import outbound_repo
from app.errors import NotFound, ValidationFailed
from app.security.actor import Actor

WEBHOOK_TOPICS: tuple[str, ...] = (
    "appointment.booked",
    "appointment.rescheduled",
    "appointment.cancelled",
    "order.status",
)
SIGNATURE_HEADER = "X-HuiYue-Signature"
TIMESTAMP_HEADER = "X-HuiYue-Timestamp"
DELIVERY_HEADER = "X-HuiYue-Delivery"
EVENT_HEADER = "X-HuiYue-Event"
SECRET_PREFIX = "hyw_"  # noqa: S105 - the prefix that marks a webhook secret, not one  # nosec B105


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None, tolerance_s: int = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (replays refused)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def delivery_id(outbox_id: int) -> str:
    return f"hy-{outbox_id}"


def event_body(outbox_id: int, topic: str, aggregate_id: str, created_at: datetime, payload: Any) -> bytes:
    """The same bytes on every attempt (the signature covers them with the attempt's timestamp)."""
    return orjson.dumps(
        {
            "id": delivery_id(outbox_id),
            "topic": topic,
            "aggregate_id": aggregate_id,
            "created_at": created_at.isoformat(),
            "data": payload,
        }
    )


class WebhookResult(msgspec.Struct, frozen=True):
    outcome: str  # delivered | retry | refused
    error: str | None = None
    reachable: bool = True  # False: network error or 5xx -- the receiver looks down


async def post_event(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    outbox_id: int,
    topic: str,
    body: bytes,
    clock: Callable[[], float] = time.time,
) -> WebhookResult:
    """One signed attempt, stamped with the wall clock (receivers refuse stale timestamps)."""
    timestamp = str(int(clock()))
    headers = {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id(outbox_id),
        EVENT_HEADER: topic,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return WebhookResult("retry", f"{type(exc).__name__}", reachable=False)
    status = response.status_code
    if 200 <= status < 300:
        return WebhookResult("delivered")
    if status in (408, 429) or status >= 500:
        return WebhookResult("retry", f"HTTP {status}", reachable=status < 500)
    return WebhookResult("refused", f"HTTP {status}")


# Subscriptions -----------------------------------------------------------------------------------


class Subscription(msgspec.Struct):
    id: int
    name: str
    url: str
    topics: list[str]
    created_at: Any
    pending: int = 0
    failed: int = 0
    last_error: str | None = None
    paused_until: Any = None


class CreatedSubscription(Subscription):
    secret: str = ""  # shown once, at creation: the receiver verifies signatures with it


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("回调地址须为 http:// 或 https:// 开头的完整地址", detail=f"bad webhook url {url!r}")
    return url


def check_topics(topics: list[str]) -> list[str]:
    out: list[str] = []
    for topic in topics:
        if topic not in WEBHOOK_TOPICS:
            raise ValidationFailed(
                f"无法订阅的事件类型：{topic}（可订阅：{'、'.join(WEBHOOK_TOPICS)}）", detail=f"unknown topic {topic}"
            )
        if topic not in out:
            out.append(topic)
    if not out:
        raise ValidationFailed("至少需要订阅一种事件", detail="topics must not be empty")
    return out


def _subscription(row: asyncpg.Record) -> Subscription:
    keys = set(row.keys())
    return Subscription(
        id=row["id"],
        name=row["name"],
        url=row["url"],
        topics=list(row["topics"]),
        created_at=row["created_at"],
        pending=int(row["pending"]) if "pending" in keys else 0,
        failed=int(row["failed"]) if "failed" in keys else 0,
        last_error=row["last_error"] if "last_error" in keys else None,
        paused_until=row["paused_until"] if "paused_until" in keys else None,
    )


class WebhookRegistry:
    """Create, list and delete webhook subscriptions (system admins)."""

    def __init__(self, pool: asyncpg.Pool, hospital_id: str) -> None:
        self.pool = pool
        self.hospital_id = hospital_id

    async def create(self, actor: Actor, name: str, url: str, topics: list[str]) -> CreatedSubscription:
        """A new subscription: events of its topics written from now on are delivered to it."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = await outbound_repo.insert_subscription(
            self.pool, self.hospital_id, name, check_url(url), secret, check_topics(topics), actor.user_id
        )
        s = _subscription(row)
        return CreatedSubscription(s.id, s.name, s.url, s.topics, s.created_at, secret=secret)

    async def list(self) -> list[Subscription]:
        return [_subscription(r) for r in await outbound_repo.list_subscriptions(self.pool, self.hospital_id)]

    async def delete(self, actor: Actor, subscription_id: int) -> Subscription:
        row = await outbound_repo.delete_subscription(self.pool, self.hospital_id, subscription_id, actor.user_id)
        if row is None:
            raise NotFound("订阅不存在或已删除", detail=f"webhook subscription {subscription_id} not found")
        return _subscription(row)
