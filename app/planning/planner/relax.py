"""Lower bounds of the schedules of a set of exams on one day, for the cross-day search (which
blocks to try first, which to cut) and for the single-day solver (which suffixes to cut).

`bounds` is cheap: the first start is at most every exam's latest start, the last end at least
every exam's earliest end, and the span at least the durations plus least gaps, and at least the
durations plus the min gap of any two exams a min gap keeps apart on a day (`core.pair_span`).

`relaxed` is the relaxed DP (`_Chain`): a chain of exams in which only the gaps between
consecutive exams (travel and min gaps, the travel gap waived on the same resource), the order
rules and, for the first exam, the thresholds and the preparation window are kept. Every valid
schedule is such a chain, so its least span and end are lower bounds. The DP is tabulated per
day, one vector per set of exams left (built on demand from the sets one smaller) over every (last
exam, end of that exam), with C-level gathers and one `min` map per set: at most a few hundred
list operations per day instead of thousands of memoised calls, and every later query (the
search's blocks, the solver's first exams and suffixes) is then a list lookup.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate, repeat
from operator import attrgetter, itemgetter, sub

from app.planning.planner.core import INF, _Core
from app.planning.planner.prepare import _Item


class _DayBounds:
    """A day's candidates, their lower bounds and the patient's constraints on it."""

    def __init__(self, core: _Core, day: int) -> None:
        self.core = core
        self.day = day
        n = core.n
        self.items = [core.by_day[j].get(day, []) for j in range(n)]
        self.starts = [[c.s for c in lst] for lst in self.items]
        self.min_e = [_suffix_min([c.e for c in lst]) for lst in self.items]
        self.all: list[_Item] | None = None  # the day's candidates in tie-break order, on demand
        self.bad = core.day_bad[day]
        self.ok: dict[int, bool] = {}
        self.chain: _Chain | None = None  # the relaxed DP, on demand
        self.t0 = min((st[0] for st in self.starts if st), default=INF)  # the day's first start
        self.first: dict[int, bool] = {}
        self.relaxed_memo: dict[object, tuple[int, int]] = {}
        self.free_bounds: dict[int, tuple[int, int]] = {}  # `bounds` with no threshold after t0
        self.first_lists: dict[int, list[_Item]] = {}
        self.prep = core.prep_check
        self.prep_until: int | None = None  # see core.prep_until
        self.existing = core.existing_by_day.get(day, [])

    def available(self, rest: int, thr: tuple[int, ...]) -> int:
        """The exams of `rest` with a candidate on the day that starts no earlier than allowed."""
        out = 0
        for j in self.core.bits[rest]:
            st = self.starts[j]
            if st and st[-1] >= thr[j]:
                out |= 1 << j
        return out

    def pair_ok(self, mask: int) -> bool:
        got = self.ok.get(mask)
        if got is None:
            bad = self.bad
            got = self.ok[mask] = all(not mask & bad[j] for j in self.core.bits[mask])
        return got

    def bounds(self, mask: int, thr: tuple[int, ...]) -> tuple[int, int]:
        """Least span and least end of a schedule of `mask` on the day (INF: none): the first
        start is at most every exam's latest start, the last end at least every exam's earliest
        end, and the span at least the durations plus least gaps."""
        first = INF
        latest = INF
        end = 0
        for j in self.core.bits[mask]:
            st = self.starts[j]
            k = bisect_left(st, thr[j])
            if k == len(st):
                return INF, INF
            first = min(first, st[k])
            latest = min(latest, st[-1])
            end = max(end, self.min_e[j][k])
        core = self.core
        span = max(core.lbspan[mask], core.pair_span[mask], end - latest)
        return span, max(end, first + span)

    def first_start(self, mask: int, thr: tuple[int, ...]) -> int:
        """The earliest start of a schedule of `mask` on the day (INF: none)."""
        first = INF
        for j in self.core.bits[mask]:
            st = self.starts[j]
            k = bisect_left(st, thr[j])
            if k < len(st) and st[k] < first:
                first = st[k]
        return first

    def bounds_free(self, mask: int, thr: tuple[int, ...]) -> tuple[int, int]:
        """`bounds`, when no threshold of `mask` is after the day's first start (memoised)."""
        got = self.free_bounds.get(mask)
        if got is None:
            got = self.free_bounds[mask] = self.bounds(mask, thr)
        return got

    def relaxed(self, mask: int, thr: tuple[int, ...]) -> tuple[int, int]:
        """Least span and least end of a schedule of `mask` on the day under the relaxation of
        `_Chain` (any first window that meets its threshold and the preparation window, of an
        exam every other may follow, then the relaxed suffix), and no less than `bounds`; INF when
        none. Per first exam, one gather from the DP's vector of the others over its opening
        windows (`_Chain.openers`). Memoised on the thresholds as the day's candidates see them."""
        core = self.core
        if not thr or max(thr) <= self.t0:
            key: object = mask
        else:
            key = (mask, tuple([self._at(j, thr[j]) for j in core.bits[mask]]))
        got = self.relaxed_memo.get(key)
        if got is None:
            span, end = INF, INF
            lo_span, lo_end = self.bounds(mask, thr)
            if lo_end < INF:
                nb_union = core.nb_union
                chain = self.chain or self._chain()
                for j in core.bits[mask]:
                    rem = mask & ~(1 << j)
                    if nb_union[rem] >> j & 1:
                        continue
                    starts, ends, pos = chain.openers[j] or chain.opening(j)
                    k = bisect_left(starts, thr[j])
                    if k == len(starts):
                        continue
                    if rem:
                        row = chain.table[rem] or chain.row(rem)
                        ends = [*map(row.__getitem__, pos[k:])]
                    elif k:
                        ends = ends[k:]
                    e = min(ends)
                    if e < INF:
                        end = min(end, e)
                        span = min(span, min(map(sub, ends, starts[k:] if k else starts)))
            got = self.relaxed_memo[key] = (max(span, lo_span), max(end, lo_end)) if end < INF else (INF, INF)
        return got

    def _at(self, j: int, t: int) -> int:
        """The first start of exam j on the day no earlier than t (INF: none)."""
        st = self.starts[j]
        k = bisect_left(st, t)
        return st[k] if k < len(st) else INF

    def firsts(self, mask: int) -> list[_Item]:
        """The candidates of the exams of `mask` on the day, in tie-break order."""
        got = self.first_lists.get(mask)
        if got is None:
            if self.all is None:
                self.all = sorted((c for lst in self.items for c in lst), key=_idx)
            got = self.first_lists[mask] = [c for c in self.all if mask >> c.j & 1]
        return got

    def _relax(self, rem: int, w: _Item) -> int:
        """Least end of placing `rem` after the window w (of an exam placed last on the day),
        relaxed: see `_Chain`."""
        if not rem:
            return w.e
        chain = self.chain or self._chain()
        row = chain.table[rem]
        if row is None:
            row = chain.row(rem)
        return row[chain.pos[w.j][w.e]]

    def _chain(self) -> _Chain:
        self.chain = _Chain(self)
        return self.chain

    def _first_ok(self, f: _Item) -> bool:
        """The preparation window, for f opening its day (with the patient's other appointments)."""
        if self.prep is None or not self.core.prep_mask >> f.j & 1:
            return True  # no preparation window applies to the exam
        if self.prep_until is None:
            self.prep_until = self.core.prep_until(self.day)
        if f.s >= self.prep_until:
            return True  # nor at this time of the day
        got = self.first.get(f.idx)
        if got is None:
            got = not any(f.key in v.keys for v in self.prep.day([*self.existing, f.placed]))
            self.first[f.idx] = got
        return got


