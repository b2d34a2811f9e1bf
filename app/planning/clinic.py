"""The clinic workstation (诊间预约): the HIS doctor workstation sends the orders it just wrote and
gets, in one answer, whether all of them can be done today — with today's plan, bookable in one
step — or a structured "send the patient to the booking centre" flag with the reason and the
earliest options over the horizon.

Reason codes (`reason_code`), so the workstation can act on them without reading Chinese:
* ``today_full`` — today has no place left for some exam (capacity, quotas, opening hours);
* ``rules_forbid_today`` — the medical rules keep some exam off today (a gap after a barium meal,
  fasting before noon, an assessment missing...): the rule ids are listed;
* ``nothing_in_horizon`` — some exam has no place at all in the booking horizon.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import msgspec

from app.planning.plan_service import PlanService, plan_payload
from app.planning.planner import Plan
from app.planning.rule_service import RuleService
from app.security.actor import Actor

CHANNEL = "clinic"


class ClinicAnswer(msgspec.Struct):
    patient_id: int
    order_ids: list[int]
    today: str
    same_day: bool  # every order has a place today, rules included
    go_to_booking_centre: bool
    reason_code: str | None
    reason: str | None  # Chinese, for the doctor
    rule_ids: list[str]
    today_plan: dict[str, Any] | None  # what fits today (all, or part when go_to_booking_centre)
    earliest_options: list[dict[str, Any]]  # the best plans over the horizon when not all fit today


def _rules_of(plan: Plan) -> list[str]:
    return sorted({r for u in plan.unplaced for r in u.rule_ids})


class ClinicDesk:
    def __init__(self, plans: PlanService, rules: RuleService) -> None:
        self.plans = plans
        self.rules = rules

    async def orders_written(
        self, actor: Actor, patient_id: int, order_ids: list[int] | None, *, visit_day: date | None = None
    ) -> ClinicAnswer:
        """`visit_day` is today; tests name another day to stand for it (the clock is real)."""
        today = visit_day or self.plans.reconciler.today()
        proposal = await self.plans.propose(
            actor, patient_id, CHANNEL, order_ids=order_ids, earliest=today, latest=today, max_plans=1
        )
        best = proposal.result.plans[0] if proposal.result.plans else None

        def payload(plan: Plan) -> dict[str, Any]:
            return plan_payload(plan, self.rules, self.plans.reconciler)

        if best is not None and not best.unplaced:
            return ClinicAnswer(
                patient_id, proposal.orders, today.isoformat(), True, False, None, None, [], payload(best), []
            )
        # From the visit day on: in production that is today anyway; a test's visit day in the future
        # must not be offered places before it (the test failed when run just after midnight, hospital time).
        later = await self.plans.propose(
            actor, patient_id, CHANNEL, order_ids=proposal.orders, earliest=today, max_plans=3
        )
        options = [p for p in later.result.plans if p.items]
        rule_ids = _rules_of(best) if best is not None else []
        names = "、".join(u.exam_name for u in best.unplaced) if best is not None else ""
        if options and not options[0].unplaced and rule_ids:
            code = "rules_forbid_today"
            reason = f"按检查规则，{names}今日不能完成（{'；'.join(_reasons(best))}），请患者到预约中心预约"
        elif options and not options[0].unplaced:
            code = "today_full"
            reason = f"今日{names}已无可用号源，请患者到预约中心预约"
        else:
            code = "nothing_in_horizon"
            missing = "、".join(u.exam_name for u in options[0].unplaced) if options else names
            reason = f"{missing}在可预约范围内暂无可用号源，请患者到预约中心登记候补"
        partial = payload(best) if best is not None and best.items else None
        return ClinicAnswer(
            patient_id,
            proposal.orders,
            today.isoformat(),
            False,
            True,
            code,
            reason,
            rule_ids,
            partial,
            [payload(p) for p in options],
        )


def _reasons(plan: Plan | None) -> list[str]:
    if plan is None:
        return []
    seen: list[str] = []
    for u in plan.unplaced:
        for r in u.reasons:
            if r not in seen:
                seen.append(r)
    return seen[:3]
