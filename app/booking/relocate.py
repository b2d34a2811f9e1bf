"""Moving the bookings out of a window that was just locked (maintenance, training, an expert's
absence): each appointment goes to the nearest slot — same day first, then the days after — that
its channel can take and that the medical rules allow, through the ordinary reschedule path (the
new place is taken before the old one is freed). The patient is told through the outbox. What
cannot be moved is reported for a clerk to call the patient."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import asyncpg
import msgspec

from app.booking.availability import find_available
from app.booking.reconcile import Reconciler
from app.booking.service import BookingService
from app.booking.slot_store import SlotStore
from app.db import booking_repo
from app.errors import AppError
from app.planning.catalogue import Catalogue
from app.security.actor import SYSTEM, Actor

logger = logging.getLogger(__name__)

MAX_TRIES = 20  # candidate slots tried per appointment before giving up on it
NO_PLACE = "可预约范围内无可用号源，请人工联系患者"


class Move(msgspec.Struct):
    appointment_id: int
    patient_id: int
    moved: bool
    new_appointment_id: int | None = None
    new_slot_id: int | None = None
    new_starts_at: datetime | None = None
    reason: str | None = None  # Chinese, when it could not be moved


class Relocator:
    def __init__(self, pool: asyncpg.Pool, store: SlotStore, booking: BookingService, reconciler: Reconciler) -> None:
        self.pool = pool
        self.store = store
        self.booking = booking
        self.reconciler = reconciler

    async def move_out(
        self,
        actor: Actor,
        catalogue: Catalogue,
        resource_id: str,
        starts_at: datetime,
        ends_at: datetime,
        channels: list[str] | None,
        why: str,
    ) -> list[Move]:
        rows = await booking_repo.live_in_window(self.pool, resource_id, starts_at, ends_at, channels)
        moves: list[Move] = []
        tz = self.reconciler.tz
        last = self.reconciler.today() + timedelta(days=self.reconciler.horizon_days - 1)
        for appt in rows:
            day = appt["day"]
            days = [day + timedelta(days=n) for n in range((last - day).days + 1)]
            slots = await find_available(
                self.store,
                catalogue,
                tz,
                days,
                exam=appt["exam_code"],
                department=None,
                resource=None,
                channel=appt["channel"],
                now_s=time.time(),
                only_open=True,
            )
            origin = appt["starts_at"]
            slots = [s for s in slots if s.slot_id != appt["slot_id"] and s.available > 0 and not s.locked]
            slots.sort(key=lambda s: ((s.day - day).days, abs((s.starts_at - origin).total_seconds()), s.slot_id))
            move = Move(int(appt["id"]), int(appt["patient_id"]), False, reason=NO_PLACE)
            for slot in slots[:MAX_TRIES]:
                try:
                    done = await self.booking.reschedule(
                        SYSTEM,
                        int(appt["id"]),
                        slot.slot_id,
                        appt["channel"],
                        f"{why}（号源锁定，系统改约；操作人 {actor.username}）",
                    )
                except AppError as exc:  # a rule, or the place was taken meanwhile: the next one
                    move.reason = f"改约未成功（{exc.message}），请人工联系患者"
                    continue
                move = Move(
                    int(appt["id"]), int(appt["patient_id"]), True, done.appointment_id, slot.slot_id, slot.starts_at
                )
                await booking_repo.insert_notice(
                    self.pool,
                    int(appt["patient_id"]),
                    {
                        "kind": "appointment_moved",
                        "appointment_id": done.appointment_id,
                        "message": (
                            f"您原定于{origin.astimezone(tz):%m月%d日 %H:%M}的检查因{why}已改至"
                            f"{slot.starts_at.astimezone(tz):%m月%d日 %H:%M}（{slot.resource_name}，{slot.location}），"
                            "如需调整请联系预约中心。"
                        ),
                    },
                )
                break
            moves.append(move)
            logger.info("lock moved appointment %s: %s", appt["id"], "moved" if move.moved else "not moved")
        return moves
