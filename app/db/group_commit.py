"""Group commit: bookings that reach PostgreSQL while earlier ones are still there are committed
together, by one call of `hy_book_set` (sql/0018_group_commit.sql): one round trip and one commit
for the lot, and one execution of each statement, where each booking used to pay for its own. When
they are sent is app/coalesce.py's business: at once under light load (then alone: exactly the old
`hy_book` call), otherwise with whatever queued while the previous batch was out.

Each booking stays its own all-or-nothing unit with its own answer. `hy_book_set` decides every
booking of the batch up front (hy_book's checks, in its order) and writes the accepted ones with
one statement per kind of row. It takes each patient and each order once: a second booking of
either waits and goes alone after the batch. Should the call fail as a whole without losing the
server (a deadlock, its own capacity guard), nothing was written, and the batch goes again through
`hy_book_batch`, which runs `hy_book` per booking in a subtransaction. A refused booking comes back
as the same AppError a lone call raises (`pool.refusal`); an error that is no refusal is not
guessed at: that booking is sent again alone, and whatever happens then is its answer. An error of
the whole call that loses the server (PostgreSQL gone, a timeout) is every booking's answer:
whether it committed is unknown, which is what DatabaseUnavailable already tells the caller (the
holds are left to the reaper). No connection to be had at all is DatabaseUnreachable: nothing was
sent, and the callers give their holds back at once.

The rule-context reads before the commits (`hy_booking_context_batch`) are coalesced the same way
(ContextReads): one query for the reads of concurrent bookings.

Lock order: `hy_book_set` locks patients, then orders, then slots, each in id order, as `hy_book`
takes a booking's patient, order and (in id order) slots; bundles go alone. Batches and lone
bookings therefore take rows in one order, and a deadlock needs the same patient or order in two
transactions at once (it is then resolved by the fallback above).
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
        return await booking_repo.book(self.pool, **msgspec.structs.asdict(b))

    async def _run(self, batch: list[Booking]) -> list[list[asyncpg.Record] | BaseException]:
        if len(batch) == 1:  # its error, if any, is raised to its caller by the coalescer
            return [await self._alone(batch[0])]
        # hy_book_set takes each patient and each order once: a second booking of either goes after.
        together: list[int] = []
        later: list[int] = []
        patients: set[int] = set()
        orders: set[Any] = set()
        for i, b in enumerate(batch):
            order_id = b.items[0]["order_id"]
            if b.patient_id in patients or order_id in orders:
                later.append(i)
            else:
                together.append(i)
                patients.add(b.patient_id)
                orders.add(order_id)
        together.sort(key=lambda i: int(batch[i].items[0]["slot_id"]))
        payload = [batch[i].as_json(i) for i in together]
        try:
            rows = await booking_repo.book_set(self.pool, payload)
        except asyncpg.PostgresError as exc:  # undecided, nothing written: one subtransaction each
            logger.info(
                "set-based group commit of %d failed (%s); booking them one by one", len(payload), type(exc).__name__
            )
            rows = await booking_repo.book_batch(self.pool, payload)
        answers: list[list[asyncpg.Record] | BaseException | None] = [None] * len(batch)
        got: dict[int, list[asyncpg.Record]] = {i: [] for i in together}
        for r in rows:
            got[r["k"]].append(r)
        for i, mine in got.items():
            failed = next((r for r in mine if r["err_state"] is not None), None)
            if failed is None:
                answers[i] = mine
                continue
            error = refusal(failed["err_state"], failed["err_message"], failed["err_detail"], failed["err_constraint"])
            if error is None:
                logger.info("a booking of a batch failed with SQLSTATE %s; sent again alone", failed["err_state"])
                later.append(i)
            else:
                answers[i] = error
        for i in sorted(later):
            try:
                answers[i] = await self._alone(batch[i])
            except Exception as exc:  # noqa: BLE001 - this booking's answer, not the batch's
                answers[i] = exc
        return [a if a is not None else RuntimeError("booking left unanswered") for a in answers]


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
        return await booking_repo.booking_contexts(self.pool, batch)


_ContextRequest = tuple[int, Sequence[int], Sequence[int], timedelta]