_idx = attrgetter("idx")


class _Chain:
    """The relaxed DP of a day: for every set of exams left and every position (exam k placed
    last, end of one of k's windows of the day), the least end of the set after it.

    Relaxation: each next exam j in any of its windows of the day that starts `core.gd[k][j]`
    (travel and min gaps) after the exam before it ends, or only `core.after[k][j]` after when the
    window is on a resource k has a window on this day (the travel gap is waived on the same
    resource), and only when every exam after it may follow it (order rules); no other rule. Every
    valid schedule is such a chain, and the least end of a chain grows with the end before it, so
    the next exam's least end is the right one to go on from: the value is a lower bound on the end
    of any suffix. One vector per set left (`row`, built on demand from the sets one smaller), over
    the positions, then INF: the least over the next exam j of a C-level gather (`itemgetter`) from
    the vector of the set without j. Cheap per state, and each query is then a lookup."""

    def __init__(self, day: _DayBounds) -> None:
        self.day = day
        self.core = core = day.core
        n = core.n
        self.ends = [sorted({c.e for c in lst}) for lst in day.items]
        self.pos: list[dict[int, int]] = []  # per exam: per end, its position
        base = 0
        for ends in self.ends:
            self.pos.append({t: base + a for a, t in enumerate(ends)})
            base += len(ends)
        self.size = base  # position `size`: INF
        self.gather: list[Callable[[list[int]], tuple[int, ...]] | None] = [None] * n
        self.resources = [{c.res for c in lst} for lst in day.items]
        self.present = sum(1 << j for j in range(n) if day.items[j])
        self.none = [INF] * (self.size + 1)
        self.table: list[list[int] | None] = [None] * (1 << n)
        self.table[0] = [t for ends in self.ends for t in ends] + [INF]
        self.openers: list[tuple[list[int], list[int], list[int]] | None] = [None] * n

    def opening(self, j: int) -> tuple[list[int], list[int], list[int]]:
        """The windows of exam j that may open the day (the preparation window), one per (start,
        end), by start: their starts, ends and positions."""
        day = self.day
        at = self.pos[j]
        seen: set[tuple[int, int]] = set()
        starts: list[int] = []
        ends: list[int] = []
        pos: list[int] = []
        for c in day.items[j]:
            if (c.s, c.e) not in seen and day._first_ok(c):
                seen.add((c.s, c.e))
                starts.append(c.s)
                ends.append(c.e)
                pos.append(at[c.e])
        got = self.openers[j] = (starts, ends, pos)
        return got

    def row(self, rem: int) -> list[int]:
        """The vector of the set `rem`."""
        table = self.table
        if rem & ~self.present:
            table[rem] = self.none  # an exam without a window on the day
            return self.none
        nb_union = self.core.nb_union
        parts: list[tuple[int, ...]] = []
        for j in self.core.bits[rem]:
            r2 = rem & ~(1 << j)
            if nb_union[r2] >> j & 1:
                continue
            sub = table[r2]
            if sub is None:
                sub = self.row(r2)
            get = self.gather[j]
            if get is None:
                get = self.gather[j] = self._gather(j)
            parts.append(get(sub))
        if not parts:
            row = self.none
        elif len(parts) == 1:
            row = [*parts[0], INF]
        else:
            row = [*map(min, *parts), INF]  # one `min` per position over every next exam
        table[rem] = row
        return row

    def _gather(self, j: int) -> Callable[[list[int]], tuple[int, ...]]:
        """Per (k, end of k), the position of exam j's least end after it (INF when none or k = j),
        as a gather from a vector."""
        core, day, size = self.core, self.day, self.size
        st = day.starts[j]
        me = [*day.min_e[j], INF]
        pos = {**self.pos[j], INF: size}
        resources = self.resources
        idx: list[int] = []
        for k in range(core.n):
            ends = self.ends[k]
            if not ends:
                continue
            if k == j:
                idx += [size] * len(ends)
                continue
            mine = resources[k]
            gap, after = core.gd[k][j], core.after[k][j]
            e = [*map(me.__getitem__, map(bisect_left, repeat(st), [t + gap for t in ends]))]
            if mine & resources[j]:
                same = [c for c in day.items[j] if c.res in mine]
                ss = [c.s for c in same]
                sme = [*_suffix_min([c.e for c in same]), INF]
                e2 = map(sme.__getitem__, map(bisect_left, repeat(ss), [t + after for t in ends]))
                e = [*map(min, e, e2)]
            idx += map(pos.__getitem__, e)
        return itemgetter(*idx) if len(idx) > 1 else _one(idx[0])


def _one(i: int) -> Callable[[list[int]], tuple[int, ...]]:
    """A gather of one position, as a 1-tuple (like `itemgetter` of several)."""
    return lambda values: (values[i],)


def _suffix_min(values: list[int]) -> list[int]:
    return [*accumulate(reversed(values), min)][::-1]
