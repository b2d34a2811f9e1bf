"""The single-day problem: the best schedule of a set S of exams on one local day.

Given S, per exam a least start (the min gaps from exams placed on earlier days) and optionally a
latest end (see `search._labels`), choose one candidate per exam of S on the day, pairwise
compatible, minimising the span (last end − first start), ties broken by the smallest sequence of
(start, slot id, key). Among schedules of equal span the smallest sequence also has the earliest
first start, hence the earliest end: this one schedule is the right one for the day whether or not
the day ends up the plan's last.

Packing (exact for the known rule kinds). Take any valid schedule in time order and move each exam
but the first, in turn, to the earliest window of its resource and length that starts after the
exam before it ends and is compatible with the exams before it. The exams after it stay
compatible: the order is kept, gaps only grow, and no known rule is broken by a longer gap (orders
are kept, min gaps and travel gaps grow; latest starts and the first exam of the day, hence the
preparation window, are unchanged). The span does not grow and the sequence gets no larger. So the
best schedule is among the *packed* ones: the first exam is any candidate, each next one the
earliest compatible window of its (resource, length) after the last end.

Search: branch and bound over packed schedules, with memoised suffixes. The first exams, and at
each step the next windows, are tried by their relaxed value (relax.py), then in tie-break order;
one that comes after the best so far in tie-break order must do strictly better, one before it
may tie (it then has the smaller sequence), so the order changes the work, not the result. The
first exams stop once their relaxed span exceeds the best span. A suffix depends only on the exams left (a state
where an exam left may not follow one placed is dead), the last exam (the travel gap and the min
gap are checked against it; the travel gaps to earlier exams follow along the chain, see
core.py), the min-gap thresholds still ahead of the last end and, when a travel rule is not
implied along the chain, the earlier exams it matches. Its value (the time from the last end to
the day's end, then the sequence) is exact once found within an allowance; when none is, the
memo keeps the least over the next windows of what each is known to exceed (their relaxed bound,
memo entry or failed suffix, all above the allowance), so a later, larger allowance up to that
value fails at once (`self.fail` carries it up). A first exam or a next window is cut when the
relaxed DP of relax.py (a lower bound on the end of any suffix) shows it cannot come within the
allowance.

Next windows: per (last window, exam), the first compatible window of each (resource, length)
group is computed once per day (`_next`). Compatibility with the last window depends, for the
known kinds, only on the offset between the two starts (see `prepare._Oracle`) and grows with it,
so per signature of the pair (exam types, lengths, campuses, same resource, same key) the largest
offset seen not to fit and the smallest seen to fit settle most windows without a rule check.
"""

from __future__ import annotations

from bisect import bisect_left

from app.planning.planner.core import INF, _Core
from app.planning.planner.prepare import _Item
from app.planning.planner.relax import _DayBounds

_Ctx = tuple[tuple[int, ...], tuple[int, ...]]  # per exam: least start, latest end (() when none)
# Per (resource, length) group of an exam, after a given last exam: the first compatible windows,
# and (position, starts, windows) to move on from when a threshold or a deadline applies.
_Next = tuple[tuple[_Item, ...], tuple[tuple[int, list[int], list[_Item]], ...]]


class _Ext:
    """A best suffix: its value (s from the last end), its next exam and the suffix after that."""

    __slots__ = ("item", "rest", "val")

    def __init__(self, val: int, item: _Item | None, rest: _Ext | None) -> None:
        self.val = val
        self.item = item
        self.rest = rest


_DONE = _Ext(0, None, None)


class _Label:
    """A schedule of one day: its items in time order, span, sequence and end."""

    __slots__ = ("end", "items", "seq", "span")

    def __init__(self, items: tuple[_Item, ...]) -> None:
        self.items = items
        self.span = items[-1].e - items[0].s
        self.seq = tuple(c.tb for c in items)
        self.end = items[-1].e


