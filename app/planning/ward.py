"""The ward nurse station (护士站): the ward's inpatients with pending orders, and booking many of
them in one batch — each patient's best plan on the ward channel (whose reserved inpatient quota
the grab takes before the open pool), one patient after another, so that one patient's failure
(no place, a rule) is reported and does not undo the others."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from app.booking.service import BookItem
from app.db import patient_repo
from app.errors import AppError, Forbidden, ValidationFailed
from app.planning.plan_service import PlanService
from app.security.actor import Actor
from app.security.idcard import mask_name

CHANNEL = "ward"


class WardOrder(msgspec.Struct):
    order_id: int
    exam_code: str
    exam_name: str
    priority: str


class WardPatient(msgspec.Struct):
    patient_id: int
    name: str  # masked: the station's screen faces the corridor
    bed_no: str | None
    orders: list[WardOrder]


class BatchResult(msgspec.Struct):
    patient_id: int
    booked: bool
    appointment_ids: list[int]
    unplaced: list[str]  # exam names the plan could not place
    reason: str | None  # Chinese, when nothing or not everything was booked
    code: str | None


def _ward_of(actor: Actor) -> str:
    if not actor.department_id:
        raise Forbidden("账号未绑定病区", detail="the account has no ward")
    return actor.department_id


class WardStation:
    def __init__(self, pool: asyncpg.Pool, plans: PlanService) -> None:
        self.pool = pool
        self.plans = plans

    async def patients(self, actor: Actor) -> list[WardPatient]:
        ward = _ward_of(actor)
        rows = await patient_repo.ward_inpatients(self.pool, ward)
        out: dict[int, WardPatient] = {}
        for r in rows:
            p = out.get(r["patient_id"])
            if p is None:
                p = out[r["patient_id"]] = WardPatient(r["patient_id"], mask_name(r["name"]), r["bed_no"], [])
            p.orders.append(WardOrder(r["order_id"], r["exam_code"], r["exam_name"], r["priority"]))
        for patient_id in out:
            await patient_repo.audit(self.pool, actor, "list", "ward.inpatients", ward, patient_id)
        return list(out.values())

    async def batch(self, actor: Actor, patient_ids: list[int]) -> list[BatchResult]:
        ward = _ward_of(actor)
        mine = {p.patient_id: p for p in await self.patients(actor)}
        strangers = [pid for pid in patient_ids if pid not in mine]
        if strangers:
            raise ValidationFailed(
                "所选患者不是本病区待预约的住院患者", detail=f"not pending inpatients of {ward}: {strangers}"
            )
        results: list[BatchResult] = []
        for pid in dict.fromkeys(patient_ids):
            orders = [o.order_id for o in mine[pid].orders]
            try:
                proposal = await self.plans.propose(actor, pid, CHANNEL, order_ids=orders, max_plans=1)
                plan = proposal.result.plans[0] if proposal.result.plans else None
                if plan is None or not plan.items:
                    reasons = [r for u in (plan.unplaced if plan else []) for r in u.reasons]
                    results.append(
                        BatchResult(
                            pid,
                            False,
                            [],
                            [u.exam_name for u in plan.unplaced] if plan else [],
                            "；".join(dict.fromkeys(reasons)) or "无可用号源",
                            "no_plan",
                        )
                    )
                    continue
                items = [BookItem(int(i.key), i.slot_id) for i in plan.items]
                booked = await self.plans.book_plan(actor, pid, CHANNEL, items)
                unplaced = [u.exam_name for u in plan.unplaced]
                why = "；".join(f"{u.exam_name}（{'；'.join(u.reasons)}）" for u in plan.unplaced)
                reason = f"未能安排：{why}" if unplaced else None
                results.append(BatchResult(pid, True, [a.appointment_id for a in booked], unplaced, reason, None))
            except AppError as exc:
                results.append(BatchResult(pid, False, [], [], exc.message, exc.code))
        return results


def result_payload(results: list[BatchResult]) -> dict[str, Any]:
    return {
        "results": results,
        "booked_patients": sum(1 for r in results if r.booked),
        "appointment_ids": [a for r in results for a in r.appointment_ids],
    }
