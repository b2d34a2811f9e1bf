"""The closed loop's other steps: payment and report states by API (and later by HL7), the
timeline of an order, and the no-show sweep with the credit rule. (The patient hears of a published
report from the notification sweep, app/notify/sweeps.py.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from app.booking.service import BookingService, check_patient_access
from app.db import booking_repo, order_repo
from app.errors import AppError, Forbidden, NotFound, OrderStateConflict, ValidationFailed
from app.orders import lifecycle
from app.orders.credit import CreditService
from app.security.actor import Actor

logger = logging.getLogger(__name__)


class NoShowReport(msgspec.Struct):
    marked: int = 0
    suspended: int = 0


class OrderService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        booking: BookingService,
        credit: CreditService,
        *,
        hospital_id: str,
        tz: ZoneInfo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.booking = booking
        self.credit = credit
        self.hospital_id = hospital_id
        self.tz = tz
        self.clock = clock

    async def _order(self, actor: Actor, order_id: int) -> asyncpg.Record:
        row = await order_repo.order_row(self.pool, order_id)
        if row is None:
            raise NotFound("检查申请不存在", detail=f"order {order_id} not found")
        check_patient_access(actor, int(row["patient_id"]))
        return row

    async def apply(self, actor: Actor, order_id: int, event: str, reason: str, channel: str) -> dict[str, Any]:
        """One step of the loop that has no path of its own: payment, the report's states, the
        order withdrawn. Each has its roles (lifecycle.TRANSITIONS)."""
        step = lifecycle.TRANSITIONS.get(event)
        if step is None or not step.roles:
            raise ValidationFailed(
                f"不支持的状态变更：{event}", detail=f"event must be one of {list(lifecycle.API_EVENTS)}"
            )
        if not actor.roles & step.roles:
            raise Forbidden(f"当前账号不能{step.name}", detail=f"{event} needs one of {sorted(step.roles)}")
        await self._order(actor, order_id)
        try:
            before = await order_repo.transition(
                self.pool,
                order_id=order_id,
                event=event,
                moves=step.moves,
                actor=actor,
                channel=channel,
                reason=reason,
            )
        except OrderStateConflict as exc:
            state = str(exc.extra.get("state", ""))
            raise OrderStateConflict(lifecycle.refusal_message(event, state), detail=exc.detail, state=state) from exc
        after = lifecycle.target(event, before)
        return {
            "order_id": order_id,
            "event": event,
            "from": before,
            "to": after,
            "state_name": lifecycle.STATE_NAMES[after],
        }

    async def timeline(self, actor: Actor, order_id: int) -> dict[str, Any]:
        """The whole loop of one order: every transition with who, when, terminal, channel and why;
        its appointments, queue entries and actions, rule overrides."""
        order = await self._order(actor, order_id)
        parts = await order_repo.timeline(self.pool, order_id)
        status = order["status"]
        return {
            "order": {
                "id": order["id"],
                "order_no": order["order_no"],
                "exam_code": order["exam_code"],
                "exam_name": order["exam_name"],
                "status": status,
                "state_name": lifecycle.STATE_NAMES.get(status, status),
                "patient_class": order["patient_class"],
                "priority": order["priority"],
                "paid": order["paid_at"] is not None,
                "ordered_at": order["ordered_at"],
                "next_events": lifecycle.allowed_events(status),
            },
            "events": [
                {
                    **dict(r),
                    "name": lifecycle.TRANSITIONS[r["event"]].name
                    if r["event"] in lifecycle.TRANSITIONS
                    else r["event"],
                }
                for r in parts["events"]
            ],
            "appointments": [dict(r) for r in parts["appointments"]],
            "queue": [dict(r) for r in parts["queue"]],
            "queue_events": [dict(r) for r in parts["queue_events"]],
            "overrides": [dict(r) for r in parts["overrides"]],
        }

    # -- no-shows --------------------------------------------------------------------------------

    async def sweep_no_shows(self, now: datetime | None = None) -> NoShowReport:
        """Mark as no-show every live appointment not checked in by its slot's end plus the exam
        type's grace; give its place back; apply the credit rule. Safe to run anywhere, any
        number of times: each appointment is decided under its order's row lock."""
        now = now or datetime.fromtimestamp(self.clock(), UTC)
        report = NoShowReport()
        due = await order_repo.no_show_due(self.pool, self.hospital_id, now)
        if not due:
            return report
        rule = await self.credit.rule()
        for appointment_id in due:
            row, suspension = await order_repo.mark_no_show(
                self.pool,
                appointment_id=appointment_id,
                now=now,
                no_shows=rule.no_shows,
                window_days=rule.window_days,
                suspend_days=rule.suspend_days,
                channels=rule.channels,
            )
            if row is None:
                continue
            report.marked += 1
            try:
                await self.booking.release_place(
                    row["day"], int(row["slot_id"]), int(row["patient_id"]), row["pool"], "no_show"
                )
            except AppError as exc:  # the day is rebuilt from PostgreSQL later
                logger.warning("no-show %s: place not returned in Redis yet (%s)", appointment_id, exc.code)
            if suspension is not None:
                report.suspended += 1
                await booking_repo.insert_notice(
                    self.pool,
                    int(row["patient_id"]),
                    {
                        "kind": "suspended",
                        "dedupe": f"suspended:{suspension['id']}",
                        "message": self.credit.message(suspension["ends_at"]),
                    },
                )
        if report.marked:
            logger.info("no-show sweep: %d marked, %d patients suspended", report.marked, report.suspended)
        return report

    async def lift_suspension(self, actor: Actor, patient_id: int, reason: str) -> int:
        if not reason.strip():
            raise ValidationFailed("解除暂停须填写原因", detail="reason required")
        return await order_repo.lift_suspension(
            self.pool, patient_id, datetime.fromtimestamp(self.clock(), UTC), actor, reason
        )
