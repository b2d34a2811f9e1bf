"""The smart booking planner (智能预约): puts a patient's pending exams into as few visit days as
possible, then the shortest time in hospital, then the earliest completion — respecting every rule
of the hospital's rule table — and explains each plan in Chinese words a clerk can read out.

Pure: no I/O. The caller gives the exams, the open slots each can take (already filtered for
capacity and channel), the patient's other appointments and facts; it gets up to `max_plans`
distinct plans, best first.

Objective (lexicographic, see `plan_score`)
    1. fewest unplaced exams, 2. fewest visit days (患者少跑路), 3. least time in hospital (sum over
    visit days of last end − first start), 4. earliest completion, 5. a deterministic tie-break on
    the items' (start, slot id, key). Same input, same output.

Feasibility
    A plan satisfies EVERY rule, 'block' and 'warn' alike:
    ``checker.check(existing + items as Placed(proposed=True), facts) == []``, and no two exams of the
    patient (plan items and existing appointments) overlap in time.

Pre-filtering (per exam, in this order; an exam left without candidates is unplaced, and says why)
    1. the earliest local date; 2. the preferences (part of day, days to avoid, campus);
    3. the symmetry reduction below; 4. unary rules (`checker.unary`: prerequisites,
    contraindications, latest start); 5. (planner only) pair rules and overlaps against the
    existing appointments, which do not depend on the rest of the plan.

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

Search: chronological depth-first branch and bound (see `_Search`)
    A plan is built in time order: append an exam to the current day, open a later day with one
    exam first, or stop (the exams left are unplaced, +1 each in the first key — so pairwise
    incompatible exams still yield plans, and the rule that blocks them is reported).
    * Packing (dominance): an exam appended to a day takes, per resource, its earliest candidate
      compatible with everything before it; and a day whose first exam could move later towards the
      second one is cut. Any plan can be transformed into such a plan without a worse score (for the
      rule kinds rules.py knows; with a rule of another kind every candidate is tried).
    * Forward checking: the candidates of the current day are filtered against each exam placed
      that day (`Checker.pair` on the rules that can match the two exam types, memoised on relative
      times); later days through min-gap thresholds; day rules (`Checker.day`: the full-bladder
      preparation window) when a day is closed.
    * Lower bounds, none of which can decrease as exams are added: unplaced (exams with no candidate
      left, pairs bound by a long min gap that no longer both fit); visit days (an exam that cannot
      join the current day, exams that can never share a day); time in hospital (durations plus the
      travel gaps between resource runs — a set cover — or the least gaps per exam); completion
      (earliest ends, long min gaps). A node whose bound exceeds the K-th best plan (first four keys,
      then the tie-break on the prefix, which is the start of the final tuple) is cut.
    * Phases on (unplaced, visit days) after a first greedy dive: 1 day, then 2..., so the search
      never sinks into 3-day plans when 2 days will do.
    `node_limit` bounds the number of nodes; `complete_search` says whether the search finished (the
    best plan is then provably the best: the tests compare it with a brute force).

Top plans
    The best `max_plans` *distinct* plans: two plans are the same when they place the same exams at
    the same start times (they may differ in rooms only); the better-scored variant is kept.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from app.planning.catalogue import ExamType
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

__all__ = [
    "Candidate",
    "Plan",
    "PlanExam",
    "PlanItem",
    "PlanRequest",
    "PlanResult",
    "Preferences",
    "Score",
    "Unplaced",
    "exhaustive_best",
    "make_plans",
    "plan_score",
]

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
    node_limit: int = 200_000
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
    plans: list[Plan]  # best first, distinct, at most max_plans
    complete_search: bool  # False when node_limit stopped the search
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


# -- internals ------------------------------------------------------------------------------------

_WEEKDAYS = "一二三四五六日"
_NOON = 12 * 3600


class _Item:
    """A candidate (or an existing appointment) prepared for the search."""

    __slots__ = ("campus", "cand", "day", "e", "exam", "idx", "key", "placed", "pos", "res", "s", "shape", "tid")

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
        self.shape = (self.e - self.s, self.campus)


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

    def dt(self, epoch: int) -> datetime:
        got = self._cache.get(epoch)
        if got is None:
            got = datetime.fromtimestamp(epoch, self.tz)
            self._cache[epoch] = got
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
        for rule in self.checker.rules:
            prm, a, b = rule.params, rule.spec.a, rule.spec.b
            if isinstance(prm, (SameDayOrder, MinGap)):
                hit = b is not None and ((a.matches(e1) and b.matches(e2)) or (a.matches(e2) and b.matches(e1)))
            elif isinstance(prm, TimeOfDay):
                hit = prm.before_others and a.matches(e1) != a.matches(e2)
            elif isinstance(prm, TravelGap):
                hit = a.matches(e1) and a.matches(e2)
            elif isinstance(prm, (PrepWindow, Prerequisite, Contraindication)):
                hit = False
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
    prep = _Prepared()
    prefs = request.preferences
    avoid = set(prefs.avoid_days)
    tids = [oracle.type_id(pe.exam) for pe in request.exams]
    for j, p in enumerate(request.existing):
        day = local.dt(p.starts_at).date().toordinal()
        prep.existing.append(_Item(-1 - j, -1, oracle.type_id(p.exam), p, day, None))

    kept_per_exam: list[list[Candidate]] = []
    for i, pe in enumerate(request.exams):
        raw = request.candidates.get(pe.key, [])
        why = _Why()
        kept: list[Candidate] = []
        if not raw:
            why.add("未来可预约范围内该检查暂无可用号源")
        else:
            timely = [c for c in raw if c.ends_at > c.starts_at and local.dt(c.starts_at).date() >= request.earliest]
            if not timely:
                why.add(f"{_md(request.earliest)}及以后的可预约范围内该检查暂无可用号源")
            for c in timely:
                when = local.dt(c.starts_at)
                if prefs.campus is not None and c.campus_id != prefs.campus:
                    continue
                if when.date() in avoid:
                    continue
                clock = when.hour * 3600 + when.minute * 60 + when.second
                if prefs.part_of_day == "morning" and clock >= _NOON:
                    continue
                if prefs.part_of_day == "afternoon" and clock < _NOON:
                    continue
                kept.append(c)
            if timely and not kept:
                why.add(f"按患者偏好（{_describe_prefs(prefs)}）筛选后无可用号源")
        if why.reasons:
            prep.fixed[i] = why
        kept.sort(key=lambda c: (c.starts_at, c.ends_at, c.campus_id, c.resource_id, c.slot_id))
        kept_per_exam.append(kept)

    # Symmetry reduction (see the module docstring).
    users: dict[str, set[int]] = {}
    for i, kept in enumerate(kept_per_exam):
        for c in kept:
            users.setdefault(c.resource_id, set()).add(i)
    shared = {r for r, who in users.items() if len(who) > 1} | {p.resource_id for p in request.existing}

    idx = 0
    for i, (pe, kept) in enumerate(zip(request.exams, kept_per_exam, strict=True)):
        reduced: dict[tuple[int, int, str, str], Candidate] = {}
        lowest: dict[tuple[int, int, str], str] = {}
        for c in kept:
            group = (c.starts_at, c.ends_at, c.campus_id)
            if group not in lowest or c.resource_id < lowest[group]:
                lowest[group] = c.resource_id
        for c in kept:
            group = (c.starts_at, c.ends_at, c.campus_id)
            if c.resource_id == lowest[group] or c.resource_id in shared:
                k = (*group, c.resource_id)
                if k not in reduced or c.slot_id < reduced[k].slot_id:
                    reduced[k] = c
        # Unary rules: only those whose selector matches the exam can fire. With only known kinds the
        # result depends on the local clock time alone (latest start), so it is memoised on it.
        rules = [r for r in checker.rules if r.spec.a.matches(pe.exam)]
        sub = Checker(rules, checker.tz)
        by_clock = all(isinstance(r.params, _KNOWN) for r in rules)
        memo: dict[int, list[Violation]] = {}
        domain: list[_Item] = []
        failed = _Why()
        for c in reduced.values():
            placed = Placed(pe.key, pe.exam, c.starts_at, c.ends_at, c.resource_id, c.campus_id, True)
            when = local.dt(c.starts_at)
            found: list[Violation] | None = None
            if rules:
                clock = when.hour * 3600 + when.minute * 60 + when.second
                found = memo.get(clock) if by_clock else None
                if found is None:
                    found = sub.unary(placed, request.facts)
                    if by_clock:
                        memo[clock] = found
            if found:
                failed.violations(found)
                continue
            domain.append(_Item(idx, i, tids[i], placed, when.date().toordinal(), c))
            idx += 1
        if reduced and not domain:
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


# -- the search -----------------------------------------------------------------------------------

_Snapshot = tuple[_Item, ...]  # the placed candidates, in time order
_Days = dict[int, list[_Item]]  # local day ordinal -> candidates, by start
_Entry = tuple[tuple[int, int, str], ...]
_NEVER = 1 << 62


class _Top:
    """The best K distinct plans found so far."""

    def __init__(self, k: int) -> None:
        self.k = max(k, 1)
        self.entries: list[tuple[Score, frozenset[tuple[str, int]], _Snapshot]] = []
        self.bound: tuple[int, int, int, int] | None = None  # first four keys of the K-th best
        self.bound_items: _Entry = ()  # and its items, for the tie-break

    def offer(self, score: Score, signature: frozenset[tuple[str, int]], snapshot: _Snapshot) -> None:
        for n, (old, sig, _) in enumerate(self.entries):
            if sig == signature:
                if score < old:
                    self.entries[n] = (score, signature, snapshot)
                    self._settle()
                return
        if len(self.entries) >= self.k:
            if score >= self.entries[-1][0]:
                return
            self.entries.pop()
        self.entries.append((score, signature, snapshot))
        self._settle()

    def _settle(self) -> None:
        self.entries.sort(key=lambda t: t[0])
        if len(self.entries) >= self.k:
            s = self.entries[-1][0]
            self.bound = (s[0], s[1], s[2], s[3])
            self.bound_items = s[4]


class _Stop(Exception):
    pass


class _Found(Exception):
    pass


class _Search:
    """Chronological branch and bound: the plan is built in time order — append an exam to the
    current day, open a later day with a first exam, or stop (the exams left are unplaced).

    Packing (when every rule is of a known kind): an exam appended to a day takes, per resource and
    window length, its earliest candidate compatible with everything placed before it. Any valid
    plan can be turned into such a plan, day by day in time order, by moving each exam but the
    first of its day to the earliest compatible window of the same length on its resource: moving
    an exam earlier while keeping the order only widens its gaps to the exams after it, which no
    known rule penalises (orders are kept, min gaps and travel gaps grow, latest starts hold, the
    first exam of each day and so the preparation window stay), and no key of the score gets worse
    (the tie-break prefers earlier starts). Likewise the first exam of a day is moved as late as
    the second one allows when nothing else depends on its time (see `shift_first`): that day gets
    shorter. So the best plan is found; the alternatives offered are such plans too (a plan that
    merely delays or advances one exam around idle time is not offered).

    Forward checking: the candidates of the current day are filtered against each exam placed that
    day (`Checker.pair`, memoised); later days only against the min gaps that bind an exam placed
    before (a threshold per exam: a min gap from A to B, or an undirected one, forbids B to start
    less than the gap after A's end) and, for rules of unknown kinds, with an explicit check."""

    def __init__(
        self, request: PlanRequest, checker: Checker, oracle: _Oracle, prep: _Prepared, domains: list[list[_Item]]
    ) -> None:
        self.request = request
        self.checker = checker
        self.oracle = oracle
        self.order = [i for i in range(len(request.exams)) if i not in prep.fixed and domains[i]]
        n = self.n = len(self.order)
        self.base_u = len(request.exams) - n
        self.doms0: list[_Days] = []
        self.flat: list[list[_Item]] = []
        self.flat_s: list[list[int]] = []
        self.min_dur: list[int] = []
        self.max_end: list[int] = []
        for i in self.order:
            ordered = sorted(domains[i], key=lambda c: (c.s, c.e, c.idx))
            days: _Days = {}
            for c in ordered:
                days.setdefault(c.day, []).append(c)
            self.doms0.append(days)
            self.flat.append(ordered)
            self.flat_s.append([c.s for c in ordered])
            self.min_dur.append(min(c.e - c.s for c in ordered))
            self.max_end.append(max(c.e for c in ordered))
        self.midnight: dict[int, int] = {}  # local day ordinal -> epoch of its 00:00
        for days in self.doms0:
            for day in days:
                for dd in (day, day + 1):
                    if dd not in self.midnight:
                        when = datetime.combine(date.fromordinal(dd), datetime.min.time(), checker.tz)
                        self.midnight[dd] = int(when.timestamp())
        exams = [request.exams[i].exam for i in self.order]
        tids = [oracle.type_id(e) for e in exams]
        self.rels: list[list[_Rel]] = [[oracle.relation(a, b) for b in tids] for a in tids]
        self.packed = all(isinstance(r.params, _KNOWN) for r in checker.rules)
        # after[k][j]: least gap from an exam k to a later exam j (min-gap rules); odd[k][j]: a rule of
        # an unknown kind may bind them across days (checked explicitly).
        self.after = [[_gap_after(checker, exams[k], exams[j]) for j in range(n)] for k in range(n)]
        self.odd = [[rel is not None and rel[1] and not rel[2] for rel in row] for row in self.rels]
        self.any_odd = any(any(row) for row in self.odd)
        resources = [{c.res for c in domains[i]} for i in self.order]
        # Least gap before exam j when it is not the first of its day: the travel gap unless it can share
        # a resource with the exam before, and a min gap binding both orders (0 when no other exam can
        # share its day).
        g = [0] * n
        for j in range(n):
            gaps = [
                _separation(checker, exams[j], exams[k], not resources[j] & resources[k]) for k in range(n) if k != j
            ]
            g[j] = min((x for x in gaps if x < 86400), default=0)
        self.g = g
        self.G = max(g, default=0)
        self.w = [self.min_dur[j] + g[j] for j in range(n)]
        # Exams that can never share a day: a min gap binds them in both orders and no day of both
        # has room for it (two iodine exams 7 days apart; enhanced CT and MRI 4 h apart when both
        # must start before 11:30).
        first_end = [{day: min(x.e for x in lst) for day, lst in days.items()} for days in self.doms0]
        last_start = [{day: max(x.s for x in lst) for day, lst in days.items()} for days in self.doms0]
        self.apart = [[False] * n for _ in range(n)]
        self.far: list[tuple[int, int, int]] = []  # (j, k, gap) for gaps longer than a travel gap
        for j in range(n):
            for k in range(j + 1, n):
                sep = _separation(checker, exams[j], exams[k], False)
                if sep <= 0:
                    continue
                if sep > self.G:
                    self.far.append((j, k, sep))
                if not any(
                    first_end[j][day] + sep <= last_start[k][day] or first_end[k][day] + sep <= last_start[j][day]
                    for day in first_end[j].keys() & first_end[k].keys()
                ):
                    self.apart[j][k] = self.apart[k][j] = True
        # Resource runs: consecutive exams on one resource need no travel gap, on different ones at
        # least T (a travel-gap rule that matches every exam). cover[mask]: the fewest resources that
        # can host that set of exams, hence the fewest runs.
        self.T = 0
        for rule in checker.rules:
            prm = rule.params
            if isinstance(prm, TravelGap) and all(rule.spec.a.matches(e) for e in exams):
                least = min(prm.same_campus_minutes, prm.cross_campus_minutes, *prm.campus_minutes.values())
                self.T = max(self.T, least * 60)
        hosts: dict[str, int] = {}
        for j in range(n):
            for r in resources[j]:
                hosts[r] = hosts.get(r, 0) | 1 << j
        self.cover = [0] * (1 << n)
        for mask in range(1, 1 << n):
            low = (mask & -mask).bit_length() - 1
            self.cover[mask] = 1 + min(self.cover[mask & ~hosts[r]] for r in resources[low])
        # The first exam of a day can be moved later, up to the second one, when nothing else depends
        # on its time: no min gap runs from it to a later exam, and the travel gaps (rules matching
        # every exam) obey the triangle inequality, so the later exams stay compatible. A day whose
        # first exam could move later is beaten by the same day with it moved (shorter, same end):
        # such branches are cut (see _loose_first).
        travel = [r for r in checker.rules if isinstance(r.params, TravelGap)]
        universal = all(all(r.spec.a.matches(e) for e in exams) for r in travel)
        campuses = sorted({c.campus for i in self.order for c in domains[i]})

        def need(x: str, y: str) -> int:
            return max((Checker.travel_minutes(r.params, x, y) for r in travel), default=0)

        triangle = all(need(a, c) <= need(a, b) + need(b, c) for a in campuses for b in campuses for c in campuses)
        self.shift_first = [self.packed and universal and triangle and not any(self.after[j]) for j in range(n)]
        coverage: dict[int, int] = {}
        for days in self.doms0:
            for day in days:
                coverage[day] = coverage.get(day, 0) + 1
        self.day_order = sorted(coverage, key=lambda x: (-coverage[x], x))
        self.existing_by_day: dict[int, list[Placed]] = {}
        for x in prep.existing:
            self.existing_by_day.setdefault(x.day, []).append(x.placed)
        self.keys = [request.exams[i].key for i in self.order]
        self.placed: list[_Item] = []
        self.placed_exam: list[int] = []
        self.prefix: list[tuple[int, int, str]] = []
        self.top = _Top(request.max_plans)
        self.nodes = 0
        self.limit = request.node_limit
        self.day_memo: dict[tuple[int, tuple[int, ...]], bool] = {}
        # Day rules: the preparation window, and any rule of an unknown kind (Checker.day may use it).
        day_rules = [r for r in checker.rules if isinstance(r.params, PrepWindow) or not isinstance(r.params, _KNOWN)]
        self.day_checker = Checker(day_rules, checker.tz) if day_rules else None
        # A preparation window only looks at the first exam of the day, known when the day opens.
        self.first_decides = bool(day_rules) and all(isinstance(r.params, PrepWindow) for r in day_rules)
        self.dive_limit = 0
        self.cap: tuple[int, int] = (len(request.exams), n)
        self.diving = False

    # -- driver ------------------------------------------------------------------------------------

    def run(self) -> bool:
        """A first dive (the first plan depth-first, as a fallback), then phases on (unplaced,
        visit days): each prunes the plans worse than its target, so that the depth-first search
        does not sink into 3-day plans when 2 days will do. A phase that finds K plans fixes the
        optimum's first two keys; the next phases run only while fewer than K plans are known."""
        n = self.n
        try:
            self.diving = True
            self.dive_limit = self.nodes + max(100, self.limit // 10)
            try:
                self._root()
            except _Found:
                self.placed.clear()  # the dive unwound by an exception, past its own clean-up
                self.placed_exam.clear()
                self.prefix.clear()
            self.diving = False
            worst = (self.top.entries[0][0][0], self.top.entries[0][0][1]) if self.top.entries else (n + 99, n)
            clique = _clique(self.apart)
            for extra in range(n + 1):
                lowest = max(0 if extra == n else 1, clique - extra)
                for days in range(lowest, n - extra + 1):
                    self.cap = (self.base_u + extra, days)
                    if self.cap > worst:
                        return True
                    self._root()
                    entries = self.top.entries
                    if len(entries) >= self.top.k and (entries[-1][0][0], entries[-1][0][1]) <= self.cap:
                        return True  # every plan left out of the phase is worse than the K kept
        except _Stop:
            return False
        return True

    def _root(self) -> None:
        self._dfs(tuple(range(self.n)), self.base_u, 0, 0, {}, (0,) * self.n, -1, 0, 0, 0)

    # -- helpers -----------------------------------------------------------------------------------

    def _bound_cut(self, lb: tuple[int, int, int, int], extra: tuple[int, int, str] | None = None) -> bool:
        """Whether no completion of the current prefix (plus `extra`) can enter the top K (or the
        phase's target)."""
        if (lb[0], lb[1]) > self.cap:
            return True
        bound = self.top.bound
        if bound is None or lb < bound:
            return False
        if lb > bound:
            return True
        # Equal first keys: the tie-break on the items in time order, of which this is a prefix.
        prefix = (*self.prefix, extra) if extra is not None else tuple(self.prefix)
        return prefix > self.top.bound_items[: len(prefix)]

    def _loose_first(self, j: int, x: _Item) -> bool:
        """Whether x (exam j), about to follow the first exam f of its day, leaves room to move f
        later on its resource (then this branch is beaten by that of the later f)."""
        placed = self.placed
        f = placed[-1]
        if f.day != x.day or (len(placed) > 1 and placed[-2].day == f.day):
            return False
        k = self.placed_exam[-1]
        if not self.shift_first[k]:
            return False
        rel = self.rels[k][j]
        fits = self.oracle.fits_rel
        length = f.e - f.s
        return any(
            f.s < y.s < x.s and y.res == f.res and y.e - y.s == length and fits(x, y, rel)
            for y in self.doms0[k].get(f.day, ())
        )

    def _odd_ok(self, j: int, x: _Item) -> bool:
        """Rules of unknown kinds that may bind x with an exam placed on another day."""
        fits = self.oracle.fits_rel
        return all(
            fits(x, c, self.rels[k][j]) for c, k in zip(self.placed, self.placed_exam, strict=True) if self.odd[k][j]
        )

    def _first_ok(self, x: _Item) -> bool:
        """The day rules, when they depend only on the day's first exam, for x opening its day."""
        if self.day_checker is None:
            return True
        mk = (x.day, (x.idx,))
        got = self.day_memo.get(mk)
        if got is None:
            schedule = [*self.existing_by_day.get(x.day, []), x.placed]
            got = not any(x.key in v.keys for v in self.day_checker.day(schedule))
            self.day_memo[mk] = got
        return got

    def _day_ok(self, day: int) -> bool:
        if self.day_checker is None:
            return True
        items = [c for c in self.placed if c.day == day]
        mk = (day, tuple(c.idx for c in items))
        got = self.day_memo.get(mk)
        if got is None:
            keys = {c.key for c in items}
            schedule = self.existing_by_day.get(day, []) + [c.placed for c in items]
            got = not any(set(v.keys) & keys for v in self.day_checker.day(schedule))
            self.day_memo[mk] = got
        return got

    def _child(
        self,
        j: int,
        x: _Item,
        rest: tuple[int, ...],
        base: dict[int, list[_Item]],
        thr: tuple[int, ...],
        budget: tuple[int, set[int]] | None = None,
    ) -> tuple[dict[int, list[_Item]], tuple[int, ...]] | None:
        """After placing x (exam j): the other exams' candidates on x's day (from `base`) that may
        follow it, and their new thresholds. With a budget (the last day a phase allows: how many
        more exams may lose their place, and the exams not to count), None once it is exceeded."""
        lost = 0
        after = self.after[j]
        rels = self.rels[j]
        fits = self.oracle.fits_rel
        new_thr = list(thr)
        cur: dict[int, list[_Item]] = {}
        for k in rest:
            t = x.e + after[k] if after[k] else 0
            if t > new_thr[k]:
                new_thr[k] = t
            lst = base.get(k)
            if not lst:
                continue
            floor = max(x.s, new_thr[k])
            rel = rels[k]
            if rel is None:  # no rule between the two: only no overlap
                floor = max(floor, x.e)
                kept = [y for y in lst if y.s >= floor]
            elif rel[2]:
                # Known kinds only: for a later exam of one duration, campus and same-resource-or-not,
                # compatibility with x is monotone in its start (gaps only grow, the order stays), so
                # once one fits, the later ones of its kind fit too.
                kept = []
                same: set[tuple[int, str]] = set()  # kinds found to fit, on x's resource
                other: set[tuple[int, str]] = set()  # and on another one
                xr = x.res
                for y in lst:
                    if y.s < floor:
                        continue
                    fine = same if y.res == xr else other
                    if y.shape in fine:
                        kept.append(y)
                    elif fits(y, x, rel):
                        fine.add(y.shape)
                        kept.append(y)
            else:
                kept = [y for y in lst if y.s >= floor and fits(y, x, rel)]
            if kept:
                cur[k] = kept
            elif budget is not None and k not in budget[1]:
                lost += 1
                if lost > budget[0]:
                    return None
        if budget is not None:
            lost += sum(1 for k in rest if k not in base and k not in budget[1])
            if lost > budget[0]:
                return None
        return cur, tuple(new_thr)

    # -- the search --------------------------------------------------------------------------------

    def _dfs(
        self,
        todo: tuple[int, ...],
        u: int,
        secs: int,
        cmax: int,
        cur: dict[int, list[_Item]],
        thr: tuple[int, ...],
        cd: int,
        lo: int,
        hi: int,
        d: int,
    ) -> None:
        """todo: the exams still to decide; u: unplaced so far; secs: time in hospital of the days
        before the current one (s); cmax: last end so far; cur: per exam, its candidates on the
        current day that may still follow; thr: per exam, the earliest start the min gaps allow;
        cd: the current day (-1 before the first); [lo, hi): its span so far; d: days used."""
        self.nodes += 1
        if self.nodes > self.limit:
            raise _Stop
        if self.diving and self.nodes > self.dive_limit:
            raise _Found  # the dive is only a fallback: give up on it
        w = self.w
        G = self.G
        T = self.T
        min_dur = self.min_dur
        apart = self.apart
        flat_s = self.flat_s
        span = hi - lo
        tomorrow = self.midnight.get(cd + 1, 0) if cd >= 0 else 0
        # Per exam still to place: its candidates on the current day, its first candidate on a later
        # day, its earliest end. An exam with neither can only stay unplaced.
        alive: list[int] = []
        ends: dict[int, int] = {}
        later_at: dict[int, int] = {}
        dead = 0
        for j in todo:
            lst = cur.get(j)
            fs = flat_s[j]
            at = bisect_left(fs, max(thr[j], tomorrow))
            if not lst and at == len(fs):
                dead += 1
                continue
            alive.append(j)
            e = min(x.e for x in lst) if lst else _NEVER
            if at < len(fs):
                later_at[j] = at
                e = min(e, fs[at] + min_dur[j])
            ends[j] = e
        # Pairs bound by a long gap that no longer fit both: one of each stays unplaced (a matching,
        # so each counts once). The bounds below are about the other exams only ("core").
        stuck: set[int] = set()
        for a, b, sep in self.far:
            if (
                a in ends
                and b in ends
                and a not in stuck
                and b not in stuck
                and ends[a] + sep + min_dur[b] > self.max_end[b]
                and ends[b] + sep + min_dur[a] > self.max_end[a]
            ):
                stuck.update((a, b))
        uu = u + dead + len(stuck) // 2
        counted = stuck | {j for j in todo if j not in ends}  # already counted in uu, or half-counted
        core = [j for j in alive if j not in stuck]
        if d == self.cap[1] and cd >= 0:
            # No more days in this phase: an exam that cannot follow on the current day stays unplaced.
            lost = [j for j in core if j not in cur]
            uu += len(lost)
            counted.update(lost)
            core = [j for j in core if j in cur]
        sum_w = sum(w[j] for j in core)
        sum_dur = sum(min_dur[j] for j in core)
        mask = 0
        for j in core:
            mask |= 1 << j
        new = [j for j in core if j not in cur]
        grow = max((ends[j] - hi for j in core if j in cur), default=0)
        c_lb = max([cmax, *(ends[j] for j in core)])
        for a, b, sep in self.far:
            if a in ends and b in ends and a not in stuck and b not in stuck:
                c_lb = max(c_lb, min(ends[a] + sep + min_dur[b], ends[b] + sep + min_dur[a]))
        # Days: one more when an exam cannot stay on the current day or two exams cannot share a
        # day; two more when those cannot share one later day.
        nd = 0
        if new:
            nd = 1
            if len(new) > 1:
                if any(apart[a][b] for a in new for b in new):
                    nd = 2
                else:
                    common: set[int] | None = None
                    for j in new:
                        first_day = self.flat[j][later_at[j]].day
                        days = {day for day in self.doms0[j] if day >= first_day}
                        common = days if common is None else common & days
                    if not common:
                        nd = 2
        elif len(core) > 1 and any(apart[a][b] for a in core for b in core):
            nd = 1
        runs = self.cover[mask]
        if nd:
            more = max(sum_w - nd * G, sum_dur + T * (runs - 1 - nd))
            lb = (uu, d + nd, (secs + span + more) // 60, c_lb)
        else:
            lb = (uu, d, (secs + span + max(sum_w, grow, sum_dur + T * (runs - 1))) // 60, c_lb)
        if self._bound_cut(lb):
            return
        placed = self.placed
        placed_exam = self.placed_exam
        prefix = self.prefix
        keys = self.keys
        cover = self.cover
        # 1. append an exam to the current day: per resource and length its earliest candidate (packing)
        if cur:
            moves: list[tuple[int, int, int, int, _Item]] = []
            for j, lst in cur.items():
                if j not in ends:
                    continue
                seen: set[tuple[str, int]] = set()  # (resource, duration): the earliest of each
                for x in lst:
                    if self.packed:
                        slot_kind = (x.res, x.e - x.s)
                        if slot_kind in seen:
                            continue
                        seen.add(slot_kind)
                    moves.append((x.e - hi, x.s, j, x.idx, x))
            moves.sort(key=_first4)
            for _, _, j, _, x in moves:
                nhi = max(hi, x.e)
                item = (x.s, _slot(x), keys[j])
                mine = mask >> j & 1
                others = max(sum_w - mine * w[j], sum_dur - mine * min_dur[j] + T * (cover[mask & ~(1 << j)] - 1))
                if self._bound_cut((uu, d, (secs + nhi - lo + others) // 60, max(c_lb, x.e)), item):
                    continue
                if self.any_odd and not self._odd_ok(j, x):
                    continue
                if self._loose_first(j, x):
                    continue
                rest = tuple(t for t in todo if t != j)
                # On the last day a phase allows, the exams that lose their place are unplaced.
                child = self._child(j, x, rest, cur, thr, (self.cap[0] - uu, counted) if d == self.cap[1] else None)
                if child is None:
                    continue
                ccur, cthr = child
                placed.append(x)
                placed_exam.append(j)
                prefix.append(item)
                self._dfs(rest, u, secs, max(cmax, x.e), ccur, cthr, cd, lo, nhi, d)
                placed.pop()
                placed_exam.pop()
                prefix.pop()
        # The current day is complete from here on: its day rules must hold.
        if cd >= 0 and not self._day_ok(cd):
            return
        closed = secs + span
        # 2. open a later day with one of the exams first
        if later_at and (uu, d + 1) <= self.cap:
            last = d + 1 == self.cap[1]
            slack = self.cap[0] - uu  # exams that may still be left unplaced within the phase
            fresh = 2 if any(apart[a][b] for a in core for b in core) else 1  # new days needed
            more = max(sum_w - fresh * G, sum_dur + T * (runs - fresh))
            doms0 = self.doms0
            midnight = self.midnight
            for day in self.day_order:
                if day <= cd:
                    continue
                there = [j for j in alive if day in doms0[j] and doms0[j][day][-1].s >= thr[j]]
                if not there:
                    continue
                # Earliest end of each exam on or after that day; those with nothing left then stay
                # unplaced.
                c_day = c_lb
                first_end: dict[int, int] = {}
                gone = 0
                for j in core:
                    fs = flat_s[j]
                    at = bisect_left(fs, max(thr[j], midnight[day]))
                    if at == len(fs):
                        gone += 1
                    else:
                        first_end[j] = fs[at] + min_dur[j]
                if gone:
                    day_lb = (uu + gone, d + 1, closed // 60, cmax)
                else:
                    for j in core:
                        c_day = max(c_day, first_end[j])
                    for a, b, sep in self.far:
                        if a in first_end and b in first_end:
                            c_day = max(c_day, min(first_end[a] + sep + min_dur[b], first_end[b] + sep + min_dur[a]))
                    day_lb = (uu, d + fresh, (closed + more) // 60, c_day)
                if self._bound_cut(day_lb):
                    continue
                if gone:
                    c_day = cmax
                if last:
                    # The last day of the phase: every exam left must fit on it, or stay unplaced.
                    here_core = [j for j in there if j not in stuck]
                    missing = len(core) - len(here_core)
                    if missing > slack or (missing == slack and any(apart[a][b] for a in here_core for b in here_core)):
                        continue
                base = {j: doms0[j][day] for j in alive if day in doms0[j]}
                firsts = sorted(
                    ((x.s, j, x.idx, x) for j in there for x in doms0[j][day] if x.s >= thr[j]), key=_first3
                )
                for s, j, _, x in firsts:
                    item = (s, _slot(x), keys[j])
                    if gone:
                        lb = (uu + gone, d + 1, (closed + x.e - x.s) // 60, max(cmax, x.e))
                    else:
                        mine = mask >> j & 1
                        others = max(
                            sum_w - mine * w[j] - (fresh - 1) * G,
                            sum_dur - mine * min_dur[j] + T * (cover[mask & ~(1 << j)] - fresh),
                        )
                        lb = (uu, d + fresh, (closed + x.e - x.s + others) // 60, max(c_day, x.e))
                    if self._bound_cut(lb, item):
                        continue
                    if self.any_odd and not self._odd_ok(j, x):
                        continue
                    if self.first_decides and not self._first_ok(x):
                        continue
                    rest = tuple(t for t in todo if t != j)
                    child = self._child(j, x, rest, base, thr, (slack, counted) if last else None)
                    if child is None:
                        continue
                    ccur, cthr = child
                    placed.append(x)
                    placed_exam.append(j)
                    prefix.append(item)
                    self._dfs(rest, u, closed, max(cmax, x.e), ccur, cthr, day, x.s, x.e, d + 1)
                    placed.pop()
                    placed_exam.pop()
                    prefix.pop()
        # 3. stop: the exams left are unplaced
        self._leaf(u + len(todo), closed, cmax, d)

    def empty_score(self) -> Score:
        return (len(self.request.exams), 0, 0, 0, (), tuple(sorted(pe.key for pe in self.request.exams)))

    def _leaf(self, u: int, secs: int, cmax: int, d: int) -> None:
        if self._bound_cut((u, d, secs // 60, cmax)):
            return
        placed_keys = {c.key for c in self.placed}
        unplaced = [pe.key for pe in self.request.exams if pe.key not in placed_keys]
        score: Score = (u, d, secs // 60, cmax, tuple(self.prefix), tuple(sorted(unplaced)))
        signature = frozenset((c.key, c.s) for c in self.placed)
        self.top.offer(score, signature, tuple(self.placed))
        if self.diving:
            raise _Found


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
            gap = max(gap, int(prm.min_hours * 3600))
    return gap


def _clique(apart: list[list[bool]]) -> int:
    """The largest set of exams that pairwise can never share a day (a lower bound on the days)."""
    n = len(apart)
    best = 1 if n else 0
    for mask in range(1, 1 << n):
        members = [j for j in range(n) if mask >> j & 1]
        if len(members) > best and all(apart[a][b] for a in members for b in members if a != b):
            best = len(members)
    return best


def _first3(t: tuple[int, int, int, _Item]) -> tuple[int, int, int]:
    return t[0], t[1], t[2]


def _first4(t: tuple[int, int, int, int, _Item]) -> tuple[int, int, int, int]:
    return t[0], t[1], t[2], t[3]


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


# -- plans and their explanations -----------------------------------------------------------------


def _items_of(snapshot: Iterable[_Item | None]) -> list[_Item]:
    return sorted((c for c in snapshot if c is not None), key=lambda c: (c.s, c.key))


def _build_plan(
    request: PlanRequest,
    checker: Checker,
    oracle: _Oracle,
    local: _Local,
    prep: _Prepared,
    domains: list[list[_Item]],
    chosen: list[_Item],
    complete: bool = True,
) -> Plan:
    names = request.resource_names
    items = [
        PlanItem(c.key, c.exam.code, c.exam.name, _slot(c), c.placed.resource_id, c.placed.campus_id, c.s, c.e)
        for c in chosen
    ]
    placed_keys = {c.key for c in chosen}
    by_day: dict[date, list[_Item]] = {}
    for c in chosen:
        by_day.setdefault(date.fromordinal(c.day), []).append(c)
    days = sorted(by_day)
    secs = sum(max(c.e for c in v) - min(c.s for c in v) for v in by_day.values())

    unplaced: list[Unplaced] = []
    for i, pe in enumerate(request.exams):
        if pe.key in placed_keys:
            continue
        why = prep.fixed.get(i) or _why_unplaced(checker, oracle, domains[i], chosen, prep, complete)
        unplaced.append(Unplaced(pe.key, pe.exam.code, pe.exam.name, list(why.reasons), list(why.rule_ids)))

    explanation: list[str] = []
    if days:
        parts = [
            f"{_mdw(d)} {local.hm(min(c.s for c in by_day[d]))}–{local.hm(max(c.e for c in by_day[d]))}" for d in days
        ]
        explanation.append(f"共需来院{len(days)}天：" + "；".join(parts) + f"，在院合计约{secs // 60}分钟。")
    else:
        explanation.append("本次所有检查均无法安排。")
    if request.preferences != Preferences():
        explanation.append(f"已按患者偏好安排：{_describe_prefs(request.preferences)}。")
    existing_by_day: dict[date, list[Placed]] = {}
    for x in prep.existing:
        existing_by_day.setdefault(date.fromordinal(x.day), []).append(x.placed)
    for d in days:
        steps: list[tuple[int, str]] = [
            (c.s, f"{local.hm(c.s)} {c.exam.name}（{names.get(c.placed.resource_id, c.placed.resource_id)}）")
            for c in by_day[d]
        ]
        steps += [(p.starts_at, f"{local.hm(p.starts_at)} {p.exam.name}（已预约）") for p in existing_by_day.get(d, [])]
        steps.sort(key=lambda t: t[0])
        explanation.append(f"{_md(d)}：" + " → ".join(text for _, text in steps))
    explanation += _reasons_for_order(checker, local, chosen, prep.existing)
    if unplaced:
        explanation.append(
            "其余检查无法安排：" + "；".join(f"{u.exam_name}（{'；'.join(u.reasons)}）" for u in unplaced) + "。"
        )

    preparation: list[str] = []
    seen: set[str] = set()
    for c in chosen:
        if c.exam.prep_text and c.exam.code not in seen:
            seen.add(c.exam.code)
            preparation.append(f"{c.exam.name}：{c.exam.prep_text}")
    preparation += checker.notices(c.exam for c in chosen)

    return Plan(
        items=items,
        unplaced=unplaced,
        days=days,
        visit_days=len(days),
        minutes_in_hospital=secs // 60,
        completes_at=max((c.e for c in chosen), default=0),
        explanation=explanation,
        preparation=preparation,
    )


def _moved(p: Placed, starts_at: int) -> Placed:
    return msgspec.structs.replace(p, starts_at=starts_at, ends_at=starts_at + (p.ends_at - p.starts_at))


def _fmt_gap(seconds: int) -> str:
    if seconds >= 86400:
        return f"约{round(seconds / 86400)}天"
    hours, rest = divmod(seconds // 60, 60)
    return f"{hours}小时{rest}分钟" if hours and rest else (f"{hours}小时" if hours else f"{rest}分钟")


def _reasons_for_order(checker: Checker, local: _Local, chosen: list[_Item], existing: list[_Item]) -> list[str]:
    """Which rules shaped the plan: for each pair, the rules the swapped order (same-day order,
    fasting first) or a tighter gap (min gap, travel between campuses) would break."""
    out: list[str] = []
    seen: set[str] = set()

    def say(text: str) -> None:
        if text not in seen:
            seen.add(text)
            out.append(text)

    schedule = sorted([*chosen, *existing], key=lambda c: (c.s, c.key))
    for n, p in enumerate(schedule):
        for q in schedule[n + 1 :]:
            if p.pos < 0 and q.pos < 0:
                continue
            if p.day == q.day:
                swapped = checker.pair(_moved(p.placed, q.s), _moved(q.placed, p.s))
                for v in swapped:
                    if v.kind in ("same_day_order", "time_of_day"):
                        say(f"检查顺序：{v.message}。")
            # A min gap shaped the plan when one day less between the two would break it (and, across
            # days, when it asks for more than a day).
            closer = {v.rule_id for v in checker.pair(p.placed, _moved(q.placed, max(p.e, q.s - 86400)))}
            if p.day != q.day:
                closer &= {v.rule_id for v in checker.pair(p.placed, _moved(q.placed, p.e + 86400))}
            tight = _moved(q.placed, p.e)
            for v in checker.pair(p.placed, tight):
                if v.kind == "min_gap" and v.rule_id in closer:
                    gap = _fmt_gap(q.s - p.e)
                    if p.pos < 0:
                        say(
                            f"时间间隔：{v.message}（已预约的{p.exam.name}在{_md(date.fromordinal(p.day))}，"
                            f"本方案间隔{gap}）。"
                        )
                    else:
                        say(f"时间间隔：{v.message}（本方案间隔{gap}）。")
                elif v.kind == "travel_gap" and q is schedule[n + 1] and p.placed.campus_id != q.placed.campus_id:
                    say(f"院区间转移：{v.message}（本方案在{local.hm(p.e)}–{local.hm(q.s)}之间转移）。")
    return out


def _why_unplaced(
    checker: Checker, oracle: _Oracle, domain: list[_Item], chosen: list[_Item], prep: _Prepared, complete: bool
) -> _Why:
    """Why an exam that had candidates was left out: the obstacles (rules, overlaps) that every one
    of its candidates meets, else all of them (at most three)."""
    keys = {p.key for p in chosen}
    per_candidate: list[dict[str, tuple[str, str | None]]] = []
    free = False
    for c in domain:
        seen: dict[str, tuple[str, str | None]] = {}
        for x in prep.existing:
            if c.s < x.e and x.s < c.e:
                seen.setdefault("overlap-existing", ("可选时段与患者已有的预约时间重叠", None))
            for v in oracle.conflicts(c, x):
                seen.setdefault(v.rule_id, (v.message, v.rule_id))
        for p in chosen:
            if c.s < p.e and p.s < c.e:
                seen.setdefault("overlap-plan", ("可选时段与本方案中其他检查的时间重叠", None))
            for v in oracle.conflicts(c, p):
                seen.setdefault(v.rule_id, (v.message, v.rule_id))
        if not seen:
            day = [x.placed for x in prep.existing if x.day == c.day] + [p.placed for p in chosen if p.day == c.day]
            for v in checker.day([*day, c.placed]):
                if set(v.keys) & (keys | {c.key}):
                    seen.setdefault(v.rule_id, (v.message, v.rule_id))
        if seen:
            per_candidate.append(seen)
        else:
            free = True
    why = _Why()
    if free or not per_candidate:
        why.add(
            "本方案未安排该检查，可另行单独预约"
            if complete
            else "计算步数已达上限，未能为该检查找到时段，请重试或人工预约"
        )
        return why
    common = [k for k in per_candidate[0] if all(k in seen for seen in per_candidate)]
    chosen_keys = common or list(dict.fromkeys(k for seen in per_candidate for k in seen))[:3]
    for k in chosen_keys:
        message, rule_id = next(seen[k] for seen in per_candidate if k in seen)
        why.add(message, rule_id)
    return why


# -- entry points ---------------------------------------------------------------------------------


def _against_existing(prep: _Prepared, oracle: _Oracle) -> list[list[_Item]]:
    """Drop candidates that break a pair rule with, or overlap, an existing appointment (they can
    never be part of a valid plan); an exam left with none becomes unplaced, with the reasons."""
    if not prep.existing:
        return prep.domains
    out: list[list[_Item]] = []
    for i, domain in enumerate(prep.domains):
        kept = [c for c in domain if all(oracle.fits(c, x) for x in prep.existing)]
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


def make_plans(request: PlanRequest, checker: Checker) -> PlanResult:
    """The best `request.max_plans` distinct plans, best first (see the module docstring)."""
    oracle = _Oracle(checker)
    local = _Local(checker.tz)
    prep = _prepare(request, checker, oracle, local)
    domains = _against_existing(prep, oracle)
    search = _Search(request, checker, oracle, prep, domains)
    complete = search.run()
    if not search.top.entries:  # stopped before any plan: at least say so, with nothing booked
        search.top.offer(search.empty_score(), frozenset(), ())
    plans = [
        _build_plan(request, checker, oracle, local, prep, domains, _items_of(snapshot), complete)
        for _, _, snapshot in search.top.entries
    ]
    return PlanResult(plans=plans, complete_search=complete, nodes=search.nodes)


def exhaustive_best(request: PlanRequest, checker: Checker) -> Score | None:
    """Brute force, for tests: every combination (each exam: one of its candidates, or unplaced) of
    the SAME pre-filtered, symmetry-reduced candidate sets as `make_plans` (earliest date,
    preferences, reduction, unary rules — but not the existing-appointment filter), each full
    combination checked with `checker.check` and for overlaps; a branch is abandoned only when a
    pair rule (full `checker.pair`) or an overlap already fails, which no later exam can repair, and
    a combination is checked only when it would beat the best so far. No bounds, no dominance.
    Returns the best score, or None when the request has no exams."""
    if not request.exams:
        return None
    oracle = _Oracle(checker)
    local = _Local(checker.tz)
    prep = _prepare(request, checker, oracle, local)
    domains = prep.domains
    existing = list(request.existing)
    n = len(request.exams)
    best: list[Score] = []
    chosen: list[_Item | None] = []

    def clash(c: _Item, other: Placed) -> bool:
        return (c.s < other.ends_at and other.starts_at < c.e) or bool(checker.pair(c.placed, other))

    def rec(i: int) -> None:
        if i == n:
            items = [c for c in chosen if c is not None]
            score = _score_of(items, [request.exams[j].key for j in range(n) if chosen[j] is None])
            if best and score >= best[0]:
                return  # only the best score is wanted: no need to check a worse combination
            if checker.check(existing + [c.placed for c in items], request.facts):
                return
            best[:] = [score]
            return
        for c in domains[i]:
            if any(clash(c, x) for x in existing) or any(p is not None and clash(c, p.placed) for p in chosen):
                continue
            chosen.append(c)
            rec(i + 1)
            chosen.pop()
        chosen.append(None)
        rec(i + 1)
        chosen.pop()

    rec(0)
    return best[0] if best else None


def _score_of(items: Sequence[_Item], unplaced: Sequence[str]) -> Score:
    spans: dict[int, list[int]] = {}
    for c in items:
        span = spans.get(c.day)
        if span is None:
            spans[c.day] = [c.s, c.e]
        else:
            span[0] = min(span[0], c.s)
            span[1] = max(span[1], c.e)
    return (
        len(unplaced),
        len(spans),
        sum(hi - lo for lo, hi in spans.values()) // 60,
        max((c.e for c in items), default=0),
        tuple(sorted((c.s, _slot(c), c.key) for c in items)),
        tuple(sorted(unplaced)),
    )
