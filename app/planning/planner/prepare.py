"""Preparing a request for the search: candidates filtered and reduced, exam types, pair rules.

Pre-filtering (per exam, in this order; an exam left without candidates is unplaced, and says why)
    1. the earliest local date; 2. the preferences (part of day, days to avoid, campus);
    3. the symmetry reduction below; 4. unary rules (`checker.unary`: prerequisites,
    contraindications, latest start); 5. (planner only, `_against_existing`) pair rules and overlaps
    against the existing appointments, which do not depend on the rest of the plan.

Symmetry reduction
    Two candidates of one exam with the same (starts_at, ends_at, campus_id) — hence the same local
    day — are interchangeable for every rule except travel gaps, which are waived between two exams
    on the *same resource*. So per (exam, starts_at, ends_at, campus_id) we keep the candidate with
    the lowest resource_id (lowest slot id on ties), plus every candidate whose resource is also a
    candidate resource of another exam of the request or the resource of an existing appointment
    (two CT exams may then share CT1 back to back). This is exact: replacing a dropped candidate by
    the kept one of its group only turns some "different resource" pairs into "same resource" ones,
    which can only remove travel-gap violations, and leaves the score's first four keys unchanged.
    Only the tie-break on slot ids can differ, which is why `exhaustive_best` searches the same
    reduced candidate sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from math import ceil
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from app.planning.catalogue import ExamType
from app.planning.planner.model import Candidate, PlanRequest, Preferences
from app.planning.rules import (
    Checker,
    Contraindication,
    MinGap,
    Placed,
    PrepWindow,
    Prerequisite,
    Rule,
    SameDayOrder,
    TimeOfDay,
    TravelGap,
    Violation,
)

_WEEKDAYS = "一二三四五六日"
_NOON = 12 * 3600


class _Item:
    """A candidate (or an existing appointment) prepared for the search."""

    __slots__ = (
        "campus", "cand", "day", "e", "exam", "idx", "j", "key", "placed", "pos", "res", "s", "tb", "tid"
    )  # fmt: skip

    def __init__(self, idx: int, pos: int, tid: int, placed: Placed, day: int, cand: Candidate | None) -> None:
        self.idx = idx  # unique per call; existing appointments are negative
        self.pos = pos  # exam index in the request (-1 for existing)
        self.tid = tid  # exam type id (see _Oracle)
        self.placed = placed
        self.exam = placed.exam
        self.key = placed.key
        self.s = placed.starts_at
        self.e = placed.ends_at
        self.day = day  # local date ordinal
        self.cand = cand
        self.campus = placed.campus_id
        self.res = placed.resource_id
        self.tb = (self.s, cand.slot_id if cand is not None else -1, self.key)  # its tie-break entry
        self.j = -1  # its exam's index in the search (set by the search)


class _Why:
    """Why an exam cannot be placed: Chinese reasons and rule ids, each once."""

    __slots__ = ("reasons", "rule_ids")

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.rule_ids: list[str] = []

    def add(self, reason: str, rule_id: str | None = None) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        if rule_id is not None and rule_id not in self.rule_ids:
            self.rule_ids.append(rule_id)

    def violations(self, found: Iterable[Violation]) -> None:
        for v in found:
            self.add(v.message, v.rule_id)


class _Local:
    """Epoch seconds to local datetimes in the hospital's zone, memoised (windows repeat a lot)."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._cache: dict[int, datetime] = {}
        self._days: dict[int, tuple[int, int]] = {}

    def dt(self, epoch: int) -> datetime:
        got = self._cache.get(epoch)
        if got is None:
            got = datetime.fromtimestamp(epoch, self.tz)
            self._cache[epoch] = got
        return got

    def day_clock(self, epoch: int) -> tuple[int, int]:
        """The local date ordinal and clock time (s since local midnight) of an instant, memoised."""
        got = self._days.get(epoch)
        if got is None:
            when = datetime.fromtimestamp(epoch, self.tz)
            got = self._days[epoch] = (when.toordinal(), when.hour * 3600 + when.minute * 60 + when.second)
        return got

    def hm(self, epoch: int) -> str:
        return self.dt(epoch).strftime("%H:%M")


