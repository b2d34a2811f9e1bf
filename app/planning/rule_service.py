"""Rule checks on every booking path: the rule table, the patient's facts and whole schedule.

The compiled rules are kept in memory for a few seconds (every worker re-reads the table after an
admin change within `cache_s`); facts and appointments are read fresh for every check, in one
round trip together with the patient's booking version, which the commit then verifies.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from app.db import rules_repo
from app.errors import RuleViolation, ValidationFailed
from app.planning.catalogue import Catalogue
from app.planning.rules import Checker, MinGap, Placed, Violation, compile_rules
from app.security.actor import Actor

# How far around the proposed exams past and future appointments are read, beyond the longest
# min-gap rule.
CONTEXT_MARGIN = timedelta(days=2)


class Override(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rule_id: str
    reason: str


class ProposedExam(msgspec.Struct, frozen=True):
    order_id: int
    exam_code: str
    slot_id: int
    starts_at: int  # epoch s
    ends_at: int
    resource_id: str

    @property
    def key(self) -> str:
        return str(self.order_id)


class RuleContext(msgspec.Struct, frozen=True):
    version: int
    facts: dict[str, Any]
    existing: list[Placed]


class CheckOutcome(msgspec.Struct, frozen=True):
    version: int
    overrides: list[dict[str, Any]]  # the overrides used, as hy_book records them


def violation_payload(v: Violation, actor: Actor) -> dict[str, Any]:
    return {
        "rule_id": v.rule_id,
        "kind": v.kind,
        "severity": v.severity,
        "message": v.message,
        "exams": v.keys,
        "overridable": v.overridable_by(actor.roles),
    }


class RuleService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        catalogue: Callable[[], Catalogue],
        *,
        hospital_id: str,
        tz: ZoneInfo,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        refresh_catalogue: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.refresh_catalogue = refresh_catalogue
        self.hospital_id = hospital_id
        self.tz = tz
        self.cache_s = cache_s
        self.clock = clock
        self._checker: Checker | None = None
        self._loaded_at = 0.0

    async def checker(self) -> Checker:
        if self._checker is None or self.clock() - self._loaded_at > self.cache_s:
            specs = await rules_repo.load_rule_specs(self.pool, self.hospital_id)
            self._checker = Checker(compile_rules(specs), self.tz)
            self._loaded_at = self.clock()
        return self._checker

    def invalidate(self) -> None:
        self._checker = None

    def reach(self, checker: Checker) -> timedelta:
        """How far apart two exams can be and still concern one rule."""
        hours = max((r.params.min_hours for r in checker.rules if isinstance(r.params, MinGap)), default=0.0)
        return timedelta(hours=hours) + CONTEXT_MARGIN

    async def context(
        self, patient_id: int, start: datetime, end: datetime, *, exclude_appointment: int | None = None
    ) -> RuleContext:
        version, facts, rows = await rules_repo.rule_context(self.pool, patient_id, start, end)
        return self.context_of(version, facts, rows, exclude_appointment=exclude_appointment)

    def context_of(
        self,
        version: int,
        facts: dict[str, Any],
        rows: Sequence[Mapping[str, Any]],
        *,
        exclude_appointment: int | None = None,
    ) -> RuleContext:
        """The context from what PostgreSQL returned (`rules_repo.rule_context`, or the booking's
        combined read `booking_repo.booking_context`, which covers the span `window()` asks for)."""
        exams = self.catalogue().exam_types
        existing = [
            Placed(
                key=f"appt:{r['id']}",
                exam=exams[r["exam_code"]],
                starts_at=int(r["s"]),
                ends_at=int(r["e"]),
                resource_id=r["resource_id"],
                campus_id=r["campus_id"],
                proposed=False,
            )
            for r in rows
            if r["id"] != exclude_appointment and r["exam_code"] in exams
        ]
        return RuleContext(version, facts, existing)

    async def window(self) -> timedelta:
        """How far on either side of the proposed exams the context must reach."""
        return self.reach(await self.checker())

    def placed(self, p: ProposedExam) -> Placed:
        cat = self.catalogue()
        return Placed(
            key=p.key,
            exam=cat.exam_types[p.exam_code],
            starts_at=p.starts_at,
            ends_at=p.ends_at,
            resource_id=p.resource_id,
            campus_id=cat.resources[p.resource_id].campus_id,
        )

    async def _ensure_known(self, proposed: Sequence[ProposedExam]) -> None:
        """An exam type or resource added to PostgreSQL after this worker loaded its catalogue is
        picked up by reloading it once; one still unknown is an inactive one."""

        def unknown() -> list[str]:
            cat = self.catalogue()
            return [p.exam_code for p in proposed if p.exam_code not in cat.exam_types] + [
                p.resource_id for p in proposed if p.resource_id not in cat.resources
            ]

        if unknown() and self.refresh_catalogue is not None:
            await self.refresh_catalogue()
        missing = unknown()
        if missing:
            raise ValidationFailed("检查项目或设备已停用", detail=f"inactive exam types or resources: {missing}")

    async def violations(
        self,
        patient_id: int,
        proposed: Sequence[ProposedExam],
        *,
        exclude_appointment: int | None = None,
        context: RuleContext | None = None,
    ) -> tuple[RuleContext, list[Violation]]:
        """The rules the proposed exams break; `context` when the caller read it already (it must
        cover the proposed exams' span widened by `window()`)."""
        await self._ensure_known(proposed)
        checker = await self.checker()
        ctx = context
        if ctx is None:
            reach = self.reach(checker)
            start = datetime.fromtimestamp(min(p.starts_at for p in proposed), UTC) - reach
            end = datetime.fromtimestamp(max(p.ends_at for p in proposed), UTC) + reach
            ctx = await self.context(patient_id, start, end, exclude_appointment=exclude_appointment)
        schedule = ctx.existing + [self.placed(p) for p in proposed]
        return ctx, checker.check(schedule, ctx.facts)

    async def check(
        self,
        actor: Actor,
        patient_id: int,
        proposed: Sequence[ProposedExam],
        overrides: Sequence[Override] = (),
        *,
        exclude_appointment: int | None = None,
        context: RuleContext | None = None,
    ) -> CheckOutcome:
        """Refuse a booking that breaks a rule, unless every broken rule is a warning this caller
        may override and an override with a reason was given for it."""
        for o in overrides:
            if len(o.reason.strip()) < 2:
                raise ValidationFailed("请填写越过规则的理由", detail=f"override of {o.rule_id} needs a reason")
        ctx, found = await self.violations(
            patient_id, proposed, exclude_appointment=exclude_appointment, context=context
        )
        given = {o.rule_id: o.reason.strip() for o in overrides}
        refused = [v for v in found if not (v.rule_id in given and v.overridable_by(actor.roles))]
        if refused:
            first = refused[0]
            raise RuleViolation(
                first.message,
                detail=f"rules broken: {sorted({v.rule_id for v in refused})}",
                violations=[violation_payload(v, actor) for v in found],
            )
        proposed_keys = {p.key for p in proposed}
        used: list[dict[str, Any]] = []
        for v in found:
            for key in v.keys:
                if key in proposed_keys:
                    used.append({"order_id": int(key), "rule_id": v.rule_id, "reason": given[v.rule_id]})
        unique = {(u["order_id"], u["rule_id"]): u for u in used}
        return CheckOutcome(ctx.version, list(unique.values()))
