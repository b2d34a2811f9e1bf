"""Group commit: bookings that reach PostgreSQL while earlier ones are still there are committed
together, by one call of `hy_book_batch` (sql/0018_group_commit.sql): one round trip and one commit
for the lot, where each booking used to pay for its own. When they are sent is app/coalesce.py's
business: at once under light load (then alone: exactly the old `hy_book` call), otherwise with
whatever queued while the previous batch was out.

Each booking stays its own all-or-nothing unit: PostgreSQL runs it in a subtransaction, and a
refused one comes back as the same AppError a lone call raises (`pool.refusal`). An error that is
not a booking refusal (a deadlock between batches, say) is not guessed at: that booking is sent
again alone, and whatever happens then is its answer. An error of the whole call (PostgreSQL gone,
a timeout) is every booking's answer: whether it committed is unknown, which is what
DatabaseUnavailable already tells the caller (the holds are left to the reaper).

The rule-context reads before the commits (`hy_booking_context`) are coalesced the same way
(ContextReads): one round trip for the reads of concurrent bookings.

Lock order: a batch's bookings go in slot id order and `hy_book` takes a bundle's slots in id
order; bundles (several items) go alone. So concurrent batches take slot rows in one order and do
not deadlock on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from app.coalesce import Coalescer
from app.db import booking_repo
from app.db.pool import refusal
from app.security.actor import Actor

logger = logging.getLogger(__name__)

MAX_BATCH = 32  # past 64 subtransactions a backend's subtransaction cache overflows


class Booking(msgspec.Struct, frozen=True):
    """booking_repo.book's arguments."""

    hold_id: str
    patient_id: int
    channel: str
    items: Sequence[dict[str, Any]]
    deadline: datetime
    actor: Actor
    reason: str
    version: int | None
    overrides: Sequence[dict[str, Any]]

    def as_json(self, k: int) -> dict[str, Any]:
        return {
            "k": k,
            "hold_id": self.hold_id,
            "patient_id": self.patient_id,
            "channel": self.channel,
            "items": list(self.items),
            "deadline": self.deadline,
            "actor_id": self.actor.user_id,
            "actor_role": self.actor.role,
            "terminal": self.actor.terminal,
            "reason": self.reason,
            "version": self.version,
            "overrides": list(self.overrides),
        }


class GroupCommit:
    """Commits the process's bookings, together when they arrive together."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, in_flight: int = 2) -> None:
        self.pool = pool
        self.coalescer: Coalescer[Booking, list[asyncpg.Record]] = Coalescer(
            self._run, max_batch=min(max_batch, MAX_BATCH), in_flight=in_flight, alone=lambda b: len(b.items) > 1
        )

    async def book(
        self,
        *,
        hold_id: str,
        patient_id: int,
        channel: str,
        items: Sequence[dict[str, Any]],
        deadline: datetime,
        actor: Actor,
        reason: str,
        version: int | None = None,
        overrides: Sequence[dict[str, Any]] = (),
    ) -> list[asyncpg.Record]:
        """booking_repo.book's contract: the booking's appointments, or the error that refused it."""
        booking = Booking(hold_id, patient_id, channel, items, deadline, actor, reason, version, overrides)
        if self.coalescer.max_batch <= 1:  # group commit off (HY_GROUP_COMMIT_MAX=1)
            return await self._alone(booking)
        return await self.coalescer.submit(booking)

    async def _alone(self, b: Booking) -> list[asyncpg.Record]:
        return await booking_repo.book(
            self.pool,
            hold_id=b.hold_id,
            patient_id=b.patient_id,
            channel=b.channel,
            items=b.items,
            deadline=b.deadline,
            actor=b.actor,
            reason=b.reason,
            version=b.version,
            overrides=b.overrides,
        )

    async def _run(self, batch: list[Booking]) -> list[list[asyncpg.Record] | BaseException]:
        if len(batch) == 1:  # its error, if any, is raised to its caller by the coalescer
            return [await self._alone(batch[0])]
        order = sorted(range(len(batch)), key=lambda i: int(batch[i].items[0]["slot_id"]))
        rows = await booking_repo.book_batch(self.pool, [batch[i].as_json(i) for i in order])
        got: list[list[asyncpg.Record]] = [[] for _ in batch]
        for r in rows:
            got[r["k"]].append(r)
        answers: list[list[asyncpg.Record] | BaseException] = []
        for k, b in enumerate(batch):
            failed = next((r for r in got[k] if r["err_state"] is not None), None)
            if failed is None:
                answers.append(got[k])
                continue
            error = refusal(failed["err_state"], failed["err_message"], failed["err_detail"], failed["err_constraint"])
            if error is None:
                logger.info(
                    "a booking of a batch of %d failed with SQLSTATE %s; sent again alone",
                    len(batch),
                    failed["err_state"],
                )
                try:
                    answers.append(await self._alone(b))
                except Exception as exc:  # noqa: BLE001 - this booking's answer, not the batch's
                    answers.append(exc)
            else:
                answers.append(error)
        return answers


class ContextReads:
    """booking_repo.booking_context, coalesced: concurrent bookings' reads in one round trip."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, in_flight: int = 2) -> None:
        self.pool = pool
        self.coalescer: Coalescer[_ContextRequest, booking_repo.BookingContext] = Coalescer(
            self._run, max_batch=max_batch, in_flight=in_flight
        )

    async def read(
        self, patient_id: int, order_ids: Sequence[int], slot_ids: Sequence[int], reach: timedelta
    ) -> booking_repo.BookingContext:
        if self.coalescer.max_batch <= 1:
            return await booking_repo.booking_context(self.pool, patient_id, order_ids, slot_ids, reach)
        return await self.coalescer.submit((patient_id, order_ids, slot_ids, reach))

    async def _run(self, batch: list[_ContextRequest]) -> list[booking_repo.BookingContext]:
        if len(batch) == 1:
            return [await booking_repo.booking_context(self.pool, *batch[0])]
        return await booking_repo.booking_contexts(self.pool, batch)


_ContextRequest = tuple[int, Sequence[int], Sequence[int], timedelta]
