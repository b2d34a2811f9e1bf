"""Plans in words: the Chinese explanation of each plan (days, steps, the rules that shaped it), its
preparation list, and why each exam left out could not be placed. Unchanged by the search rewrite."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import msgspec

from app.planning.planner.model import Plan, PlanItem, PlanRequest, Preferences, Unplaced
from app.planning.planner.prepare import (
    _describe_prefs,
    _Item,
    _Local,
    _md,
    _mdw,
    _Oracle,
    _Prepared,
    _slot,
    _Why,
)
from app.planning.rules import Checker, Placed


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
    explanation += _reasons_for_order(oracle, local, chosen, prep.existing)
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


def _reasons_for_order(oracle: _Oracle, local: _Local, chosen: list[_Item], existing: list[_Item]) -> list[str]:
    """Which rules shaped the plan: for each pair, the rules the swapped order (same-day order,
    fasting first) or a tighter gap (min gap, travel between campuses) would break. Each pair is
    checked with the rules that can fire between its two exam types (`_Oracle.relation`: the same
    violations as the whole table, in the same order)."""
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
            rel = oracle.relation(p.tid, q.tid)
            if rel is None:
                continue
            checker = rel[0]
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
