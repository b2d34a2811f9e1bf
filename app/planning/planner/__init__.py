"""The smart booking planner (智能预约): puts a patient's pending exams into as few visit days as
possible, then the shortest time in hospital, then the earliest completion — respecting every rule
of the hospital's rule table — and explains each plan in Chinese words a clerk can read out.

Pure: no I/O. The caller gives the exams, the open slots each can take (already filtered for
capacity and channel), the patient's other appointments and facts; it gets up to `max_plans`
plans, best first, each on a different assignment of exams to days.

Objective (lexicographic, see `plan_score`)
    1. fewest unplaced exams, 2. fewest visit days (患者少跑路), 3. least time in hospital (sum over
    visit days of last end − first start, in seconds, then whole minutes), 4. earliest completion,
    5. a deterministic tie-break on the items' (start, slot id, key). Same input, same output.

Feasibility
    A plan satisfies EVERY rule, 'block' and 'warn' alike:
    ``checker.check(existing + items as Placed(proposed=True), facts) == []``, and no two exams of the
    patient (plan items and existing appointments) overlap in time.

Modules
    prepare.py   candidates: earliest date, preferences, symmetry reduction, unary rules, existing
                 appointments; the memoised pair oracle.
    core.py      the rules in numbers for the search, lower bounds.
    relax.py     lower bounds of a day's schedules: cheap bounds and a relaxed DP, tabulated per day.
    day.py       the single-day problem: the best schedule of a set of exams on one day (packing,
                 branch and bound with memoised suffixes).
    search.py    across days: phases on (unplaced, days), blocks (day, exams) in chronological order,
                 min gaps across days through per-exam least starts and Pareto sets, top K.
    explain.py   the plans in Chinese: days, steps, the rules that shaped them, why an exam is left
                 out, the preparation list.
    brute.py     `exhaustive_best` (the brute force of the tests) and the plain search used when the
                 decomposition does not apply.

Exactness
    When the search completes (`complete_search`), the first plan is the optimum over the same
    pre-filtered, symmetry-reduced candidate sets `exhaustive_best` searches, and each plan is the
    best one of its assignment. The decomposition by days relies on the rule kinds rules.py knows
    and on candidate times in whole minutes (so that the minutes of the days add up); with a rule of
    another kind, or a time with seconds, the plain search of brute.py runs instead (exact, but only
    practical for small requests: `node_limit` stops it).

Alternatives (`max_plans`)
    The best plans whose *assignment of exams to days* — the set of (exam, local day) pairs —
    differ, among those that place as many exams as the best plan: for a patient, a plan that only
    shifts an exam within the same morning is no real alternative, and one that books fewer exams is
    no offer; another day, or another split of the exams over the days, is. Each is the best plan
    of its assignment; they are sorted by score (so there may be fewer than `max_plans`).

`node_limit` bounds the work: one unit per search node across days, per first exam tried on a day
and per single-day state expanded. When it is reached the best plans found so far are returned with
`complete_search=False` (nothing booked at worst).
"""

from __future__ import annotations

from app.planning.planner.brute import _plain_search, exhaustive_best
from app.planning.planner.core import _Core
from app.planning.planner.explain import _build_plan, _items_of
from app.planning.planner.model import (
    Candidate,
    Plan,
    PlanExam,
    PlanItem,
    PlanRequest,
    PlanResult,
    Preferences,
    Score,
    Unplaced,
    plan_score,
)
from app.planning.planner.prepare import _KNOWN, _against_existing, _Local, _Oracle, _prepare
from app.planning.planner.search import _Search
from app.planning.rules import Checker

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


def make_plans(request: PlanRequest, checker: Checker) -> PlanResult:
    """The best `request.max_plans` plans on distinct assignments, best first (see above)."""
    oracle = _Oracle(checker)
    local = _Local(checker.tz)
    prep = _prepare(request, checker, oracle, local)
    domains = _against_existing(prep, oracle)
    known = all(isinstance(r.params, _KNOWN) for r in checker.rules)
    minutes = all(c.s % 60 == 0 and c.e % 60 == 0 for domain in domains for c in domain)
    if known and minutes:
        core = _Core(request, checker, oracle, prep, domains)
        search = _Search(core, request.max_plans)
        complete = search.run()
        entries = [(score, items) for score, _, items in search.top.entries]
        nodes = core.nodes
    else:
        entries, complete, nodes = _plain_search(request, checker, oracle, prep, domains)
    if not entries:  # stopped before any plan: at least say so, with nothing booked
        entries = [((len(request.exams), 0, 0, 0, (), tuple(sorted(pe.key for pe in request.exams))), ())]
    plans = [
        _build_plan(request, checker, oracle, local, prep, domains, _items_of(items), complete) for _, items in entries
    ]
    return PlanResult(plans=plans, complete_search=complete, nodes=nodes)
