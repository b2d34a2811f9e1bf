"""Rebuilding the Redis availability index from PostgreSQL, one hospital-day at a time."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from app.booking.slot_store import SlotStore, redis_errors
from app.db import booking_repo
from app.errors import AppError
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)


# A slot as the drift check saw it: PostgreSQL's booked, capacity and status; Redis's b, cap and st
# (None: the slot is not in the index); the places the day's live holds take on it.
Observed = tuple[int, int, str, tuple[int, int, str] | None, int]


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
        drift_check_s: float = 60.0,
    ) -> None:
        self.pool = pool
        self.store = store
        self.hospital_id = hospital_id
        self.tz = ZoneInfo(timezone)
        self.horizon_days = horizon_days
        self.now = now
        self.dirty: set[date] = set()
        self.publisher = publisher  # the live grids hear of every rebuilt day
        self.drift_check_s = drift_check_s  # 0: off
        self._drift_checked = float("-inf")  # time.monotonic() of the last look at the horizon
        self._suspects: dict[tuple[date, int], Observed] = {}
        self.drift_repairs = 0  # days rebuilt because their counters had drifted

    def today(self) -> date:
        return self.now().astimezone(self.tz).date()

    def horizon(self) -> list[date]:
        """Yesterday (late holds and no-show sweeps still touch it) through the booking horizon."""
        start = self.today() - timedelta(days=1)
        return [start + timedelta(days=n) for n in range(self.horizon_days + 2)]

    async def reconcile_day(self, day: date) -> int:
        """Replace the day's index with PostgreSQL's state; returns the number of slots written.
        Bookings in flight are neither lost nor counted twice: the rebuild window opened before
        the snapshot is read carries the confirms and cancels made meanwhile (reconcile.lua)."""
        log_from = await self.store.open_rebuild(day)
        try:
            index = await booking_repo.day_index(self.pool, self.hospital_id, day)
            await self.store.replace_day(index, log_from)
        except BaseException:
            with contextlib.suppress(AppError):
                await self.store.close_rebuild(day)
            raise
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

    # -- drift -------------------------------------------------------------------------------
    #
    # Every path that changes a slot in both stores keeps them equal, and the rebuild of a day
    # keeps the changes in flight. What none of them can see: a write the Redis server itself lost
    # (a split brain, where an old primary took writes before it was demoted and discarded them; an
    # operator's hand edit; a bug). The drift check is the safety net: every `drift_check_s` it
    # compares each horizon slot's counters in Redis with PostgreSQL's, allowing for the places the
    # live holds take; a slot out of line is looked at again at the next sweep, and only if nothing
    # on it moved in between (the same PostgreSQL row, the same Redis counters, the same holds: no
    # booking, cancel or hold can be half-way) is its day rebuilt.

    async def observe_drift(self, days: Sequence[date]) -> dict[tuple[date, int], Observed]:
        """The slots of `days` whose Redis counters PostgreSQL and the live holds do not explain:
        (day, slot id) -> (booked, capacity, status in PostgreSQL; b, cap, st in Redis, or None;
        places held). In line: the same capacity and status, and booked <= b <= booked + held."""
        if not days:
            return {}
        wanted = set(days)
        rows = await booking_repo.slot_counts(self.pool, self.hospital_id, min(days), max(days))
        by_day: dict[date, list[asyncpg.Record]] = {}
        for r in rows:
            if r["day"] in wanted:
                by_day.setdefault(r["day"], []).append(r)
        out: dict[tuple[date, int], Observed] = {}
        for day, slots in by_day.items():
            held = await self.store.held_places(day)
            counters = await self.store.counters(day, [r["id"] for r in slots])
            for r, got in zip(slots, counters, strict=True):
                h = held.get(r["id"], 0)
                pg = (r["booked"], r["capacity"], r["status"])
                if got is None or got[1:] != pg[1:] or not pg[0] <= got[0] <= pg[0] + h:
                    out[(day, r["id"])] = (*pg, got, h)
        return out

    async def repair_drift(self, now: float | None = None) -> list[date]:
        """One step of the drift check, for each background sweep: the suspects of the last look
        again, rebuilding the days of those that stood still out of line; or, when due, a look at
        the whole horizon for new suspects. Returns the days rebuilt."""
        if self.drift_check_s <= 0:
            return []
        now = time.monotonic() if now is None else now
        if self._suspects:
            suspects, self._suspects = self._suspects, {}
            again = await self.observe_drift(sorted({day for day, _ in suspects}))
            still = {key: seen for key, seen in again.items() if suspects.get(key) == seen}
            days = sorted({day for day, _ in still})
            for day in days:
                slots = sorted(sid for d, sid in still if d == day)
                logger.warning(
                    "redis counters drifted from postgres on %d slot(s) of %s (first: slot %d, %s): rebuilding the day",
                    len(slots),
                    day,
                    slots[0],
                    still[(day, slots[0])],
                )
                await self.reconcile_day_safely(day)
                self.drift_repairs += 1
            return days
        if now - self._drift_checked >= self.drift_check_s:
            self._drift_checked = now
            self._suspects = await self.observe_drift(self.horizon())
        return []

    async def reconcile_dirty(self) -> list[date]:
        done = []
        for day in sorted(self.dirty):
            await self.reconcile_day_safely(day)
            if day not in self.dirty:
                done.append(day)
        return done