# Rule kinds whose checks the planner knows; any other kind is treated as possibly relevant to
# every pair, on any days, and its unary check is run for every candidate.
_KNOWN = (SameDayOrder, MinGap, TimeOfDay, PrepWindow, Prerequisite, Contraindication, TravelGap)


_Rel = tuple[Checker, bool, bool] | None  # (sub-checker, applies across days, translation-invariant)


class _Oracle:
    """Pair compatibility: no overlap, and no pair rule fires (`Checker.pair` on the subset of rules
    whose selectors can match the two exam types).

    Memo: the known pair kinds (same-day order, min gap, fasting first, travel gap) depend only on
    the two exams, whether they share a local day, their relative times, campuses, whether they share
    a resource and whether they are the same key — not on absolute times — so their answers are
    memoised on that; a rule of any other kind falls back to a memo per candidate pair."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self._types: dict[bytes, int] = {}
        self._exams: list[ExamType] = []
        self._rel: dict[tuple[int, int], _Rel] = {}
        self._memo: dict[tuple[Any, ...], bool] = {}
        # The unary and day kinds never fire between two exams.
        self._pair_rules = [
            r for r in checker.rules if not isinstance(r.params, (PrepWindow, Prerequisite, Contraindication))
        ]

    def type_id(self, exam: ExamType) -> int:
        raw = msgspec.msgpack.encode(exam)
        tid = self._types.get(raw)
        if tid is None:
            tid = len(self._exams)
            self._types[raw] = tid
            self._exams.append(exam)
        return tid

    def relation(self, t1: int, t2: int) -> _Rel:
        """The rules that can fire between two exam types (as a sub-checker), whether any of them
        applies across days, and whether all are of the known kinds; None when only overlap matters."""
        k = (t1, t2) if t1 <= t2 else (t2, t1)
        if k in self._rel:
            return self._rel[k]
        e1, e2 = self._exams[k[0]], self._exams[k[1]]
        rules: list[Rule] = []
        cross = False
        known = True
        for rule in self._pair_rules:
            prm, a, b = rule.params, rule.spec.a, rule.spec.b
            if isinstance(prm, (SameDayOrder, MinGap)):
                hit = b is not None and ((a.matches(e1) and b.matches(e2)) or (a.matches(e2) and b.matches(e1)))
            elif isinstance(prm, TimeOfDay):
                hit = prm.before_others and a.matches(e1) != a.matches(e2)
            elif isinstance(prm, TravelGap):
                hit = a.matches(e1) and a.matches(e2)
            else:
                hit = True
                known = False
            if hit:
                rules.append(rule)
                cross = cross or not isinstance(prm, (SameDayOrder, TimeOfDay, TravelGap))
        rel = (Checker(rules, self.checker.tz), cross, known) if rules else None
        self._rel[k] = rel
        return rel

    def fits(self, x: _Item, y: _Item) -> bool:
        return self.fits_rel(x, y, self.relation(x.tid, y.tid))

    def fits_rel(self, x: _Item, y: _Item, rel: _Rel) -> bool:
        """`fits` with the relation of the two exam types already looked up."""
        if x.s < y.e and y.s < x.e:
            return False
        if rel is None:
            return True
        same_day = x.day == y.day
        if not same_day and not rel[1]:
            return True
        if rel[2]:
            k: tuple[Any, ...] = (
                x.tid,
                y.tid,
                same_day,
                x.s - y.s,
                x.e - x.s,
                y.e - y.s,
                x.campus,
                y.campus,
                x.res == y.res,
                x.key == y.key,
            )
        else:
            k = (x.idx, y.idx)
        got = self._memo.get(k)
        if got is None:
            got = self._memo[k] = not rel[0].pair(x.placed, y.placed)
        return got

    def conflicts(self, x: _Item, y: _Item) -> list[Violation]:
        rel = self.relation(x.tid, y.tid)
        return [] if rel is None else rel[0].pair(x.placed, y.placed)


class _Prepared:
    def __init__(self) -> None:
        self.domains: list[list[_Item]] = []  # per request exam: after unary rules (what exhaustive uses)
        self.fixed: dict[int, _Why] = {}  # request exam index -> why it has no candidate at all
        self.existing: list[_Item] = []


def _prepare(request: PlanRequest, checker: Checker, oracle: _Oracle, local: _Local) -> _Prepared:
    """The steps of the module docstring, per group of candidates with the same (starts_at, ends_at,
    campus_id): every filter before the symmetry reduction, and the unary rules of the known kinds,
    depend on the group only (its local day and clock time), so they run once per group (the unary
    rules once per clock time); `_Item`s are built for the candidates kept only."""
    prep = _Prepared()
    prefs = request.preferences
    avoid = {d.toordinal() for d in prefs.avoid_days}
    earliest = request.earliest.toordinal()
    part = prefs.part_of_day
    tids = [oracle.type_id(pe.exam) for pe in request.exams]
    for j, p in enumerate(request.existing):
        day = local.day_clock(p.starts_at)[0]
        prep.existing.append(_Item(-1 - j, -1, oracle.type_id(p.exam), p, day, None))

    kept_per_exam: list[dict[tuple[int, int, str], list[Candidate]]] = []
    status: dict[int, int] = {}  # per start: 0 before the earliest date, 1 not a preferred day or time, 2 kept
    campus_pref = prefs.campus
    for pe in request.exams:
        raw = request.candidates.get(pe.key, [])
        why = _Why()
        kept: dict[tuple[int, int, str], list[Candidate]] = {}
        if not raw:
            why.add("未来可预约范围内该检查暂无可用号源")
        else:
            timely = False
            for c in raw:
                start = c.starts_at
                st = status.get(start)
                if st is None:
                    day, clock = local.day_clock(start)
                    if day < earliest:
                        st = 0
                    elif (
                        day in avoid
                        or (part == "morning" and clock >= _NOON)
                        or (part == "afternoon" and clock < _NOON)
                    ):
                        st = 1
                    else:
                        st = 2
                    status[start] = st
                if not st or c.ends_at <= start:
                    continue
                timely = True
                if st == 1 or (campus_pref is not None and c.campus_id != campus_pref):
                    continue
                group = (start, c.ends_at, c.campus_id)
                got = kept.get(group)
                if got is None:
                    kept[group] = [c]
                else:
                    got.append(c)
            if not timely:
                why.add(f"{_md(request.earliest)}及以后的可预约范围内该检查暂无可用号源")
            elif not kept:
                why.add(f"按患者偏好（{_describe_prefs(prefs)}）筛选后无可用号源")
        if why.reasons:
            prep.fixed[len(kept_per_exam)] = why
        kept_per_exam.append(kept)

    # Symmetry reduction (see the module docstring).
    users: dict[str, int] = {}
    for kept in kept_per_exam:
        for r in {c.resource_id for members in kept.values() for c in members}:
            users[r] = users.get(r, 0) + 1
    shared = {r for r, count in users.items() if count > 1} | {p.resource_id for p in request.existing}

    idx = 0
    for i, (pe, kept) in enumerate(zip(request.exams, kept_per_exam, strict=True)):
        # Unary rules: only those whose selector matches the exam can fire. With only known kinds the
        # result depends on the local clock time alone (latest start), so it is memoised on it.
        rules = [r for r in checker.rules if r.spec.a.matches(pe.exam)]
        sub = Checker(rules, checker.tz)
        by_clock = all(isinstance(r.params, _KNOWN) for r in rules)
        memo: dict[int, list[Violation]] = {}
        domain: list[_Item] = []
        failed = _Why()
        for group in sorted(kept):
            start, end, campus = group
            members = kept[group]
            if len(members) == 1:
                best = {members[0].resource_id: members[0]}
            else:
                lowest = min(c.resource_id for c in members)
                best = {}
                for c in members:
                    r = c.resource_id
                    if r == lowest or r in shared:
                        b = best.get(r)
                        if b is None or c.slot_id < b.slot_id:
                            best[r] = c
            day, clock = local.day_clock(start)
            for r in sorted(best) if len(best) > 1 else best:
                c = best[r]
                placed = Placed(pe.key, pe.exam, start, end, r, campus, True)
                found: list[Violation] | None = None
                if rules:
                    found = memo.get(clock) if by_clock else None
                    if found is None:
                        found = sub.unary(placed, request.facts)
                        if by_clock:
                            memo[clock] = found
                if found:
                    failed.violations(found)
                    continue
                domain.append(_Item(idx, i, tids[i], placed, day, c))
                idx += 1
        if kept and not domain:
            prep.fixed[i] = failed
        prep.domains.append(domain)
    return prep


def _describe_prefs(prefs: Preferences) -> str:
    parts: list[str] = []
    if prefs.part_of_day == "morning":
        parts.append("仅上午")
    elif prefs.part_of_day == "afternoon":
        parts.append("仅下午")
    if prefs.avoid_days:
        parts.append("避开" + "、".join(_md(d) for d in sorted(prefs.avoid_days)))
    if prefs.campus is not None:
        parts.append(f"仅限{prefs.campus}院区")
    return "，".join(parts) or "无"


def _md(d: date) -> str:
    return f"{d.month}月{d.day}日"


def _mdw(d: date) -> str:
    return f"{d.month}月{d.day}日（周{_WEEKDAYS[d.weekday()]}）"


def _gap_after(checker: Checker, x: ExamType, y: ExamType) -> int:
    """Least gap (s) from the end of x to the start of a later y that the min-gap rules demand (as
    `Checker.pair` reads them: A then B always; B then A only when undirected)."""
    gap = 0
    for rule in checker.rules:
        prm, a, b = rule.params, rule.spec.a, rule.spec.b
        if (
            isinstance(prm, MinGap)
            and b is not None
            and ((a.matches(x) and b.matches(y)) or (not prm.directed and a.matches(y) and b.matches(x)))
        ):
            gap = max(gap, ceil(prm.min_hours * 3600))
    return gap


def _separation(checker: Checker, x: ExamType, y: ExamType, distinct_resources: bool) -> int:
    """Least gap (s) between two exams on one day, whichever comes first, from the travel-gap and
    min-gap rules (86400 or more: they can never share a day)."""
    sep = 0
    for rule in checker.rules:
        prm, a, b = rule.params, rule.spec.a, rule.spec.b
        if isinstance(prm, TravelGap) and distinct_resources and a.matches(x) and a.matches(y):
            least = min(prm.same_campus_minutes, prm.cross_campus_minutes, *prm.campus_minutes.values())
            sep = max(sep, least * 60)
        elif isinstance(prm, MinGap) and b is not None:
            xy = a.matches(x) and b.matches(y)
            yx = a.matches(y) and b.matches(x)
            if (xy and yx) or (not prm.directed and (xy or yx)):
                sep = max(sep, int(prm.min_hours * 3600))
    return sep


def _slot(c: _Item) -> int:
    return c.cand.slot_id if c.cand is not None else -1


def _against_existing(prep: _Prepared, oracle: _Oracle) -> list[list[_Item]]:
    """Drop candidates that break a pair rule with, or overlap, an existing appointment (they can
    never be part of a valid plan); an exam left with none becomes unplaced, with the reasons."""
    if not prep.existing:
        return prep.domains
    out: list[list[_Item]] = []
    for i, domain in enumerate(prep.domains):
        if not domain:
            out.append(domain)
            continue
        checks = [(x, oracle.relation(domain[0].tid, x.tid)) for x in prep.existing]
        fits = oracle.fits_rel
        kept = [c for c in domain if all(fits(c, x, rel) for x, rel in checks)]
        if domain and not kept:
            why = _Why()
            overlap = False
            for c in domain:
                for x in prep.existing:
                    overlap = overlap or (c.s < x.e and x.s < c.e)
                    why.violations(oracle.conflicts(c, x))
            if overlap:
                why.add("可选时段与患者已有的预约时间重叠")
            prep.fixed[i] = why
        out.append(kept)
    return out
