"""The medical rule engine (智能预约规则). Pure: rules are data (the booking_rule table), checked
against a patient's whole schedule — past, future and proposed exams — and the patient's facts.

A violation names its rule, its severity ('block', or 'warn' that an authorised role may override
with a reason) and a Chinese explanation a clerk can read out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from importlib import resources
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from app.planning.catalogue import ExamType

Kind = Literal[
    "same_day_order", "min_gap", "time_of_day", "prep_window", "prerequisite", "contraindication", "travel_gap"
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
Severity = Literal["block", "warn"]


class Selector(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Which exam types a rule is about. Every field given must match (a list matches any of its
    values); an empty selector matches every exam."""

    codes: list[str] | None = None
    tags: list[str] | None = None
    modality: list[str] | None = None
    contrast: list[str] | None = None
    fasting: bool | None = None
    full_bladder: bool | None = None
    anaesthesia: bool | None = None

    def matches(self, exam: ExamType) -> bool:
        if self.codes is not None and exam.code not in self.codes:
            return False
        if self.tags is not None and not set(self.tags) & set(exam.tags):
            return False
        if self.modality is not None and exam.modality not in self.modality:
            return False
        if self.contrast is not None and exam.contrast not in self.contrast:
            return False
        if self.fasting is not None and exam.fasting != self.fasting:
            return False
        if self.full_bladder is not None and exam.full_bladder != self.full_bladder:
            return False
        return self.anaesthesia is None or exam.anaesthesia == self.anaesthesia


# -- parameters per kind ---------------------------------------------------------------------------


class SameDayOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """On a day with both, every A ends before any B starts."""


class MinGap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At least `min_hours` from the end of A to the start of B (directed: only when B follows A;
    undirected: whichever comes first)."""

    min_hours: float = 0.0
    directed: bool = True


class TimeOfDay(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A starts no later than `latest_start`; with `before_others`, A also comes before every exam
    of the day that A's selector does not match (fasting exams before breakfast)."""

    latest_start: str | None = None  # "HH:MM"
    before_others: bool = False


class PrepWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A needs `prep_minutes` of preparation on site (drinking for a full bladder): it is not the
    first exam of the patient's day unless it starts that long after `day_start`."""

    prep_minutes: int = 60
    day_start: str = "08:00"


class Prerequisite(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A is bookable only when the patient's fact `fact` equals `equals` (e.g. a passed
    anaesthesia assessment). `notice` is added to the plan's preparation (e.g. escort required)."""

    fact: str
    equals: Any = True
    notice: str = ""


