"""Slot pool administration: generating the horizon from templates, and locking windows."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, datetime

import asyncpg
import msgspec

from app.booking.generation import horizon_days, plan_slots
from app.booking.reconcile import Reconciler
from app.booking.service import CHANNELS
from app.booking.slot_store import SlotStore
from app.db import slot_repo
from app.errors import AppError, NotFound, ValidationFailed
from app.security.actor import Actor
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)

LOCK_KINDS = ("maintenance", "training", "expert_limit", "other")


class GenerationReport(msgspec.Struct):
    days: list[date]
    inserted: int
    updated: int


class LockReport(msgspec.Struct):
    lock_id: int
    slots: int
    live_bookings: int  # bookings inside the locked window that now need rescheduling


class PoolAdmin:
    def __init__(
        self, pool: asyncpg.Pool, store: SlotStore, reconciler: Reconciler, publisher: EventPublisher, hospital_id: str
    ) -> None:
        self.pool = pool
        self.store = store
        self.reconciler = reconciler
        self.publisher = publisher
        self.hospital_id = hospital_id

    async def generate(self, start: date | None = None, days: int | None = None) -> GenerationReport:
        """Generate slots for the horizon from the templates (idempotent), then rebuild those days."""
        first = start or self.reconciler.today()
        span = horizon_days(first, days or self.reconciler.horizon_days)
        templates = await slot_repo.active_templates(self.pool, self.hospital_id)
        counts = await slot_repo.upsert_slots(
            self.pool, self.hospital_id, plan_slots(templates, span, self.reconciler.tz)
        )
        for day in span:
            await self.reconciler.reconcile_day(day)
        return GenerationReport(days=span, inserted=counts.inserted, updated=counts.updated)

    async def lock(
        self,
        actor: Actor,
        resource_id: str,
        starts_at: datetime,
        ends_at: datetime,
        channels: list[str] | None,
        kind: str,
        reason: str,
    ) -> LockReport:
        if ends_at <= starts_at:
            raise ValidationFailed("锁定结束时间必须晚于开始时间", detail="ends_at must be after starts_at")
        if kind not in LOCK_KINDS:
            raise ValidationFailed(f"锁定类型无效：{kind}", detail=f"kind must be one of {LOCK_KINDS}")
        if channels is not None and (not channels or any(c not in CHANNELS for c in channels)):
            raise ValidationFailed("锁定渠道无效", detail=f"channels must be null or a non-empty subset of {CHANNELS}")
        if not reason.strip():
            raise ValidationFailed("请填写锁定原因", detail="reason must not be empty")
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM resource WHERE id = $1 AND hospital_id = $2)",
                resource_id,
                self.hospital_id,
            )
            if not exists:
                raise NotFound("设备/诊室不存在", detail=f"resource {resource_id} not found")
            row = await slot_repo.insert_lock(
                conn,
                hospital_id=self.hospital_id,
                resource_id=resource_id,
                starts_at=starts_at,
                ends_at=ends_at,
                channels=channels,
                kind=kind,
                reason=reason,
                created_by=actor.user_id,
            )
            slots = await slot_repo.slots_in_window(conn, resource_id, starts_at, ends_at)
        await self._apply(slots, channels, lock=True)
        return LockReport(lock_id=row["id"], slots=len(slots), live_bookings=sum(s["booked"] for s in slots))

    async def unlock(self, actor: Actor, lock_id: int) -> LockReport:
        row = await slot_repo.release_lock(self.pool, lock_id, actor.user_id)
        if row is None:
            raise NotFound("锁定记录不存在或已解除", detail=f"lock {lock_id} not found or already released")
        slots = await slot_repo.slots_in_window(self.pool, row["resource_id"], row["starts_at"], row["ends_at"])
        channels = list(row["channels"]) if row["channels"] is not None else None
        await self._apply(slots, channels, lock=False)
        return LockReport(lock_id=lock_id, slots=len(slots), live_bookings=sum(s["booked"] for s in slots))

    async def _apply(self, slots: list[asyncpg.Record], channels: list[str] | None, *, lock: bool) -> None:
        by_day: dict[date, list[int]] = defaultdict(list)
        for s in slots:
            by_day[s["day"]].append(s["id"])
        for day, ids in sorted(by_day.items()):
            try:
                if lock:
                    await self.store.lock(day, ids, channels)
                else:
                    await self.store.unlock(day, ids, channels)
            except AppError:
                # The lock is committed in PostgreSQL, which refuses bookings under it anyway;
                # the index catches up when Redis answers again.
                self.reconciler.mark_dirty(day)
                continue
            await self.publisher.slots_changed(day, ids, "lock" if lock else "unlock")
