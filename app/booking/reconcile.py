"""Rebuilding the Redis availability index from PostgreSQL, one hospital-day at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from app.booking.slot_store import SlotStore, redis_errors
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
        await self._drop_dead_hold_ids(day)
        self.dirty.discard(day)
        if self.publisher is not None:
            await self.publisher.slots_changed(day, [s.slot_id for s in index.slots], "reconciled")
        return len(index.slots)

    async def _drop_dead_hold_ids(self, day: date) -> int:
        """A rebuilt day has no holds: their hashes were among the day's keys, which the rebuild
        replaced. Their ids stay in the day's `holds` set, though (it is not among them), and the
        reaper would claim them again every lease, for ever, as "vanished". Drop the ids whose hash
        is gone: a grab writes a hold's hash and its id in one script, and confirm and release
        delete both, so an id without a hash belongs to no live hold."""
        k = self.store.keys.day(day)
        async with redis_errors():
            raw = await self.store.client.zrange(k.holds, 0, -1)
            ids = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
            if not ids:
                return 0
            async with self.store.client.pipeline(transaction=False) as pipe:
                for hold_id in ids:
                    pipe.exists(k.hold(hold_id))
                found = await pipe.execute()
            dead = [hold_id for hold_id, n in zip(ids, found, strict=True) if not n]
            if dead:
                await self.store.client.zrem(k.holds, *dead)
        return len(dead)

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
        run_id, _ = await self.store.server_identity()
        days = set(self.horizon())
        days |= set(await booking_repo.days_with_slots(self.pool, self.hospital_id, min(days), max(days)))
        done = {day: await self.reconcile_day(day) for day in sorted(days)}
        # Recorded last, with the run id read first: if the server changed meanwhile, the record
        # does not match the new one and the next sweep rebuilds again (`reconcile_new_server`).
        await self.store.set_index_server(run_id)
        return done

    async def reconcile_new_server(self) -> bool:
        """Rebuild the whole horizon from PostgreSQL when the index was not built on the server
        answering now; True when it was not.

        Redis replication is asynchronous: after a Sentinel failover the promoted replica may lack
        the old primary's last writes (a grab, a confirm, a cancel), and a server restarted from
        its append-only file may lack up to its last second. Such an index is whole — every day
        still has its version key, so `reconcile_missing` sees nothing — but some counters are
        stale. Each full rebuild records the server's run id (`KeyBuilder.index_server`); a server
        is given a new run id at every start, and a promoted replica has its own, so a record that
        does not match (or is missing) means the data came from elsewhere. The record lives in
        Redis, so every process sees it: the first sweep after the switch rebuilds, later ones find
        the record matching (two at the same moment both rebuild: harmless). Days that fail stay
        dirty and are retried by `reconcile_dirty`."""
        run_id, built_on = await self.store.server_identity()
        if built_on == run_id:
            return False
        logger.warning(
            "redis index was built on server %s, now answering: %s; rebuilding the horizon from postgres",
            built_on or "(none)",
            run_id,
        )
        for day in self.horizon():
            await self.reconcile_day_safely(day)
        await self.store.set_index_server(run_id)
        return True

    async def missing_days(self) -> list[date]:
        """The horizon's days whose index is gone: no version key. Only reconcile writes `…:ver`
        (a grab on an empty day is refused NO_SLOT and writes nothing), so a day without one was
        never built in this Redis — a restart without persistence, a FLUSHDB, a failover to a
        server that never had it. One pipeline for the whole horizon."""
        days = self.horizon()
        async with redis_errors(), self.store.client.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.exists(self.store.keys.day(day).version)
            found = await pipe.execute()
        return [day for day, n in zip(days, found, strict=True) if not n]

    async def reconcile_missing(self) -> list[date]:
        """Rebuild from PostgreSQL every horizon day whose index vanished (see `missing_days`);
        the background sweep calls this, so Redis back empty heals itself within one interval."""
        missing = await self.missing_days()
        if not missing:
            return []
        logger.warning("redis index missing for %d day(s) from %s: rebuilding from postgres", len(missing), missing[0])
        for day in missing:
            await self.reconcile_day_safely(day)
        return [day for day in missing if day not in self.dirty]

    async def reconcile_dirty(self) -> list[date]:
        done = []
        for day in sorted(self.dirty):
            await self.reconcile_day_safely(day)
            if day not in self.dirty:
                done.append(day)
        return done