class Contraindication(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A is contraindicated when the patient's fact `fact` compares to `value` by `op`. An unknown
    fact does not trigger the rule (a prerequisite rule can demand that it be declared)."""

    fact: str
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in"] = "eq"
    value: Any = True


class TravelGap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Between consecutive exams in different rooms: `same_campus_minutes`, or the campus pair's
    entry in `campus_minutes` ("main>east"), else `cross_campus_minutes`."""

    same_campus_minutes: int = 30
    cross_campus_minutes: int = 60
    campus_minutes: dict[str, int] = msgspec.field(default_factory=dict)


PARAMS: dict[str, type[msgspec.Struct]] = {
    "same_day_order": SameDayOrder,
    "min_gap": MinGap,
    "time_of_day": TimeOfDay,
    "prep_window": PrepWindow,
    "prerequisite": Prerequisite,
    "contraindication": Contraindication,
    "travel_gap": TravelGap,
}
PAIR_KINDS = frozenset({"same_day_order", "min_gap"})


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rule as stored and as imported or exported in JSON."""

    id: str
    kind: Kind
    severity: Severity
    message: str
    a: Selector = Selector()
    b: Selector | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    override_roles: list[str] = msgspec.field(default_factory=list)
    enabled: bool = True


class Rule(msgspec.Struct, frozen=True):
    spec: RuleSpec
    params: Any  # the kind's params struct

    @property
    def id(self) -> str:
        return self.spec.id


class RuleError(ValueError):
    """A rule that does not validate; the message says which and why (English, for admins' logs)."""


def compile_rule(spec: RuleSpec) -> Rule:
    if not spec.id or len(spec.id) > 64:
        raise RuleError(f"rule id must be 1-64 characters, got {spec.id!r}")
    if not spec.message.strip():
        raise RuleError(f"rule {spec.id}: message must not be empty")
    if spec.kind in PAIR_KINDS and spec.b is None:
        raise RuleError(f"rule {spec.id}: kind {spec.kind} needs selector b")
    if spec.kind not in PAIR_KINDS and spec.b is not None:
        raise RuleError(f"rule {spec.id}: kind {spec.kind} takes no selector b")
    if spec.severity == "block" and spec.override_roles:
        raise RuleError(f"rule {spec.id}: a blocking rule cannot name override roles")
    try:
        params = msgspec.convert(spec.params, PARAMS[spec.kind])
    except msgspec.ValidationError as exc:
        raise RuleError(f"rule {spec.id}: params: {exc}") from None
    for name in ("latest_start", "day_start"):
        value = getattr(params, name, None)
        if value is not None:
            try:
                time.fromisoformat(value)
            except ValueError:
                raise RuleError(f"rule {spec.id}: {name} must be HH:MM, got {value!r}") from None
    if isinstance(params, MinGap) and params.min_hours <= 0:
        raise RuleError(f"rule {spec.id}: min_hours must be positive")
    return Rule(spec, params)


def load_default_rules() -> list[RuleSpec]:
    """The rule defaults shipped with the platform (DOMAIN.md section 4), seeded for a new hospital."""
    raw = resources.files("app.planning").joinpath("default_rules.json").read_bytes()
    specs = msgspec.json.decode(raw, type=list[RuleSpec])
    compile_rules(specs)
    return specs


def compile_rules(specs: Iterable[RuleSpec]) -> list[Rule]:
    rules = [compile_rule(s) for s in specs]
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuleError(f"duplicate rule ids: {dupes}")
    return sorted(rules, key=lambda r: r.id)


# -- the schedule being checked -------------------------------------------------------------------


class Placed(msgspec.Struct, frozen=True):
    """One exam on the patient's schedule: booked already (proposed=False) or being planned."""

    key: str  # order id (or appointment id) — identifies the exam in explanations
    exam: ExamType
    starts_at: int  # epoch seconds
    ends_at: int
    resource_id: str
    campus_id: str
    proposed: bool = True


class Violation(msgspec.Struct, frozen=True):
    rule_id: str
    kind: str
    severity: str
    message: str
    keys: list[str]  # the exams involved
    override_roles: list[str]

    def overridable_by(self, roles: Iterable[str]) -> bool:
        return self.severity == "warn" and bool(set(roles) & set(self.override_roles))


def _fmt_hours(hours: float) -> str:
    if hours >= 24 and hours % 24 == 0:
        days = int(hours // 24)
        return f"{days // 7}周" if days % 7 == 0 and days >= 14 else f"{days}天"
    return f"{hours:g}小时"


def _violation(rule: Rule, keys: list[str], **values: str) -> Violation:
    try:
        message = rule.spec.message.format(**values)
    except (KeyError, IndexError, ValueError):
        message = rule.spec.message
    return Violation(rule.id, rule.spec.kind, rule.spec.severity, message, keys, list(rule.spec.override_roles))


def _compare(op: str, actual: Any, expected: Any) -> bool:
    try:
        if op == "eq":
            return bool(actual == expected)
        if op == "ne":
            return bool(actual != expected)
        if op == "in":
            return actual in expected
        a, e = float(actual), float(expected)
    except (TypeError, ValueError):
        return False
    return {"lt": a < e, "le": a <= e, "gt": a > e, "ge": a >= e}[op]


class Checker:
    """Checks schedules against one hospital's rules in its time zone."""

    def __init__(self, rules: Sequence[Rule], tz: ZoneInfo) -> None:
        self.rules = [r for r in rules if r.spec.enabled]
        self.tz = tz

    def day_of(self, p: Placed) -> date:
        return datetime.fromtimestamp(p.starts_at, self.tz).date()

    def _clock(self, epoch: int) -> time:
        return datetime.fromtimestamp(epoch, self.tz).time()

    # Unary checks depend on one exam and the facts: the planner filters candidates with them.
    def unary(self, p: Placed, facts: Mapping[str, Any]) -> list[Violation]:
        out = []
        for rule in self.rules:
            if not rule.spec.a.matches(p.exam):
                continue
            prm = rule.params
            name = p.exam.name
            if isinstance(prm, Prerequisite):
                if facts.get(prm.fact) != prm.equals:
                    out.append(_violation(rule, [p.key], a=name, fact=prm.fact))
            elif isinstance(prm, Contraindication):
                if prm.fact in facts and _compare(prm.op, facts[prm.fact], prm.value):
                    out.append(_violation(rule, [p.key], a=name, fact=prm.fact, value=str(facts[prm.fact])))
            elif (
                isinstance(prm, TimeOfDay)
                and prm.latest_start is not None
                and self._clock(p.starts_at) > time.fromisoformat(prm.latest_start)
            ):
                out.append(_violation(rule, [p.key], a=name, latest=prm.latest_start))
        return out

    # Pair checks depend on two exams (in either order).
    def pair(self, p: Placed, q: Placed) -> list[Violation]:
        out = []
        same_day = self.day_of(p) == self.day_of(q)
        for rule in self.rules:
            prm = rule.params
            a, b = rule.spec.a, rule.spec.b
            if isinstance(prm, SameDayOrder) and same_day and b is not None:
                for x, y in ((p, q), (q, p)):
                    if a.matches(x.exam) and b.matches(y.exam) and x.key != y.key and y.starts_at < x.ends_at:
                        out.append(_violation(rule, [x.key, y.key], a=x.exam.name, b=y.exam.name))
            elif isinstance(prm, MinGap) and b is not None:
                for x, y in ((p, q), (q, p)):
                    if not (a.matches(x.exam) and b.matches(y.exam)) or x.key == y.key:
                        continue
                    if prm.directed and y.starts_at < x.starts_at:
                        continue  # only "B after A" is constrained
                    first, second = (x, y) if x.starts_at <= y.starts_at else (y, x)
                    if second.starts_at - first.ends_at < prm.min_hours * 3600:
                        out.append(
                            _violation(
                                rule, [x.key, y.key], a=x.exam.name, b=y.exam.name, gap=_fmt_hours(prm.min_hours)
                            )
                        )
                        break
            elif isinstance(prm, TimeOfDay) and prm.before_others and same_day:
                for x, y in ((p, q), (q, p)):
                    if a.matches(x.exam) and not a.matches(y.exam) and y.starts_at < x.starts_at:
                        out.append(_violation(rule, [x.key, y.key], a=x.exam.name, b=y.exam.name))
            elif isinstance(prm, TravelGap) and same_day and p.resource_id != q.resource_id:
                if not (a.matches(p.exam) and a.matches(q.exam)):
                    continue
                first, second = (p, q) if p.starts_at <= q.starts_at else (q, p)
                need = self.travel_minutes(prm, first.campus_id, second.campus_id)
                if second.starts_at - first.ends_at < need * 60 and second.starts_at >= first.starts_at:
                    out.append(
                        _violation(
                            rule, [first.key, second.key], a=first.exam.name, b=second.exam.name, minutes=str(need)
                        )
                    )
        return out

    @staticmethod
    def travel_minutes(prm: TravelGap, from_campus: str, to_campus: str) -> int:
        if from_campus == to_campus:
            return prm.same_campus_minutes
        return prm.campus_minutes.get(f"{from_campus}>{to_campus}", prm.cross_campus_minutes)

    # Day checks depend on the patient's whole day.
    def day(self, day_items: Sequence[Placed]) -> list[Violation]:
        out: list[Violation] = []
        if not day_items:
            return out
        first = min(day_items, key=lambda p: (p.starts_at, p.key))
        for rule in self.rules:
            prm = rule.params
            if isinstance(prm, PrepWindow) and rule.spec.a.matches(first.exam):
                opening = datetime.combine(self.day_of(first), time.fromisoformat(prm.day_start), self.tz)
                if first.starts_at < opening.timestamp() + prm.prep_minutes * 60:
                    out.append(_violation(rule, [first.key], a=first.exam.name, minutes=str(prm.prep_minutes)))
        return out

    def check(self, schedule: Sequence[Placed], facts: Mapping[str, Any]) -> list[Violation]:
        """Every violation that involves at least one proposed exam, each reported once."""
        found: list[Violation] = []
        for p in schedule:
            if p.proposed:
                found += self.unary(p, facts)
        for i, p in enumerate(schedule):
            for q in schedule[i + 1 :]:
                if p.proposed or q.proposed:
                    found += self.pair(p, q)
        by_day: dict[date, list[Placed]] = defaultdict(list)
        for p in schedule:
            by_day[self.day_of(p)].append(p)
        proposed_keys = {p.key for p in schedule if p.proposed}
        for items in by_day.values():
            found += [v for v in self.day(items) if set(v.keys) & proposed_keys]
        unique: dict[tuple[str, tuple[str, ...]], Violation] = {}
        for v in found:
            unique.setdefault((v.rule_id, tuple(sorted(v.keys))), v)
        return sorted(unique.values(), key=lambda v: (v.rule_id, v.keys))

    def notices(self, exams: Iterable[ExamType]) -> list[str]:
        """Preparation notices the rules add for these exams (escort, fasting...)."""
        out: list[str] = []
        for exam in exams:
            for rule in self.rules:
                prm = rule.params
                if isinstance(prm, Prerequisite) and prm.notice and rule.spec.a.matches(exam) and prm.notice not in out:
                    out.append(prm.notice)
        return out
