"""Brute force: `exhaustive_best`, which the tests compare the planner with, and the plain search
`make_plans` falls back on when the decomposition by days does not apply (a rule of a kind rules.py
does not know, or candidate times with seconds)."""

from __future__ import annotations

from collections.abc import Sequence

from app.planning.planner.model import PlanRequest, Score
from app.planning.planner.prepare import _Item, _Local, _Oracle, _prepare, _Prepared, _slot
from app.planning.planner.search import _Top
from app.planning.rules import Checker, Placed


class _Limit(Exception):
    pass


def _plain_search(
    request: PlanRequest, checker: Checker, oracle: _Oracle, prep: _Prepared, domains: list[list[_Item]]
) -> tuple[list[tuple[Score, tuple[_Item, ...]]], bool, int]:
    """Every combination (each exam: one of its candidates, or unplaced), abandoning a branch when
    two exams overlap or break a pair rule (`_Oracle.fits`, exact for any rule kind) or when it
    already leaves out more exams than the K-th best plan; each full combination is checked with
    `checker.check`. Returns the K best plans on distinct assignments, whether the search finished,
    and the nodes visited (one per partial combination; `node_limit` stops it)."""
    top = _Top(request.max_plans)
    existing = list(request.existing)
    n = len(request.exams)
    chosen: list[_Item] = []
    nodes = [0]

    def rec(i: int, left_out: int) -> None:
        nodes[0] += 1
        if nodes[0] > request.node_limit:
            raise _Limit
        if top.kth is not None and left_out > top.kth[0]:
            return
        if i == n:
            placed = {c.key for c in chosen}
            score = _score_of(chosen, [pe.key for pe in request.exams if pe.key not in placed])
            if not checker.check(existing + [c.placed for c in chosen], request.facts):
                top.offer(score, frozenset((c.key, c.day) for c in chosen), tuple(chosen))
            return
        for c in domains[i] if i not in prep.fixed else ():
            if all(oracle.fits(c, p) for p in chosen):
                chosen.append(c)
                rec(i + 1, left_out)
                chosen.pop()
        rec(i + 1, left_out + 1)

    try:
        rec(0, 0)
        complete = True
    except _Limit:
        complete = False
    return [(score, items) for score, _, items in top.entries], complete, nodes[0]


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
