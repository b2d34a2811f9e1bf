"""The planner at work: a patient's pending orders, live availability from Redis and the rules in,
ranked plans out; booking a plan through the core's bundle grab, re-planning when a slot is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from app.booking.availability import places_for, refusal
from app.booking.reconcile import Reconciler
from app.booking.service import BookedAppointment, BookingService, BookItem, check_channel, check_patient_access
from app.booking.slot_store import SlotStore
from app.db import booking_repo, patient_repo
from app.errors import NotFound, SlotUnavailable, ValidationFailed
from app.orders.lifecycle import BOOKABLE
from app.planning.planner import Candidate, Plan, PlanExam, PlanRequest, PlanResult, Preferences, make_plans
from app.planning.rule_service import Override, ProposedExam, RuleService, violation_payload
from app.security.actor import Actor

MAX_EXAMS = 8
# The search stops after this many nodes and returns the best plans found (the answer says the
# search was not complete); bounds a request's CPU time to about a second or two on this machine.
NODE_LIMIT = 20_000


class PlanSlotTaken(SlotUnavailable):
    """A slot of the chosen plan was taken meanwhile; the answer carries fresh alternatives."""

    code = "plan_slot_taken"
    title = "所选方案中的号源已被他人预约，已为您重新生成方案"


class Proposal(msgspec.Struct):
    patient_id: int
    channel: str
    earliest: date
    orders: list[int]
    result: PlanResult


class PlanService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: SlotStore,
        rules: RuleService,
        booking: BookingService,
        reconciler: Reconciler,
    ) -> None:
        self.pool = pool
        self.store = store
        self.rules = rules
        self.booking = booking
        self.reconciler = reconciler

    async def propose(
        self,
        actor: Actor,
        patient_id: int,
        channel: str,
        *,
        order_ids: Sequence[int] | None = None,
        earliest: date | None = None,
        latest: date | None = None,
        preferences: Preferences | None = None,
        max_plans: int = 3,
    ) -> Proposal:
        """The best few complete plans for the patient's pending orders (all of them by default),
        on days from `earliest` (today at the soonest) to `latest` (the horizon's end at the latest)."""
        check_channel(actor, channel)
        check_patient_access(actor, patient_id)
        today = self.reconciler.today()
        first = max(earliest or today, today)
        last = today + timedelta(days=self.reconciler.horizon_days - 1)
        if latest is not None:
            last = min(last, latest)
        if first > last:
            raise ValidationFailed("最早日期超出了可预约范围", detail=f"earliest {first} after the horizon end {last}")
        pending = await patient_repo.orders_of(self.pool, patient_id)
        if not pending and await patient_repo.patient_by_id(self.pool, patient_id) is None:
            raise NotFound("患者不存在", detail=f"patient {patient_id} not found")
        open_orders = {int(r["id"]): r for r in pending if r["status"] in BOOKABLE}
        wanted = list(order_ids) if order_ids else sorted(open_orders)
        missing = [o for o in wanted if o not in open_orders]
        if missing:
            raise ValidationFailed(
                "所选检查申请不存在、不属于该患者或已预约", detail=f"orders not pending for this patient: {missing}"
            )
        if not wanted:
            raise ValidationFailed("该患者没有待预约的检查", detail="no pending orders")
        if len(wanted) > MAX_EXAMS:
            raise ValidationFailed(f"一次最多规划 {MAX_EXAMS} 项检查", detail=f"at most {MAX_EXAMS} orders")
        catalogue = self.rules.catalogue()
        exams = [PlanExam(str(o), catalogue.exam_types[open_orders[o]["exam_code"]]) for o in wanted]
        candidates = await self._candidates(exams, channel, first, last)
        checker = await self.rules.checker()
        reach = self.rules.reach(checker)
        tz = self.reconciler.tz
        start = datetime.combine(first, datetime.min.time(), tz) - reach
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tz) + reach
        ctx = await self.rules.context(patient_id, start.astimezone(UTC), end.astimezone(UTC))
        request = PlanRequest(
            exams=exams,
            candidates=candidates,
            existing=ctx.existing,
            facts=ctx.facts,
            preferences=preferences or Preferences(),
            earliest=first,
            max_plans=max_plans,
            resource_names={rid: r.name for rid, r in catalogue.resources.items()},
            node_limit=NODE_LIMIT,
        )
        # CPU-bound: in a worker thread, so the event loop keeps serving other requests meanwhile.
        result = await asyncio.to_thread(make_plans, request, checker)
        await patient_repo.audit(self.pool, actor, "plan", "patient.orders", str(patient_id), patient_id)
        return Proposal(patient_id, channel, first, wanted, result)

    async def _candidates(
        self, exams: Sequence[PlanExam], channel: str, first: date, last: date
    ) -> dict[str, list[Candidate]]:
        catalogue = self.rules.catalogue()
        resources = sorted({rid for e in exams for rid in catalogue.capable.get(e.exam.code, frozenset())})
        now = time.time()
        out: dict[str, list[Candidate]] = {e.key: [] for e in exams}
        day = first
        while day <= last:
            views = await self.store.read_slots(day, resources)
            for view in views:
                if places_for(view, channel, now)[0] <= 0:
                    continue
                cand = Candidate(
                    view.slot_id,
                    view.resource_id,
                    catalogue.resources[view.resource_id].campus_id,
                    view.starts_at,
                    view.ends_at,
                )
                for e in exams:
                    if view.resource_id in catalogue.capable.get(e.exam.code, frozenset()):
                        out[e.key].append(cand)
            day += timedelta(days=1)
        return out

    async def book_plan(
        self,
        actor: Actor,
        patient_id: int,
        channel: str,
        items: Sequence[BookItem],
        overrides: Sequence[Override] = (),
        *,
        preferences: Preferences | None = None,
        earliest: date | None = None,
    ) -> list[BookedAppointment]:
        """Book the chosen plan as one bundle; if one of its slots was taken meanwhile, re-plan the
        same orders and raise PlanSlotTaken carrying the next best plans."""
        try:
            return await self.booking.book(actor, patient_id, channel, items, "", overrides)
        except SlotUnavailable as exc:
            if isinstance(exc, PlanSlotTaken) or exc.extra.get("reason") not in ("FULL", "QUOTA", "LOCKED", "CLOSED"):
                raise
            fresh = await self.propose(
                actor,
                patient_id,
                channel,
                order_ids=[i.order_id for i in items],
                earliest=earliest,
                preferences=preferences,
            )
            raise PlanSlotTaken(
                detail=f"slot taken ({exc.extra.get('reason')}); {len(fresh.result.plans)} new plans",
                reason=exc.extra.get("reason"),
                slots=exc.extra.get("slots", []),
                alternatives=[plan_payload(p, self.rules, self.reconciler) for p in fresh.result.plans],
            ) from exc

    async def explain(self, actor: Actor, patient_id: int, order_id: int, slot_id: int, channel: str) -> dict[str, Any]:
        """Why this order can or cannot go into this slot: capacity, and every rule it would break."""
        check_channel(actor, channel)
        check_patient_access(actor, patient_id)
        [row] = await booking_repo.check_request(self.pool, [order_id], [slot_id])
        if row["patient_id"] is None or row["patient_id"] != patient_id:
            raise NotFound("检查申请不存在或不属于该患者", detail=f"order {order_id} not this patient's")
        if row["day"] is None:
            raise NotFound("所选号源不存在", detail=f"slot {slot_id} not found")
        view = (await self.store.read_slots_by_id(row["day"], [slot_id]))[0]
        capacity_reason = refusal(view, channel, time.time())
        out: dict[str, Any] = {
            "order_id": order_id,
            "slot_id": slot_id,
            "capable": bool(row["capable"]),
            "order_status": row["status"],
            "capacity": {
                "bookable": capacity_reason is None,
                "reason": capacity_reason,
                "available": places_for(view, channel, time.time())[0] if view else 0,
            },
            "violations": [],
        }
        if row["capable"]:
            proposed = ProposedExam(
                order_id, row["exam_code"], slot_id, int(row["s"]), int(row["e"]), row["resource_id"]
            )
            _, found = await self.rules.violations(patient_id, [proposed])
            out["violations"] = [violation_payload(v, actor) for v in found]
        out["bookable"] = (
            out["capable"]
            and row["status"] in BOOKABLE
            and capacity_reason is None
            and all(v["overridable"] for v in out["violations"])
            and not any(v["severity"] == "block" for v in out["violations"])
        )
        return out


def plan_payload(plan: Plan, rules: RuleService, reconciler: Reconciler) -> dict[str, Any]:
    """A plan as the API shows it: times in the hospital's zone, rooms by name and place."""
    catalogue = rules.catalogue()
    tz = reconciler.tz

    def at(epoch: int) -> str:
        return datetime.fromtimestamp(epoch, tz).isoformat()

    return {
        "visit_days": plan.visit_days,
        "minutes_in_hospital": plan.minutes_in_hospital,
        "completes_at": at(plan.completes_at) if plan.completes_at else None,
        "days": [d.isoformat() for d in plan.days],
        "items": [
            {
                "order_id": int(i.key),
                "exam_code": i.exam_code,
                "exam_name": i.exam_name,
                "slot_id": i.slot_id,
                "resource_id": i.resource_id,
                "resource_name": catalogue.resources[i.resource_id].name,
                "location": catalogue.resources[i.resource_id].location,
                "starts_at": at(i.starts_at),
                "ends_at": at(i.ends_at),
            }
            for i in plan.items
        ],
        "unplaced": [msgspec.to_builtins(u) for u in plan.unplaced],
        "explanation": plan.explanation,
        "preparation": plan.preparation,
    }
