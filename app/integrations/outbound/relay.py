"""The outbound relay: delivers the outbox's appointment and order events to every HL7 peer (SIU
over MLLP) and webhook subscription, each destination on its own, each order's events in order.

Per destination, a round claims in one transaction the oldest waiting delivery of up to
`batch_size` orders (FOR UPDATE SKIP LOCKED: two relays never send the same row, and an order's
later event is never claimed while an earlier one waits), sends them one after another, and
records the outcomes before commit. Rounds repeat until nothing is due.

- accepted (HL7 AA / CA, HTTP 2xx): delivered;
- the destination is unreachable (connection refused, timeout, reset, HTTP 5xx): the message's
  attempts + 1 and backoff, the destination paused by backoff on its consecutive failures, its
  round ends. Nothing is lost and no limit applies; other destinations go on;
- refused (AE / AR / CE / CR, an ACK of another message, HTTP 4xx but 408 / 429): retried with
  backoff, the order's later messages waiting behind it; after `max_refusals` refusals it is
  parked as `failed` (visible in the backlog, `outbound_repo.requeue` sends it again) and the
  order's next message goes: SIU messages carry the whole appointment, so the next one brings the
  peer up to date;
- an event that is no message for this destination (an order event without SIU): skipped.
The stable ids (MSH-10 `HY<outbox id>`, X-HuiYue-Delivery `hy-<outbox id>`) make a message
repeated after a lost answer one the receiver can drop: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec

from app.db import outbound_repo
from app.db.pool import database_errors
from app.errors import AppError
from app.integrations import mllp, webhooks
from app.integrations.hl7.siu import (
    HL7_TOPICS,
    AppointmentFacts,
    MessageMeta,
    Peer,
    Trigger,
    build_siu,
    read_ack,
    trigger_for,
)
from app.integrations.outbound.settings import OutboundSettings
from app.notify.backoff import RetryPolicy, backoff_delay

logger = logging.getLogger(__name__)


class DestinationReport(msgspec.Struct):
    delivered: int = 0
    retried: int = 0
    failed: int = 0  # parked after refusals, or impossible to build
    skipped: int = 0  # no message for this destination
    rounds: int = 0
    down: bool = False  # the round ended because the destination did not answer


class OutboundReport(msgspec.Struct):
    destinations: dict[str, DestinationReport] = msgspec.field(default_factory=dict)

    def total(self, field: str) -> int:
        return sum(int(getattr(r, field)) for r in self.destinations.values())


class Claimed(msgspec.Struct):
    outbox_id: int
    attempts: int
    refusals: int
    topic: str
    aggregate_id: str
    payload: dict[str, Any]
    created_at: datetime


class Outcome(msgspec.Struct, frozen=True):
    kind: str  # delivered | skipped | failed | refused | retry
    note: str | None = None
    reachable: bool = True


class Channel(Protocol):
    name: str

    async def prepare(self, conn: asyncpg.Connection, claimed: Sequence[Claimed]) -> None: ...

    async def send(self, claimed: Claimed) -> Outcome: ...


def _claimed(row: Any) -> Claimed:
    payload = row["payload"] if isinstance(row["payload"], dict) else {}
    return Claimed(
        int(row["outbox_id"]),
        int(row["attempts"]),
        int(row["refusals"]),
        row["topic"],
        row["aggregate_id"],
        payload,
        row["created_at"],
    )


class Hl7Channel:
    """SIU messages to one peer over MLLP."""

    def __init__(self, peer: Peer, config: OutboundSettings) -> None:
        self.peer = peer
        self.config = config
        self.name = peer.destination
        self.tz = ZoneInfo(config.timezone)
        self._plans: dict[int, tuple[Trigger, str, AppointmentFacts] | Outcome] = {}

    async def prepare(self, conn: asyncpg.Connection, claimed: Sequence[Claimed]) -> None:
        self._plans = {}
        wanted: dict[int, tuple[Trigger, str, int]] = {}
        for c in claimed:
            trigger = trigger_for(c.topic, c.payload)
            if trigger is None:
                self._plans[c.outbox_id] = Outcome("skipped", f"no SIU for {c.topic} {c.payload.get('event', '')}")
                continue
            appointment_id = c.payload.get("appointment_id")
            if not isinstance(appointment_id, int) and isinstance(c.payload.get("order_id"), int):
                appointment_id = await outbound_repo.last_appointment_of_order(conn, c.payload["order_id"])
            if not isinstance(appointment_id, int):
                self._plans[c.outbox_id] = Outcome("skipped", "the event names no appointment")
                continue
            wanted[c.outbox_id] = (trigger[0], trigger[1], appointment_id)
        facts = await outbound_repo.appointment_facts(conn, sorted({w[2] for w in wanted.values()}))
        by_id = {c.outbox_id: c for c in claimed}
        for outbox_id, (trigger_, reason_key, appointment_id) in wanted.items():
            row = facts.get(appointment_id)
            if row is None:
                self._plans[outbox_id] = Outcome("failed", f"appointment {appointment_id} not found")
                continue
            reason = by_id[outbox_id].payload.get("reason")
            self._plans[outbox_id] = (
                trigger_,
                reason_key,
                AppointmentFacts(
                    **dict(row.items()),
                    reason=reason
                    if isinstance(reason, str) and trigger_ in (Trigger.CANCELLED, Trigger.NO_SHOW)
                    else "",
                ),
            )

    async def send(self, claimed: Claimed) -> Outcome:
        plan = self._plans.get(claimed.outbox_id)
        if plan is None:
            return Outcome("failed", "not prepared")
        if isinstance(plan, Outcome):
            return plan
        trigger, reason_key, facts = plan
        control_id = f"HY{claimed.outbox_id}"
        meta = MessageMeta(control_id, claimed.created_at, self.config.sending_facility, self.config.processing_id)
        try:
            message = build_siu(trigger, reason_key, facts, self.peer, meta, self.tz)
        except Exception as exc:  # a value the peer's character set cannot carry, a builder bug
            logger.exception("hl7 %s: outbox %s: message not built", self.name, claimed.outbox_id)
            return Outcome("failed", f"message not built: {type(exc).__name__}")
        try:
            answer = await mllp.exchange(self.peer.host, self.peer.port, message, self.peer.timeout_s)
        except (OSError, TimeoutError, mllp.FrameError) as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}"[:200], reachable=False)
        ack = read_ack(answer, control_id, self.peer.charset)
        if ack.accepted:
            return Outcome("delivered", f"SIU^{trigger.value}")
        return Outcome("refused", f"{ack.code or 'no ACK'} {ack.text}".strip()[:300])


class WebhookChannel:
    """Signed event posts to one subscription."""

    def __init__(self, subscription_id: int, url: str, secret: str, client: httpx.AsyncClient) -> None:
        self.name = f"webhook:{subscription_id}"
        self.url = url
        self.secret = secret
        self.client = client

    async def prepare(self, conn: asyncpg.Connection, claimed: Sequence[Claimed]) -> None:
        return None

    async def send(self, claimed: Claimed) -> Outcome:
        body = webhooks.event_body(
            claimed.outbox_id, claimed.topic, claimed.aggregate_id, claimed.created_at, claimed.payload
        )
        result = await webhooks.post_event(self.client, self.url, self.secret, claimed.outbox_id, claimed.topic, body)
        return Outcome(result.outcome, result.error, result.reachable)


async def _round(
    pool: asyncpg.Pool, channel: Channel, now: datetime, config: OutboundSettings, report: DestinationReport
) -> tuple[int, int, int]:
    """One claim-send-record transaction for one destination; (claimed, delivered, to retry)."""
    policy = RetryPolicy(config.retry_base_s, config.retry_cap_s, config.retry_jitter)
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        dest = await outbound_repo.destination(conn, channel.name, now)
        if dest is None or not dest["active"] or dest["paused"]:
            return 0, 0, 0
        rows = await outbound_repo.claim_due(conn, channel.name, now, config.batch_size)
        if not rows:
            return 0, 0, 0
        claimed = [_claimed(r) for r in rows]
        await channel.prepare(conn, claimed)
        done: list[tuple[int, str, str | None]] = []
        retries: list[tuple[int, datetime, str, bool]] = []
        answered = False
        for c in claimed:
            outcome = await channel.send(c)
            answered = answered or (outcome.reachable and outcome.kind not in ("skipped", "failed"))
            if outcome.kind in ("delivered", "skipped", "failed"):
                done.append((c.outbox_id, outcome.kind, None if outcome.kind == "delivered" else outcome.note))
                setattr(report, outcome.kind, getattr(report, outcome.kind) + 1)
            elif outcome.kind == "refused" and c.refusals + 1 >= config.max_refusals:
                done.append((c.outbox_id, "failed", outcome.note))
                report.failed += 1
            else:
                next_at = now + backoff_delay(c.attempts + 1, policy)
                retries.append((c.outbox_id, next_at, outcome.note or outcome.kind, outcome.kind == "refused"))
                report.retried += 1
            logger.info(
                "outbound %s: outbox %s %s attempt %d: %s %s",
                channel.name,
                c.outbox_id,
                c.topic,
                c.attempts + 1,
                outcome.kind,
                outcome.note or "",
            )
            if not outcome.reachable:
                failures = int(dest["failures"]) + 1
                await outbound_repo.mark_destination(
                    conn,
                    channel.name,
                    reachable=False,
                    paused_until=now + backoff_delay(failures, policy),
                    error=outcome.note,
                )
                report.down = True
                break  # the rest of the batch stays as it was: the destination looks down
        if answered:
            await outbound_repo.mark_destination(conn, channel.name, reachable=True)
        await outbound_repo.record_outcomes(conn, channel.name, now, done, retries)
    delivered = sum(1 for d in done if d[1] == "delivered")
    return len(rows), delivered, len(retries)


async def _drain(
    pool: asyncpg.Pool, channel: Channel, now: datetime, config: OutboundSettings, report: DestinationReport
) -> None:
    try:
        for _ in range(config.max_rounds):
            claimed, delivered, retried = await _round(pool, channel, now, config, report)
            if claimed == 0 or report.down:
                break
            report.rounds += 1
            if delivered == 0 and retried > 0:
                break
    except AppError as exc:  # the database went away mid-round: the round rolled back, nothing lost
        logger.warning("outbound %s: round skipped (%s)", channel.name, exc.code)


async def deliver_outbound(
    pool: asyncpg.Pool, config: OutboundSettings, now: datetime, *, client: httpx.AsyncClient | None = None
) -> OutboundReport:
    """One call: every HL7 peer and webhook subscription, concurrently, until nothing is due at
    `now` (see the module docstring)."""
    await outbound_repo.sync_hl7_destinations(pool, [p.destination for p in config.peers], HL7_TOPICS)
    hooks = await outbound_repo.active_webhooks(pool)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=config.webhook_timeout_s)
    try:
        channels: list[Channel] = [Hl7Channel(p, config) for p in config.peers]
        channels += [WebhookChannel(int(h["id"]), h["url"], h["secret"], http) for h in hooks]
        report = OutboundReport({c.name: DestinationReport() for c in channels})
        await asyncio.gather(*(_drain(pool, c, now, config, report.destinations[c.name]) for c in channels))
    finally:
        if own_client:
            await http.aclose()
    return report


async def run_outbound(pool: asyncpg.Pool, config: OutboundSettings, stop: asyncio.Event) -> None:
    """Until `stop` is set. Cancelling it mid-send is safe: the round rolls back and its messages
    go again, with the same ids."""
    async with httpx.AsyncClient(timeout=config.webhook_timeout_s) as client:
        while not stop.is_set():
            try:
                report = await deliver_outbound(pool, config, datetime.now(UTC), client=client)
                if report.total("delivered") or report.total("failed") or report.total("retried"):
                    logger.info(
                        "outbound: delivered %d, to retry %d, failed %d",
                        report.total("delivered"),
                        report.total("retried"),
                        report.total("failed"),
                    )
            except AppError as exc:
                logger.warning("outbound delivery skipped: %s", exc.code)
            except Exception:
                logger.exception("outbound delivery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=config.interval_s)
