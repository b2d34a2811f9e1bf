"""Rebuilding the Redis availability index from PostgreSQL, one hospital-day at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from app.booking.slot_store import SlotStore
from app.db import booking_repo
from app.errors import AppError
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)


class Reconciler:
    """Reconciles days on demand, and remembers days whose Redis update failed (dirty) so the
    background loop can rebuild them once Redis answers again."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: SlotStore,
        *,
        hospital_id: str,
        timezone: str,
        horizon_days: int,
        now: Callable[[], datetime] = datetime.now,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.hospital_id = hospital_id
        self.tz = ZoneInfo(timezone)
        self.horizon_days = horizon_days
        self.now = now
        self.dirty: set[date] = set()
        self.publisher = publisher  # the live grids hear of every rebuilt day

    def today(self) -> date:
        return self.now().astimezone(self.tz).date()

    def horizon(self) -> list[date]:
        """Yesterday (late holds and no-show sweeps still touch it) through the booking horizon."""
        start = self.today() - timedelta(days=1)
        return [start + timedelta(days=n) for n in range(self.horizon_days + 2)]

    async def reconcile_day(self, day: date) -> int:
        """Replace the day's index with PostgreSQL's state; returns the number of slots written."""
        index = await booking_repo.day_index(self.pool, self.hospital_id, day)
        await self.store.replace_day(index)
        self.dirty.discard(day)
        if self.publisher is not None:
            await self.publisher.slots_changed(day, [s.slot_id for s in index.slots], "reconciled")
        return len(index.slots)

    async def reconcile_day_safely(self, day: date) -> None:
        try:
            await self.reconcile_day(day)
        except AppError as exc:
            logger.warning("reconcile of %s deferred: %s", day, exc.code)
            self.dirty.add(day)

    def mark_dirty(self, day: date) -> None:
        self.dirty.add(day)

    async def reconcile_all(self) -> dict[date, int]:
        """Every day of the horizon, plus any other day that has slots in PostgreSQL's horizon."""
        days = set(self.horizon())
        days |= set(await booking_repo.days_with_slots(self.pool, self.hospital_id, min(days), max(days)))
        return {day: await self.reconcile_day(day) for day in sorted(days)}

    async def reconcile_dirty(self) -> list[date]:
        done = []
        for day in sorted(self.dirty):
            await self.reconcile_day_safely(day)
            if day not in self.dirty:
                done.append(day)
        return done
