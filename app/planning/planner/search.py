"""The search across days: which exams go on which day (see the package docstring).

A plan is a chronological list of blocks (day, set of exams), each scheduled on its own by
`day._Day.solve`; the exams in no block are unplaced. For a fixed assignment of exams to days the
score decomposes: the time in hospital is the sum of the days' spans, the completion is the last
day's end, the tie-break sequence is the days' sequences one after the other. So, days being
independent, the best plan of an assignment is made of each day's best schedule.

Days are coupled by min gaps across days (from an exam k to a later exam j: j starts at least
after[k][j] after k ends). The blocks are chosen in chronological order, so an earlier block sets
per-exam least starts for the later ones. To stay exact, a block whose exams are sources of such
gaps towards exams still to place offers not only its best schedule but every schedule that cuts
fewer candidates of some later exam (a Pareto set over the span and tie-break on one side and, per
(source, target), the number of the target's candidates on later days its end rules out on the
other, see `_labels`); a dominated schedule can be swapped for one that dominates it in any plan.

Phases on (unplaced, visit days) in lexicographic order, i.e. on the score's first two keys: each
phase searches the plans with exactly that many exams left out and days, by depth-first branch and
bound over blocks, children best-first by a lower bound (time in hospital and completion), each
pruned once its bound exceeds the K-th best plan known (first four keys, then the tie-break
prefix). The bounds are lazy: a child enters a heap with the cheap `bounds` of its block and of
the exams left; when it reaches the front, the relaxed DP of relax.py (for the block, and for the
exams left when they all go on one later day) replaces them, and it goes back in if they grew.
Any lower bound keeps the search exact; the tighter ones only cut more. With the K-th best plan
known, a block is solved within the minutes that can still enter (fewer when its completion bound
is already later than that plan's), and a child whose bounds and prefix tie with that plan is cut
when its block cannot start before that plan's next item (`_Top.tied_next`). After
a phase that leaves K plans known, every later phase is worse: the search is complete.

Alternatives: the K best *assignments* (the set of (exam, day) pairs) that place as many exams as
the best plan, each with its best plan (the phases stop after the first number of unplaced exams
that has a plan). A pruned branch can hold no plan better than the K-th best known, so the final K
entries are exact.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from heapq import heappop, heappush

from app.planning.planner.core import INF, _Core, _Stop
from app.planning.planner.day import _Day, _Label
from app.planning.planner.model import Score
from app.planning.planner.prepare import _Item

_Sig = frozenset[tuple[str, int]]


class _Top:
    """The best K plans found so far, one per assignment of exams to days."""

    def __init__(self, k: int) -> None:
        self.k = max(k, 1)
        self.entries: list[tuple[Score, _Sig, tuple[_Item, ...]]] = []
        self.kth: Score | None = None  # the K-th best score once K plans are known

    def offer(self, score: Score, sig: _Sig, items: tuple[_Item, ...]) -> None:
        for n, (old, s, _) in enumerate(self.entries):
            if s == sig:
                if score < old:
                    self.entries[n] = (score, sig, items)
                    self._settle()
                return
        if len(self.entries) >= self.k:
            if score >= self.entries[-1][0]:
                return
            self.entries.pop()
        self.entries.append((score, sig, items))
        self._settle()

    def _settle(self) -> None:
        self.entries.sort(key=lambda t: t[0])
        self.kth = self.entries[-1][0] if len(self.entries) >= self.k else None

    def cut(self, head: tuple[int, int, int, int], prefix: tuple[tuple[int, int, str], ...] = ()) -> bool:
        """Whether a plan with at least these first four keys and this tie-break prefix cannot
        enter the top K."""
        kth = self.kth
        if kth is None:
            return False
        top = (kth[0], kth[1], kth[2], kth[3])
        if head != top:
            return head > top
        return prefix > kth[4][: len(prefix)]

    def tied_next(self, head: tuple[int, int, int, int], prefix: tuple[tuple[int, int, str], ...]) -> int | None:
        """When a plan with these first four keys and this tie-break prefix ties with the K-th best
        plan so far, the start of the K-th best plan's next item: a plan whose next item starts
        later cannot enter the top K (None: no such tie)."""
        kth = self.kth
        if kth is None or head != (kth[0], kth[1], kth[2], kth[3]):
            return None
        seq = kth[4]
        n = len(prefix)
        return seq[n][0] if len(seq) > n and prefix == seq[:n] else None


class _Search:
    def __init__(self, core: _Core, max_plans: int) -> None:
        self.core = core
        self.top = _Top(max_plans)
        self._days: dict[int, _Day] = {}
        self._single: dict[object, list[tuple[int, int]]] = {}  # per (exams, thresholds): later days' bounds
        self._fit_days: dict[object, set[int]] = {}  # the days that can take them all
        self._tight: dict[object, list[tuple[int, int]]] = {}  # the same with the relaxed DP
        self.u = 0
        self.d = 0
        self._kids: dict[object, list[tuple[int, int, int, int, int, int]]] = {}  # see `_node`

    def day(self, d: int) -> _Day:
        got = self._days.get(d)
        if got is None:
            got = self._days[d] = _Day(self.core, d)
        return got

    def run(self) -> bool:
        """Phases on (unplaced, visit days); False when the node limit stopped the search."""
        core = self.core
        n = core.n
        clique = core.clique()
        try:
            for u in range(core.least_unplaced(), n + 1):
                if self.top.entries:
                    return True  # the alternatives place as many exams as the best plan
                m = n - u
                for days in range(max(1, clique - u) if m else 0, m + 1):
                    self.u, self.d = u, days
                    if days == 0:
                        self._leaf(core.full, 0, (), ())
                    else:
                        self._node(-1, core.full, days, m, 0, (0,) * n, (), ())
                    if len(self.top.entries) >= self.top.k:
                        return True
        except _Stop:
            return False
        return True

    def _node(
        self,
        prev: int,
        rest: int,
        left: int,
        m: int,
        secs: int,
        thr: tuple[int, ...],
        blocks: tuple[_Label, ...],
        prefix: tuple[tuple[int, int, str], ...],
    ) -> None:
        """Choose the next block after day `prev`: `left` blocks to place `m` more exams of `rest`."""
        core = self.core
        core.tick()
        top = self.top
        u = core.base_u + self.u
        pop = core.pop
        # Children best first by lower bounds, lazily: the cheap `bounds` first, the relaxed DP of the
        # block once a child comes to the front (it is then put back if its bound grew). The
        # children and their cheap bounds (but for `secs`) are memoised per node key; the list is
        # sorted, so with `secs` added it is a heap.
        ckey = (prev, rest, left, m, tuple([thr[j] for j in core.bits[rest]]))
        kids = self._kids.get(ckey)
        if kids is None:
            kids = self._kids[ckey] = self._children(prev, rest, left, m, thr)
        d_ = self.d
        heap = [
            (lb3 + secs, lb4, 0, d, mask, rest_lb, span_lb)
            for lb3, lb4, d, mask, rest_lb, span_lb in kids
            if not top.cut((u, d_, (lb3 + secs) // 60, lb4), prefix)
        ]
        while heap:
            lb3, lb4, tight, d, mask, rest_lb, span_lb = heappop(heap)
            head = (u, self.d, lb3 // 60, lb4)
            if top.cut(head, prefix):
                continue
            tied = top.tied_next(head, prefix)
            if tied is not None and self.day(d).first_start(mask, thr) > tied:
                continue  # ties with the K-th best plan up to here, then starts later
            if not tight:
                span2, end2 = self.day(d).relaxed(mask, thr)
                if end2 >= INF:
                    continue
                if left == 1:
                    rest2, lb4b = 0, max(lb4, end2)
                else:
                    rest2, lb4b = self._later(rest & ~mask, m - pop[mask], left - 1, d, thr, True)
                    if lb4b >= INF:
                        continue
                    rest2, lb4b = max(rest2, rest_lb), max(lb4b, lb4)
                lb3b = secs + max(span_lb, span2) + rest2
                if (lb3b, lb4b) != (lb3, lb4):
                    heappush(heap, (lb3b, lb4b, 1, d, mask, rest2, span_lb))
                    continue
            size = pop[mask]
            others = rest & ~mask
            kth = top.kth
            if kth is None or kth[:2] != (u, self.d):
                allowance = INF
            else:
                # As many minutes as the K-th best plan at most; fewer when it also completes earlier.
                allowance = kth[2] * 60 + (59 if lb4 <= kth[3] else -1) - secs - rest_lb
            for lab in self._labels(self.day(d), mask, thr, others, allowance):
                total = secs + lab.span
                head = (u, self.d, (total + rest_lb) // 60, lab.end if left == 1 else lb4)
                seq = prefix + lab.seq
                if top.cut(head, seq):
                    continue
                if left == 1:
                    self._leaf(others, total, (*blocks, lab), seq)
                    continue
                thr2 = list(thr)
                after = core.after
                for c in lab.items:
                    row = after[c.j]
                    for j in core.bits[others]:
                        if row[j] and c.e + row[j] > thr2[j]:
                            thr2[j] = c.e + row[j]
                self._node(d, others, left - 1, m - size, total, tuple(thr2), (*blocks, lab), seq)

    def _children(
        self, prev: int, rest: int, left: int, m: int, thr: tuple[int, ...]
    ) -> list[tuple[int, int, int, int, int, int]]:
        """The blocks (day, exams) that may come next in `_node`, with the cheap lower bounds of the
        time in hospital from here (block and exams left) and of the completion, sorted."""
        core = self.core
        pop = core.pop
        out: list[tuple[int, int, int, int, int, int]] = []
        whole = left == 1 and m == pop[rest]
        keys: dict[int, object] = {}  # per set of exams left after a block: its `_later` key
        top_thr = max([thr[j] for j in core.bits[rest]], default=0)
        for d in core.days:
            if d <= prev:
                continue
            day = self.day(d)
            bounds = day.bounds_free if top_thr <= day.t0 else day.bounds
            avail = day.available(rest, thr)
            # When the last block takes all the exams left, it is the only mask to try.
            sub = (avail if avail == rest else 0) if whole else avail
            while sub:
                mask = sub
                sub = 0 if whole else (sub - 1) & avail
                size = pop[mask]
                if (size != m) if left == 1 else (size > m - left + 1):
                    continue
                if not day.pair_ok(mask):
                    continue
                span_lb, end_lb = bounds(mask, thr)
                if end_lb >= INF:
                    continue
                if left == 1:
                    rest_lb, lb4 = 0, end_lb
                else:
                    others = rest & ~mask
                    key = keys.get(others)
                    if key is None:
                        key = keys[others] = self._later_key(others, thr)
                    rest_lb, lb4 = self._later(others, m - size, left - 1, d, thr, False, key)
                if lb4 < INF:
                    out.append((span_lb + rest_lb, lb4, d, mask, rest_lb, span_lb))
        out.sort()
        return out

    def _later(
        self, others: int, m: int, blocks: int, d: int, thr: tuple[int, ...], tight: bool, key: object = None
    ) -> tuple[int, int]:
        """Least time in hospital (s) and least completion for placing m exams of `others` on
        `blocks` days after day d (INF: impossible). When they all go on one day, the least over
        the later days that can take them all of that day's `bounds` or, when `tight`, of its
        relaxed DP (both memoised per exams and thresholds, for every day)."""
        core = self.core
        if not (blocks == 1 and m == core.pop[others]):
            return core.lbrest(others, m, blocks), core.later_end(others, m, d, thr)
        if key is None:
            key = self._later_key(others, thr)
        cheap = self._single.get(key)
        if cheap is None:
            # Per day: its bounds when it can take them all, and the least over it and later days.
            days: set[int] = set()
            cheap = [(INF, INF)] * (len(core.days) + 1)
            least_span, least_end = INF, INF
            for i in range(len(core.days) - 1, -1, -1):
                day = self.day(core.days[i])
                if day.available(others, thr) == others and day.pair_ok(others):
                    span, end = day.bounds(others, thr)
                    if end < INF:
                        days.add(core.days[i])
                        least_span, least_end = min(least_span, span), min(least_end, end)
                cheap[i] = (least_span, least_end)
            self._single[key] = cheap
            self._fit_days[key] = days
        if not tight:
            return cheap[bisect_right(core.days, d)]
        tight_days = self._tight.get(key)
        if tight_days is None:
            # Per day: the least relaxed span and end over it and the later days.
            tight_days = [(INF, INF)] * (len(core.days) + 1)
            fit = self._fit_days[key]
            least_span, least_end = INF, INF
            for i in range(len(core.days) - 1, -1, -1):
                if core.days[i] in fit:
                    span, end = self.day(core.days[i]).relaxed(others, thr)
                    least_span, least_end = min(least_span, span), min(least_end, end)
                tight_days[i] = (least_span, least_end)
            self._tight[key] = tight_days
        return tight_days[bisect_right(core.days, d)]

    def _later_key(self, others: int, thr: tuple[int, ...]) -> object:
        """The memo key of `_later`: the exams and their thresholds."""
        if not thr or max(thr) <= 0:
            return others
        return (others, tuple([thr[j] for j in self.core.bits[others]]))

    def _leaf(self, rest: int, secs: int, blocks: tuple[_Label, ...], seq: tuple[tuple[int, int, str], ...]) -> None:
        core = self.core
        items = tuple(c for lab in blocks for c in lab.items)
        unplaced = tuple(sorted([*core.fixed_keys, *(core.keys[j] for j in core.bits[rest])]))
        end = blocks[-1].end if blocks else 0
        score: Score = (core.base_u + self.u, self.d, secs // 60, end, seq, unplaced)
        self.top.offer(score, frozenset((c.key, c.day) for c in items), items)

    def _labels(self, day: _Day, mask: int, thr: tuple[int, ...], others: int, allowance: int) -> list[_Label]:
        """The schedules of `mask` on the day worth trying, best first: the best one, and when its
        exams are sources of min gaps towards exams of `others`, every schedule that cuts fewer
        candidates of some target on a later day (found by re-solving with a latest end on a
        source: any schedule not dominated by the best one has a source ending early enough)."""
        core = self.core
        base = day.solve(mask, day.context(thr, None), allowance)
        if base is None:
            return []
        sources = [(k, j, g) for k in core.bits[mask] for j in core.bits[others] if (g := core.after[k][j])]
        if not sources:
            return [base]
        tomorrow = core.midnight[day.day + 1]
        floor = {j: bisect_left(core.flat_s[j], tomorrow) for _, j, _ in sources}

        def classes(lab: _Label) -> tuple[int, ...]:
            ends = {c.j: c.e for c in lab.items}
            return tuple(max(floor[j], bisect_left(core.flat_s[j], ends[k] + g)) for k, j, g in sources)

        found: dict[tuple[int, ...], _Label] = {}
        seen: set[tuple[tuple[int, int], ...]] = {()}
        stack: list[dict[int, int]] = [{}]
        while stack:
            deadline = stack.pop()
            lab = base if not deadline else day.solve(mask, day.context(thr, deadline), allowance)
            if lab is None:
                continue
            found.setdefault(tuple(c.idx for c in lab.items), lab)
            ends = {c.j: c.e for c in lab.items}
            tighter: dict[int, int] = {}
            for k, j, g in sources:
                fs = core.flat_s[j]
                c = bisect_left(fs, ends[k] + g)
                if c > floor[j]:  # the end of k rules out candidates of j after the day: try earlier
                    tighter[k] = max(tighter.get(k, -INF), fs[c - 1] - g)
            for k, e in tighter.items():
                nxt = dict(deadline)
                nxt[k] = min(nxt.get(k, INF), e)
                sig = tuple(sorted(nxt.items()))
                if sig not in seen:
                    seen.add(sig)
                    stack.append(nxt)
        kept: list[_Label] = []
        marks: list[tuple[int, ...]] = []
        for lab in sorted(found.values(), key=lambda x: (x.span, x.seq)):
            mark = classes(lab)
            if not any(all(a <= b for a, b in zip(old, mark, strict=True)) for old in marks):
                kept.append(lab)
                marks.append(mark)
        return kept
