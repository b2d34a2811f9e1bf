"""Bookings whose commit was cut off (PostgreSQL lost during the call) are settled as soon as the
answer is certain, instead of when their holds expire a minute later.

A booking whose connection is lost while its commit is under way may or may not have committed:
the caller gets a 503, and the places its hold took stay taken. The reaper settles such a hold once
it has expired (PostgreSQL refuses a booking's commit `commit_margin_s` before that, so by then
nothing can still land). Until then, after a PostgreSQL failover in the middle of the morning
release, the places of every booking cut off look taken for a minute.

The commit can still land only while the server process that was running it (the backend of the
lost connection, `app.db.pool.Backend`) is alive on the server the platform uses. So, every
`poll_s`, the watched bookings are checked against PostgreSQL: once the postmaster answering is
another one (the promoted standby, or the same server restarted: a backend never survives either)
or that backend has exited (its transaction ended, committed or rolled back, with it), the outcome
is what PostgreSQL now has. Each hold is then settled as the reaper would settle it
(`app.booking.reaper.settle_hold`): confirmed when its booking is there, released when not.

A promoted standby only has a commit that reached it before the promotion, and gets nothing from
the old primary afterwards: what is not there then never will be, on the server the platform
writes to. (An old primary still running and still taking writes after a failover is a split brain
that has to be fenced off whatever this does.) Holds still unsettled close to their expiry are left
to the reaper; so are calls whose backend is not known, and all of them with
`HY_IN_DOUBT_SETTLE=0` (behind a transaction-pooling PgBouncer a connection's backend is not the
one that ran its last transaction, so its being gone would prove nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import date

import asyncpg
import msgspec

from app.booking.reaper import settle_hold
from app.booking.reconcile import Reconciler
from app.booking.slot_store import SlotStore
from app.db.pool import Backend, acquired, unavailable_errors
from app.errors import AppError
from realtime.publisher import EventPublisher

logger = logging.getLogger(__name__)


class _Watched(msgspec.Struct):
    backend: Backend
    holds: list[tuple[date, str]]
    until_ms: int  # after this the reaper's: the hold expires soon
    then: Callable[[], Awaitable[None]] | None = None  # once a hold was confirmed (a reschedule's old place)
    confirmed: bool = False


class InDoubt:
    """The process's bookings cut off mid-commit, settled once the backend that ran them is gone."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: SlotStore,
        reconciler: Reconciler,
        publisher: EventPublisher | None,
        *,
        poll_s: float = 0.5,
        margin_ms: int = 5_000,
        enabled: bool = True,
    ) -> None:
        self.pool, self.store, self.reconciler, self.publisher = pool, store, reconciler, publisher
        self.enabled = enabled  # HY_IN_DOUBT_SETTLE=0: every such hold is the reaper's
        self.poll_s = poll_s
        self.margin_ms = margin_ms
        self._watched: list[_Watched] = []
        self._task: asyncio.Task[None] | None = None
        self.confirmed = self.released = 0  # settled here, for logs and tests

    @property
    def pending(self) -> int:
        return sum(len(w.holds) for w in self._watched)

    def watch(
        self,
        backend: Backend | None,
        holds: Sequence[tuple[date, str]],
        expires_ms: int,
        *,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """A booking's holds, whose commit was lost on `backend` (None: unknown, the reaper's).
        `then` runs once if they turn out committed (a reschedule gives its old place back)."""
        if not self.enabled or backend is None or not holds:
            return
        self._watched.append(_Watched(backend, list(holds), expires_ms - self.margin_ms, then))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="in-doubt bookings")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self.poll_s)
            try:
                await self.settle_ready()
            except (AppError, asyncpg.PostgresError) as exc:
                # PostgreSQL or Redis not back yet (a 503's error), or a connection the failover
                # left in the pool: ask again at the next poll.
                logger.debug("in-doubt bookings not settled yet: %s", type(exc).__name__)
            except Exception:  # a bug: say so, and leave the holds to the reaper rather than spin
                logger.exception("in-doubt bookings: settling failed; %d holds left to the reaper", self.pending)
                self._watched.clear()

    async def settle_ready(self) -> int:
        """One pass: settle the holds whose backend is gone, drop those near expiry (the reaper's).
        Returns how many holds were settled."""
        now_ms = int(time.time() * 1000)
        expired = [w for w in self._watched if w.until_ms <= now_ms]
        if expired:
            self._watched = [w for w in self._watched if w.until_ms > now_ms]
            logger.info("in-doubt: %d holds left to the reaper (close to expiry)", sum(len(w.holds) for w in expired))
        if not self._watched:
            return 0
        gone = await self._gone([w.backend for w in self._watched])
        settled = 0
        for w in [w for w in self._watched if w.backend in gone]:
            while w.holds:
                day, hold_id = w.holds[0]
                outcome = await settle_hold(
                    self.pool, self.store, self.reconciler, day, hold_id, self.publisher, by="in-doubt"
                )
                if outcome == "confirmed":
                    self.confirmed += 1
                    w.confirmed = True
                elif outcome == "released":
                    self.released += 1
                w.holds.pop(0)
                settled += 1
            if w.confirmed and w.then is not None:
                await w.then()
                w.then = None
            self._watched.remove(w)
        return settled

    async def _gone(self, backends: list[Backend]) -> set[Backend]:
        """Which of these backends can no longer commit anything on the server the pool reaches."""
        async with acquired(self.pool) as conn, unavailable_errors():
            row = await conn.fetchrow(
                """SELECT pg_postmaster_start_time() AS postmaster_start,
                          ARRAY(SELECT a.pid FROM pg_stat_activity AS a
                                  JOIN unnest($1::int[], $2::timestamptz[]) AS w(pid, since)
                                    ON a.pid = w.pid AND a.backend_start = w.since) AS alive""",
                [b.pid for b in backends],
                [b.backend_start for b in backends],
            )
        assert row is not None
        alive = set(row["alive"])
        return {b for b in backends if b.postmaster_start != row["postmaster_start"] or b.pid not in alive}
