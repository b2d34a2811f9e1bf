"""The tables the search reads: the exams still to place (those with candidates), their candidates
by day, the pair relations, the rules turned into numbers, and the lower bounds.

Only for rule tables of the known kinds (see `_KNOWN`) and whole-minute candidate times; the other
requests go to the plain search of `brute.py` (see the package docstring).

Same-day pair rules, as the single-day solver (`day.py`) uses them, with x placed before y:
    * order (`not_before`): a same-day-order rule with y in A and x in B, or a fasting-first
      (`before_others`) rule with y in A and x not in A, forbids x before y whatever the times;
    * min gaps (`after`): y starts at least `after[x][y]` after x ends (on any days);
    * travel gaps: between y and the exam just before it they are checked with `Checker.pair`; a
      travel rule that matches every exam and whose campus matrix obeys the triangle inequality
      then holds between any two exams of the day (the gaps along the chain add up), otherwise
      (`old_check`) y is also checked against every earlier exam the rule matches.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import date, datetime, time
from itertools import accumulate
from operator import attrgetter

from app.planning.catalogue import ExamType
from app.planning.planner.model import PlanRequest
from app.planning.planner.prepare import _gap_after, _Item, _Oracle, _Prepared, _Rel, _separation
from app.planning.rules import Checker, MinGap, Placed, PrepWindow, SameDayOrder, TimeOfDay, TravelGap

INF = 1 << 62


class _Stop(Exception):
    """The node limit is reached."""


def _bits(mask: int) -> tuple[int, ...]:
    return tuple(j for j in range(mask.bit_length()) if mask >> j & 1)


class _Core:
    def __init__(
        self, request: PlanRequest, checker: Checker, oracle: _Oracle, prep: _Prepared, domains: list[list[_Item]]
    ) -> None:
        self.request = request
        self.checker = checker
        self.oracle = oracle
        self.order = [i for i in range(len(request.exams)) if i not in prep.fixed and domains[i]]
        n = self.n = len(self.order)
        self.full = (1 << n) - 1
        self.base_u = len(request.exams) - n
        self.keys = [request.exams[i].key for i in self.order]
        exams = [request.exams[i].exam for i in self.order]
        self.fixed_keys = [pe.key for i, pe in enumerate(request.exams) if i not in self.order]
        self.nodes = 0
        # Per signature of a pair of windows on one day, the offsets (start − start) known not to fit
        # and to fit (see day._Day._next).
        self.fit_offsets: dict[tuple[object, ...], tuple[int, int]] = {}
        self.limit = request.node_limit

        # Candidates: per exam sorted by start, and per exam and day; a global rank for the tie-break.
        j_of = {i: j for j, i in enumerate(self.order)}
        everything = sorted((c for i in self.order for c in domains[i]), key=_rank_key)
        self.items: list[list[_Item]] = [[] for _ in range(n)]
        self.by_day: list[dict[int, list[_Item]]] = [{} for _ in range(n)]
        for r, c in enumerate(everything):
            c.idx = r  # a rank: sorting items by idx sorts them by their tie-break entry
            c.j = j = j_of[c.pos]
            self.items[j].append(c)
            got = self.by_day[j].get(c.day)
            if got is None:
                self.by_day[j][c.day] = [c]
            else:
                got.append(c)
        self.flat_s = [[c.s for c in lst] for lst in self.items]
        self.flat_min_e = [_suffix_min([c.e for c in lst]) for lst in self.items]
        self.days = sorted({d for days in self.by_day for d in days})
        self.midnight: dict[int, int] = {}
        for d in self.days:
            for dd in (d, d + 1):
                if dd not in self.midnight:
                    when = datetime.combine(date.fromordinal(dd), datetime.min.time(), checker.tz)
                    self.midnight[dd] = int(when.timestamp())

        # Pair relations and the rules in numbers.
        tids = [oracle.type_id(e) for e in exams]
        self.rels: list[list[_Rel]] = [[oracle.relation(a, b) for b in tids] for a in tids]
        # The rules of the kinds each pair relation below reads (fewer to go through per pair).
        gap_rules = Checker([r for r in checker.rules if isinstance(r.params, (MinGap, TravelGap))], checker.tz)
        order_rules = Checker([r for r in checker.rules if isinstance(r.params, (SameDayOrder, TimeOfDay))], checker.tz)
        self.after = [[_gap_after(gap_rules, exams[k], exams[j]) if k != j else 0 for j in range(n)] for k in range(n)]
        self.day_gaps = any(any(row) for row in self.after)
        self.after_mask = [sum(1 << j for j in range(n) if self.after[k][j]) for k in range(n)]
        self.not_before = [0] * n  # not_before[y]: the exams that may not come before y on its day
        for x in range(n):
            for y in range(n):
                if x != y and not _order_ok(order_rules, exams[x], exams[y], self.keys[x] != self.keys[y]):
                    self.not_before[y] |= 1 << x
        campuses = sorted({c.campus for lst in self.items for c in lst})
        self.old_check = [[False] * n for _ in range(n)]
        for rule in checker.rules:
            prm = rule.params
            if not isinstance(prm, TravelGap):
                continue
            hit = [rule.spec.a.matches(e) for e in exams]

            def need(x: str, y: str, prm: TravelGap = prm) -> int:
                return Checker.travel_minutes(prm, x, y)

            triangle = all(need(a, c) <= need(a, b) + need(b, c) for a in campuses for b in campuses for c in campuses)
            if all(hit) and triangle:
                continue  # implied along the chain of the day
            for x in range(n):
                for y in range(n):
                    if x != y and hit[x] and hit[y]:
                        self.old_check[x][y] = True
        self.has_old = any(any(row) for row in self.old_check)
        self.old_src = [any(row) for row in self.old_check]

        # Lower bounds: durations and the least gap before an exam that is not the first of its day.
        resources = [{c.res for c in lst} for lst in self.items]
        self.min_dur = [min(c.e - c.s for c in lst) for lst in self.items]
        seps: dict[tuple[int, int, bool], int] = {}

        def separation(x: int, y: int, distinct: bool) -> int:
            k = (tids[x], tids[y], distinct) if tids[x] <= tids[y] else (tids[y], tids[x], distinct)
            got = seps.get(k)
            if got is None:
                got = seps[k] = _separation(gap_rules, exams[x], exams[y], distinct)
            return got

        sep = [[separation(x, y, False) if x != y else 0 for y in range(n)] for x in range(n)]
        share = [[bool(resources[x] & resources[y]) for y in range(n)] for x in range(n)]
        g = []
        for j in range(n):
            gaps = [separation(j, k, not share[j][k]) for k in range(n) if k != j]
            g.append(min((x for x in gaps if x < 86400), default=0))
        self.g = g
        # The least gap from the end of k to the start of j when j directly follows k on a day on
        # another resource: the travel and min gaps (for the relaxed DP of relax.py; on the same
        # resource only the min gap, after[k][j], applies).
        self.gd = [[max(separation(k, j, True), self.after[k][j]) if k != j else 0 for j in range(n)] for k in range(n)]
        size = 1 << n
        self.pop = [bin(m).count("1") for m in range(size)]
        self.bits = [_bits(m) for m in range(size)]
        self.sum_w = [sum(self.min_dur[j] + g[j] for j in self.bits[m]) for m in range(size)]
        self.lbspan = [self.sum_w[m] - max((g[j] for j in self.bits[m]), default=0) for m in range(size)]
        self.g_min = [min((g[j] for j in self.bits[m]), default=0) for m in range(size)]
        self.durs = [sorted(self.min_dur[j] for j in self.bits[m]) for m in range(size)]
        # The least span of a day holding two exams that a min gap keeps apart on it (in the orders
        # the order rules allow): per set, the largest over its pairs.
        pair_span = [[0] * n for _ in range(n)]
        for x in range(n):
            for y in range(x + 1, n):
                if self.after[x][y] or self.after[y][x]:
                    both = self.min_dur[x] + self.min_dur[y]
                    orders = [both + self.after[a][b] for a, b in ((x, y), (y, x)) if not self.not_before[b] >> a & 1]
                    pair_span[x][y] = pair_span[y][x] = min(orders, default=INF)
        self.apart_pairs = [(x, y) for x in range(n) for y in range(x + 1, n) if self.after[x][y] and self.after[y][x]]
        self.pair_span = [0] * size
        for m in range(1, size):
            low = (m & -m).bit_length() - 1
            rest = m & (m - 1)
            self.pair_span[m] = max(self.pair_span[rest], *(pair_span[low][j] for j in self.bits[rest]), 0)
        self.nb_union = [0] * size
        for m in range(1, size):
            low = (m & -m).bit_length() - 1
            self.nb_union[m] = self.nb_union[m & (m - 1)] | self.not_before[low]

        # Exams that cannot share a given day (both orders forbidden, or a min gap binding both orders
        # that the day has no room for), and exams that can share no day at all.
        self.day_bad: dict[int, list[int]] = {}
        first_end = [{d: min(c.e for c in lst) for d, lst in days.items()} for days in self.by_day]
        last_start = [{d: lst[-1].s for d, lst in days.items()} for days in self.by_day]  # sorted by start
        for d in self.days:
            bad = [0] * n
            for x in range(n):
                if d not in first_end[x]:
                    continue
                for y in range(x + 1, n):
                    if d not in first_end[y]:
                        continue
                    never = self.not_before[y] >> x & 1 and self.not_before[x] >> y & 1
                    s = sep[x][y]
                    if never or (
                        s > 0 and first_end[x][d] + s > last_start[y][d] and first_end[y][d] + s > last_start[x][d]
                    ):
                        bad[x] |= 1 << y
                        bad[y] |= 1 << x
            self.day_bad[d] = bad
        self.apart = [[False] * n for _ in range(n)]
        for x in range(n):
            for y in range(n):
                if x != y:
                    common = self.by_day[x].keys() & self.by_day[y].keys()
                    self.apart[x][y] = all(self.day_bad[d][x] >> y & 1 for d in common)
        prep_rules = [r for r in checker.rules if isinstance(r.params, PrepWindow)]
        self.prep_check = Checker(prep_rules, checker.tz) if prep_rules else None  # the first exam of a day
        self.prep_mask = sum(1 << j for j in range(n) if any(r.spec.a.matches(exams[j]) for r in prep_rules))
        self.prep_windows = [r.params for r in prep_rules if isinstance(r.params, PrepWindow)]
        self.existing_by_day: dict[int, list[Placed]] = {}
        for e in prep.existing:
            self.existing_by_day.setdefault(e.day, []).append(e.placed)

    def tick(self) -> None:
        self.nodes += 1
        if self.nodes > self.limit:
            raise _Stop

    def prep_until(self, day: int) -> int:
        """The instant of the day from which on no preparation window applies (`Checker.day`)."""
        out = 0
        for prm in self.prep_windows:
            opening = datetime.combine(date.fromordinal(day), time.fromisoformat(prm.day_start), self.checker.tz)
            out = max(out, int(opening.timestamp()) + prm.prep_minutes * 60)
        return out

    def lbrest(self, rest: int, m: int, blocks: int) -> int:
        """Least time in hospital (s) to place m exams of `rest` on `blocks` more days."""
        if m <= 0:
            return 0
        return sum(self.durs[rest][:m]) + max(0, m - blocks) * self.g_min[rest]

    def later_end(self, rest: int, m: int, day: int, thr: tuple[int, ...]) -> int:
        """Least completion when m exams of `rest` are placed after `day` (INF: they cannot be).
        When they all are, two of them that a min gap keeps apart in both orders end no earlier
        than the later of the two, its least start after the other's least end and the gap."""
        if m <= 0:
            return 0
        start = self.midnight[day + 1]
        ends = []
        least = {}
        for j in self.bits[rest]:
            fs = self.flat_s[j]
            k = bisect_left(fs, max(thr[j], start))
            least[j] = e = self.flat_min_e[j][k] if k < len(fs) else INF
            ends.append(e)
        ends.sort()
        end = ends[m - 1]
        if m == self.pop[rest] and end < INF:
            after = self.after
            for x, y in self.apart_pairs:
                if rest >> x & 1 and rest >> y & 1:
                    end = max(
                        end, min(self._end_after(y, least[x] + after[x][y]), self._end_after(x, least[y] + after[y][x]))
                    )
        return end

    def _end_after(self, j: int, t: int) -> int:
        """The least end of exam j's candidates that start at t or later (INF: none)."""
        fs = self.flat_s[j]
        k = bisect_left(fs, t)
        return self.flat_min_e[j][k] if k < len(fs) else INF

    def least_unplaced(self) -> int:
        """A lower bound on the exams left out: two exams that no plan can hold both (no day they
        may share, and no candidates far enough apart for the min gaps across days) need one of
        them left out; the fewest exams that meet every such pair (a vertex cover)."""
        n = self.n
        edges = []
        for x in range(n):
            for y in range(x + 1, n):
                if not self.apart[x][y] or self._apart_ok(x, y) or self._apart_ok(y, x):
                    continue
                edges.append((1 << x) | (1 << y))
        if not edges:
            return 0
        return min(self.pop[c] for c in range(1 << n) if all(c & e for e in edges))

    def _apart_ok(self, x: int, y: int) -> bool:
        """Whether some candidate of y may start on a later day than one of x, after its min gap."""
        first = self.items[x][0]
        need = max(self.flat_min_e[x][0] + self.after[x][y], self.midnight[first.day + 1])
        return self.flat_s[y][-1] >= need

    def clique(self) -> int:
        """The largest set of exams that pairwise share no day (a lower bound on the visit days)."""
        best = 1 if self.n else 0
        for mask in range(1, 1 << self.n):
            members = self.bits[mask]
            if len(members) > best and all(self.apart[a][b] for a in members for b in members if a != b):
                best = len(members)
        return best


def _order_ok(checker: Checker, x: ExamType, y: ExamType, distinct: bool) -> bool:
    """Whether an exam of type x may come before one of type y on the same day (order rules only,
    as `Checker.pair` reads them)."""
    for rule in checker.rules:
        prm, a, b = rule.params, rule.spec.a, rule.spec.b
        if isinstance(prm, SameDayOrder) and b is not None and distinct and a.matches(y) and b.matches(x):
            return False
        if isinstance(prm, TimeOfDay) and prm.before_others and a.matches(y) and not a.matches(x):
            return False
    return True


# The tie-break entry (start, slot id, key), then the rest: a total order of the candidates.
_rank_key = attrgetter("tb", "e", "res", "campus")


def _suffix_min(values: list[int]) -> list[int]:
    return [*accumulate(reversed(values), min)][::-1]
