"""The planner's input and output types and the lexicographic score (see the package docstring)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

import msgspec

from app.planning.catalogue import ExamType
from app.planning.rules import Placed

# -- input ----------------------------------------------------------------------------------------


class Candidate(msgspec.Struct, frozen=True):
    """An open slot window an exam can take; the exam occupies [starts_at, ends_at) (epoch s)."""

    slot_id: int
    resource_id: str
    campus_id: str
    starts_at: int
    ends_at: int


class PlanExam(msgspec.Struct, frozen=True):
    key: str  # the order id as text
    exam: ExamType


class Preferences(msgspec.Struct, frozen=True):
    part_of_day: Literal["any", "morning", "afternoon"] = "any"  # morning: starts before 12:00 local
    avoid_days: list[date] = msgspec.field(default_factory=list)
    campus: str | None = None  # only candidates on this campus


class PlanRequest(msgspec.Struct, frozen=True):
    exams: list[PlanExam]  # 1..8
    candidates: dict[str, list[Candidate]]  # per exam key
    existing: list[Placed]  # the patient's other appointments (past and future), proposed=False
    facts: dict[str, Any]
    preferences: Preferences
    earliest: date  # no candidate before this local date
    max_plans: int = 3
    node_limit: int = 200_000  # work units: search nodes plus single-day states expanded
    resource_names: dict[str, str] = msgspec.field(default_factory=dict)  # for explanations ("超声3室")


# -- output ---------------------------------------------------------------------------------------


class PlanItem(msgspec.Struct, frozen=True):
    key: str
    exam_code: str
    exam_name: str
    slot_id: int
    resource_id: str
    campus_id: str
    starts_at: int
    ends_at: int


class Unplaced(msgspec.Struct, frozen=True):
    key: str
    exam_code: str
    exam_name: str
    reasons: list[str]  # Chinese, for the clerk
    rule_ids: list[str]


class Plan(msgspec.Struct, frozen=True):
    items: list[PlanItem]  # sorted by starts_at
    unplaced: list[Unplaced]
    days: list[date]
    visit_days: int
    minutes_in_hospital: int  # sum over days of (last end − first start), minutes
    completes_at: int  # epoch s of the last end (0 when nothing is placed)
    explanation: list[str]
    preparation: list[str]


class PlanResult(msgspec.Struct, frozen=True):
    plans: list[Plan]  # best first, each on its own assignment of exams to days, at most max_plans
    complete_search: bool  # False when node_limit stopped the search (the best plan is then not proved)
    nodes: int


# (unplaced, visit days, minutes in hospital, completes at, ((start, slot id, key), ...), (unplaced keys))
Score = tuple[int, int, int, int, tuple[tuple[int, int, str], ...], tuple[str, ...]]


def plan_score(plan: Plan) -> Score:
    """The plan's lexicographic score: smaller is better."""
    return (
        len(plan.unplaced),
        plan.visit_days,
        plan.minutes_in_hospital,
        plan.completes_at,
        tuple(sorted((i.starts_at, i.slot_id, i.key) for i in plan.items)),
        tuple(sorted(u.key for u in plan.unplaced)),
    )