class _Day(_DayBounds):
    """The exact solver of one day (the bounds and the relaxed DP are in relax.py)."""

    def __init__(self, core: _Core, day: int) -> None:
        super().__init__(core, day)
        self.groups: list[list[tuple[list[int], list[_Item]]]] | None = None  # see _grouped
        self.nxt: dict[int, list[_Next | None]] = {}
        self.shift = core.n  # int memo keys: item << n | exams left
        self.results: dict[tuple[int, _Ctx], tuple[_Label | None, int]] = {}
        self.memo: dict[_Ctx, dict[object, _Ext | int]] = {}
        self.fail = INF  # after `_ext` returns None: its value exceeds this (INF: no suffix)

    # -- the solver ----------------------------------------------------------------------------

    def context(self, thr: tuple[int, ...], deadline: dict[int, int] | None) -> _Ctx:
        """Thresholds and deadlines normalised to the day's candidates (for the memos)."""
        los = []
        for j in range(self.core.n):
            st = self.starts[j]
            t = thr[j]
            if not st or t <= st[0]:
                los.append(0)
            else:
                k = bisect_left(st, t)
                los.append(st[k] if k < len(st) else INF)
        if not deadline:
            return tuple(los), ()
        his = []
        for j in range(self.core.n):
            h = deadline.get(j)
            his.append(INF if h is None else max((c.e for c in self.items[j] if c.e <= h), default=-1))
        return tuple(los), tuple(his)

    def solve(self, mask: int, ctx: _Ctx, allowance: int) -> _Label | None:
        """The best schedule of `mask` with a span of at most `allowance` (s), or None."""
        key = (mask, ctx)
        got = self.results.get(key)
        if got is not None:
            lab, tried = got
            if lab is not None:
                return lab if lab.span <= allowance else None
            if allowance <= tried:
                return None
        if allowance >= INF:
            # No bound yet: allowances of 1, 2, 4... hours (or above what the last try failed under),
            # which cut more; the best schedule within one is the best of all.
            step = 3600
            while step <= 86400:
                lab = self.solve(mask, ctx, step)
                if lab is not None:
                    return lab
                tried = self.results[key][1]
                if tried >= INF:
                    return None  # no schedule at all
                step = max(2 * step, tried + 1)
        core = self.core
        los, his = ctx
        memo = self.memo.setdefault(ctx, {})
        sum_w = core.sum_w
        # The first exams that can start a schedule within the allowance, by their relaxed span
        # (the least span of a schedule they start), then in tie-break order.
        firsts: list[tuple[int, int, _Item, int]] = []
        fail = INF  # with no schedule within the allowance: the span exceeds this
        for f in self.firsts(mask):
            j = f.j
            if f.s < los[j] or (his and f.e > his[j]):
                continue
            rem = mask & ~(1 << j)
            if core.nb_union[rem] >> j & 1:
                continue  # an exam of the set may not follow this one
            least = f.e - f.s + sum_w[rem]
            if least > allowance:
                fail = min(fail, least - 1)
                continue
            e = self._relax(rem, f)
            if e >= INF:
                continue  # no schedule starts with this window, even relaxed
            bound = e - f.s
            if bound > allowance:
                fail = min(fail, bound - 1)
            elif self._first_ok(f):
                firsts.append((bound, f.idx, f, rem))
        firsts.sort()
        best: tuple[_Item, _Ext] | None = None
        best_span = allowance
        thr0 = (0,) * core.n if core.day_gaps else ()
        for bound, _, f, rem in firsts:
            # A first after the best one in tie-break order must do strictly better.
            limit = best_span - 1 if best is not None and f.idx > best[0].idx else best_span
            if bound > limit:
                fail = min(fail, bound - 1)
                if bound > best_span:
                    break  # the later ones have larger bounds still
                continue
            j = f.j
            dur = f.e - f.s
            core.tick()
            thr = self._thr(thr0, f, rem) if thr0 else thr0
            older = (f,) if core.has_old and core.old_src[j] else ()
            sub = self._ext(memo, los, his, rem, 1 << j, f, thr, older, limit - dur)
            if sub is None:
                fail = min(fail, dur + self.fail)
                continue
            best = (f, sub)
            best_span = dur + sub.val
        found: _Label | None = None
        if best is not None:
            chain = [best[0]]
            node: _Ext | None = best[1]
            while node is not None and node.item is not None:
                chain.append(node.item)
                node = node.rest
            found = _Label(tuple(chain))
        self.results[key] = (found, allowance if found is not None else fail)
        return found

    def _thr(self, thr: tuple[int, ...], w: _Item, rem: int) -> tuple[int, ...]:
        if not self.core.after_mask[w.j] & rem:
            return thr
        after = self.core.after[w.j]
        return tuple(max(t, w.e + after[r]) if after[r] and rem >> r & 1 else t for r, t in enumerate(thr))

    def _grouped(self) -> list[list[tuple[list[int], list[_Item]]]]:
        """Per exam, its windows by (resource, length), each group by start (unique starts)."""
        self.groups = []
        for lst in self.items:
            by: dict[tuple[str, int], list[_Item]] = {}
            for c in lst:
                by.setdefault((c.res, c.e - c.s), []).append(c)
            self.groups.append([([c.s for c in by[key]], by[key]) for key in sorted(by)])
        return self.groups

    def _next(self, last: _Item, j: int) -> _Next:
        """Per (resource, length) group of exam j: the first window that starts once `last` ends and
        is compatible with it (compatibility only grows with the start). The windows, and the
        positions in their groups for later thresholds."""
        core = self.core
        rel = core.rels[last.j][j]
        fits = core.oracle.fits_rel
        le = last.e
        first: list[_Item] = []
        where: list[tuple[int, list[int], list[_Item]]] = []
        seen = core.fit_offsets
        for starts, items in (self.groups or self._grouped())[j]:
            k = bisect_left(starts, le)
            if rel is not None and k < len(items):
                if rel[2]:
                    # The known kinds do not depend on absolute times (see _Oracle), and a window of
                    # the group fits after `last` from some offset on: per signature, the largest
                    # offset seen not to fit and the smallest seen to fit settle most windows.
                    w = items[k]
                    sig = (
                        w.tid,
                        last.tid,
                        w.e - w.s,
                        le - last.s,
                        w.campus,
                        last.campus,
                        w.res == last.res,
                        w.key == last.key,
                    )
                    lo, hi = seen.get(sig, (-INF, INF))
                    while k < len(items):
                        off = items[k].s - last.s
                        if off >= hi:
                            break
                        if off > lo and fits(items[k], last, rel):
                            hi = off
                            break
                        lo = max(lo, off)
                        k += 1
                    seen[sig] = (lo, hi)
                else:
                    while k < len(items) and not fits(items[k], last, rel):
                        k += 1
            if k < len(items):
                first.append(items[k])
                where.append((k, starts, items))
        return tuple(first), tuple(where)

    def _ext(
        self,
        memo: dict[object, _Ext | int],
        los: tuple[int, ...],
        his: tuple[int, ...],
        rem: int,
        placed: int,
        last: _Item,
        thr: tuple[int, ...],
        older: tuple[_Item, ...],
        allowance: int,
    ) -> _Ext | None:
        """The best suffix after `last` placing `rem`, if its value is at most `allowance`."""
        if not rem:
            return _DONE
        core = self.core
        if placed & core.nb_union[rem]:
            self.fail = INF
            return None  # an exam left may not follow one already placed
        le = last.e
        bits = core.bits[rem]
        ahead = bool(thr) and max(thr) > le  # a same-day min gap still binds after the last end
        key: object
        if ahead or older:
            tk = tuple([thr[r] if thr[r] > le else 0 for r in bits]) if ahead else ()
            key = (rem, last.idx, tk, tuple([c.idx for c in older]))
        else:
            key = last.idx << self.shift | rem
        got = memo.get(key)
        if got is not None:
            if isinstance(got, int):
                if allowance <= got:
                    self.fail = got
                    return None
            elif got.val <= allowance:
                return got
            else:
                self.fail = got.val - 1
                return None
        core.tick()
        row = self.nxt.get(last.idx)
        if row is None:
            row = self.nxt[last.idx] = [None] * core.n
        kids: list[_Item] = []
        plain = not his and not older
        for j in bits:
            nx = row[j]
            if nx is None:
                nx = row[j] = self._next(last, j)
            t = los[j]
            if ahead and thr[j] > t:
                t = thr[j]
            if plain and t <= le:
                kids += nx[0]
                continue
            hj = his[j] if his else INF
            for k, starts, items in nx[1]:
                if t > starts[k]:
                    k = bisect_left(starts, t, k)
                if older and k < len(starts):
                    k = self._past_older(older, j, items, k)
                if k < len(starts) and items[k].e <= hj:
                    kids.append(items[k])
        # The next windows by the relaxed value of the suffix they start, then in tie-break order.
        sum_w = core.sum_w
        relax = self._relax
        ranked: list[tuple[int, int, _Item]] = []
        fail = INF  # with no suffix within the allowance: its value exceeds this
        for w in kids:
            we = w.e
            r2 = rem & ~(1 << w.j)
            least = we - le + sum_w[r2]
            if least > allowance:
                fail = min(fail, least - 1)
                continue
            e = relax(r2, w) if r2 else we
            if e >= INF:
                continue  # no suffix starts with this window, even relaxed
            bound = e - le
            if bound <= allowance:
                ranked.append((bound, w.idx, w))
            else:
                fail = min(fail, bound - 1)
        if len(ranked) > 1:
            ranked.sort()
        best: _Ext | None = None
        best_idx = -1
        shift = self.shift
        has_old = core.has_old
        for bound, _, w in ranked:
            # A window after the best one in tie-break order must do strictly better.
            limit = allowance if best is None else best.val - 1 if w.idx > best_idx else best.val
            if bound > limit:
                if best is not None and bound > best.val:
                    break  # the later ones have larger bounds still
                fail = min(fail, bound - 1)
                continue
            we = w.e
            step = we - le
            r2 = rem & ~(1 << w.j)
            thr2 = self._thr(thr, w, r2) if thr else thr
            older2 = (*older, w) if older or (has_old and core.old_src[w.j]) else older
            if not older2 and not (thr2 and max(thr2) > we):  # the memo key of `_ext`, checked here
                got = memo.get(w.idx << shift | r2)
                if got is not None:
                    if isinstance(got, int):
                        if limit - step <= got:
                            fail = min(fail, step + got)
                            continue
                    elif got.val > limit - step:
                        fail = min(fail, step + got.val - 1)
                        continue
            sub = self._ext(memo, los, his, r2, placed | 1 << w.j, w, thr2, older2, limit - step)
            if sub is None:
                fail = min(fail, step + self.fail)
                continue
            best = _Ext(step + sub.val, w, sub)
            best_idx = w.idx
        if best is None:
            memo[key] = self.fail = fail
        else:
            memo[key] = best
        return best

    def _past_older(self, older: tuple[_Item, ...], j: int, items: list[_Item], k: int) -> int:
        """The first window from k on compatible with the earlier exams a travel rule not implied
        along the chain matches (compatibility only grows with the start)."""
        core = self.core
        fits = core.oracle.fits_rel
        moved = True
        while moved and k < len(items):
            moved = False
            for y in older:
                if core.old_check[y.j][j]:
                    rel = core.rels[y.j][j]
                    while k < len(items) and not fits(items[k], y, rel):
                        k += 1
                        moved = True
        return k
