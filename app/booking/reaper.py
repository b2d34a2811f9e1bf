"""The hold reaper: expired holds are confirmed if PostgreSQL committed their booking, else freed."""

from __future__ import annotations

import logging
from datetime import date
from typing import Literal

import asyncpg
import msgspec

from app.booking.reconcile import Reconciler
from app.booking.slot_store import SlotStore
from app.db import booking_repo
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)


class ReapReport(msgspec.Struct):
    released: int = 0
    confirmed: int = 0
    vanished: int = 0


async def reap_expired(
    pool: asyncpg.Pool,
    store: SlotStore,
    reconciler: Reconciler,
    now_ms: int,
    *,
    grace_ms: int = 5_000,
    lease_ms: int = 30_000,
    publisher: EventPublisher | None = None,
) -> ReapReport:
    """One sweep over the horizon's days. A hold is touched only `grace_ms` after its expiry,
    and PostgreSQL refuses commits `commit_margin_s` before it, so no commit can still be on its
    way when the reaper asks."""
    report = ReapReport()
    for day in reconciler.horizon():
        for hold_id in await store.claim_expired(day, now_ms - grace_ms, lease_ms):
            outcome = await settle_hold(pool, store, reconciler, day, hold_id, publisher)
            if outcome == "confirmed":
                report.confirmed += 1
            elif outcome == "released":
                report.released += 1
            else:
                report.vanished += 1
    return report


async def settle_hold(
    pool: asyncpg.Pool,
    store: SlotStore,
    reconciler: Reconciler,
    day: date,
    hold_id: str,
    publisher: EventPublisher | None = None,
    *,
    by: str = "reaper",
) -> Literal["confirmed", "released", "vanished"]:
    """A hold whose booking can no longer commit: confirmed if PostgreSQL has its booking, else
    its places given back (`by` the reaper, or app/booking/in_doubt.py)."""
    hold = await store.read_hold(day, hold_id)
    if hold is None:
        return "vanished"
    made, live = await booking_repo.hold_outcome(pool, hold_id)
    if made:
        await store.confirm(day, hold_id, hold.patient_id)
        if live != len(hold.items):
            # Cancelled or moved since it committed: PostgreSQL decides what the day looks
            # like (the day's other holds in flight survive the rebuild). When the booking
            # stands, confirming it is the whole repair.
            await reconciler.reconcile_day(day)
        logger.info("%s confirmed committed hold %s", by, hold_id)
        return "confirmed"
    slot_ids = [slot_id for slot_id, _ in hold.items]
    await store.release(day, hold_id, hold.patient_id, slot_ids)
    if publisher is not None:
        await publisher.slots_changed(day, slot_ids, "released")
    logger.info("%s released hold %s", by, hold_id)
    return "released"
