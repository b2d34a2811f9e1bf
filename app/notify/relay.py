"""The notice relay: delivers the outbox's 'patient.notice' rows through a sender.

Each round, in one transaction, claims the oldest waiting notice of up to `batch_size` patients
(FOR UPDATE SKIP LOCKED: two relays never hold the same row, and a patient's later notice is never
claimed while an earlier one waits), sends them concurrently, and records the outcomes before
commit. Rounds repeat until nothing is due, so a patient's queued notices go out one after another,
in order, within one call.

- delivered: `delivered_at` set;
- a failure that may pass (gateway down, timeout, 5xx, 429): `attempts` + 1, `next_attempt_at` by
  exponential backoff, `last_error`; that patient's later notices wait behind it;
- a failure that cannot pass (number refused, no destination, malformed payload), an expired
  notice, or a reminder of an appointment no longer booked: `dead_at` and `last_error` -- the
  patient's next notice follows.
The stable id `hy-<outbox id>` makes a send repeated after a lost answer (timeout, crash before
commit) a duplicate the gateway drops. A round in which nothing was delivered but something
failed ends the call: the gateway looks down, the next sweep tries again."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.db import notify_repo
from app.db.pool import database_errors
from app.notify.backoff import RetryPolicy, backoff_delay
from app.notify.message import Outcome, OutgoingMessage, Sender, SendResult
from app.notify.render import REMINDER_KINDS
from app.notify.settings import NotifySettings
from app.security.crypto import pii_keys

logger = logging.getLogger(__name__)


class DeliveryReport(msgspec.Struct):
    delivered: int = 0
    retried: int = 0
    failed: int = 0  # refused for good, no destination, malformed
    skipped: int = 0  # expired, or a reminder of an appointment no longer booked
    rounds: int = 0


class _Claimed(msgspec.Struct):
    outbox_id: int
    attempts: int
    patient_id: int | None
    kind: str
    text: str
    appointment_id: int | None
    expires_at: datetime | None


def _parse(row: Any) -> _Claimed:
    payload = row["payload"] if isinstance(row["payload"], dict) else {}
    try:
        patient_id: int | None = int(row["aggregate_id"])
    except ValueError:
        patient_id = None
    appointment_id = payload.get("appointment_id")
    expires_at = None
    if isinstance(payload.get("expires_at"), str):
        try:
            expires_at = datetime.fromisoformat(payload["expires_at"])
        except ValueError:
            expires_at = None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = None  # a time without a zone is ambiguous: no expiry rather than a wrong one
    kind, text = payload.get("kind"), payload.get("message")
    return _Claimed(
        outbox_id=int(row["id"]),
        attempts=int(row["attempts"]),
        patient_id=patient_id,
        kind=kind if isinstance(kind, str) else "",
        text=text.strip() if isinstance(text, str) else "",
        appointment_id=appointment_id if isinstance(appointment_id, int) else None,
        expires_at=expires_at,
    )


def _set_aside(claimed: _Claimed, appointment_status: str | None, now: datetime) -> tuple[str, str] | None:
    """('failed' | 'skipped', why) for a notice not to send at all, else None."""
    if claimed.patient_id is None:
        return "failed", "aggregate_id is not a patient id"
    if not claimed.text:
        return "failed", "payload has no message text"
    if claimed.expires_at is not None and now >= claimed.expires_at:
        return "skipped", "expired before it could be delivered"
    if claimed.kind in REMINDER_KINDS and claimed.appointment_id is not None and appointment_status != "booked":
        return "skipped", f"appointment no longer booked ({appointment_status})"
    return None


async def _send(sender: Sender, message: OutgoingMessage, limit: asyncio.Semaphore) -> SendResult:
    async with limit:
        try:
            return await sender.send(message)
        except Exception as exc:  # a sender bug or its own storage down: keep the message, try later
            logger.exception("notice %s: sender raised", message.outbox_id)
            return SendResult(Outcome.RETRY, "none", "", f"sender raised {type(exc).__name__}")


async def _round(
    pool: asyncpg.Pool, sender: Sender, now: datetime, settings: NotifySettings, report: DeliveryReport
) -> tuple[int, int, int]:
    """One claim-send-record transaction; returns (claimed, delivered, to retry)."""
    policy = RetryPolicy(settings.retry_base_s, settings.retry_cap_s, settings.retry_jitter)
    async with database_errors(), pool.acquire() as conn, conn.transaction():
        rows = await notify_repo.claim_due(conn, now, settings.batch_size)
        if not rows:
            return 0, 0, 0
        claimed = [_parse(r) for r in rows]
        contacts = await notify_repo.recipients(
            conn,
            [c.outbox_id for c in claimed],
            [c.patient_id or 0 for c in claimed],
            [c.appointment_id or 0 for c in claimed],
        )
        delivered: list[int] = []
        retries: list[tuple[int, datetime, str]] = []
        dead: list[tuple[int, str]] = []
        to_send: list[tuple[_Claimed, OutgoingMessage]] = []
        for c in claimed:
            contact = contacts[c.outbox_id]
            aside = _set_aside(c, contact["appointment_status"], now)
            if aside is not None:
                dead.append((c.outbox_id, aside[1]))
                report.skipped += aside[0] == "skipped"
                report.failed += aside[0] == "failed"
                logger.info("notice %s kind %s: %s (%s)", c.outbox_id, c.kind, aside[0], aside[1])
                continue
            assert c.patient_id is not None
            message = OutgoingMessage(
                message_id=f"{settings.message_id_prefix}-{c.outbox_id}",
                outbox_id=c.outbox_id,
                patient_id=c.patient_id,
                kind=c.kind,
                text=c.text,
                phone=contact["phone"] or pii_keys().open_phone(contact["phone_enc"]),
                wechat_openid=contact["wechat_openid"],
                appointment_id=c.appointment_id,
            )
            to_send.append((c, message))
        limit = asyncio.Semaphore(settings.concurrency)
        results = await asyncio.gather(*(_send(sender, m, limit) for _, m in to_send))
        for (c, message), result in zip(to_send, results, strict=True):
            if result.outcome is Outcome.DELIVERED:
                delivered.append(c.outbox_id)
                report.delivered += 1
            elif result.outcome is Outcome.FAILED:
                dead.append((c.outbox_id, result.error or "refused"))
                report.failed += 1
            else:
                retries.append((c.outbox_id, now + backoff_delay(c.attempts + 1, policy), result.error or "retry"))
                report.retried += 1
            # Patient id and masked destination only: never the number, the name or the text.
            logger.info(
                "notice %s patient %s kind %s attempt %d: %s via %s %s %s",
                c.outbox_id,
                message.patient_id,
                c.kind,
                c.attempts + 1,
                result.outcome.value,
                result.channel,
                result.destination,
                result.error,
            )
        await notify_repo.record_outcomes(conn, now, delivered, retries, dead)
    return len(rows), len(delivered), len(retries)


async def deliver_due(
    pool: asyncpg.Pool, sender: Sender, now: datetime, settings: NotifySettings | None = None
) -> DeliveryReport:
    """Deliver the notices due at `now`, each patient's in outbox order (see the module docstring)."""
    settings = settings or NotifySettings()
    report = DeliveryReport()
    for _ in range(settings.max_rounds):
        claimed, delivered, retried = await _round(pool, sender, now, settings, report)
        if claimed == 0:
            break
        report.rounds += 1
        if delivered == 0 and retried > 0:
            break
    return report
