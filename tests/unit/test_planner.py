"""The smart booking planner (app/planning/planner.py): named cases from DOMAIN.md §4 and property
tests against the rule engine and a brute force. Pure: no servers."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.planning.catalogue import ExamType
from app.planning.planner import (
    Candidate,
    Plan,
    PlanExam,
    PlanRequest,
    PlanResult,
    Preferences,
    exhaustive_best,
    make_plans,
    plan_score,
)
from app.planning.rules import Checker, Placed, RuleSpec, Selector, compile_rules

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2026, 3, 2)
DEFAULT_RULES = Path(__file__).resolve().parents[2] / "app" / "planning" / "default_rules.json"


# -- building blocks ------------------------------------------------------------------------------


def at(day: date, hm: str) -> int:
    return int(datetime.combine(day, time.fromisoformat(hm), TZ).timestamp())


def exam(
    code: str,
    name: str,
    modality: str,
    *,
    fasting: bool = False,
    full_bladder: bool = False,
    contrast: str | None = None,
    anaesthesia: bool = False,
    tags: tuple[str, ...] = (),
    minutes: int = 15,
) -> ExamType:
    return ExamType(
        code=code,
        name=name,
        modality=modality,
        department_id=modality,
        body_part="",
        duration_min=minutes,
        fasting=fasting,
        full_bladder=full_bladder,
        contrast=contrast,
        anaesthesia=anaesthesia,
        prep_text=f"{name}的准备事项",
        tags=list(tags),
    )


US_ABD = exam("US-ABD-UPPER", "上腹部超声", "US", fasting=True, tags=("upper_abdomen_us",))
GASTRO = exam("ES-GASTRO", "胃镜检查", "ES", fasting=True, tags=("gastroscopy",))
GASTRO_PAINLESS = exam(
    "ES-GASTRO-PAINLESS", "无痛胃镜检查", "ES", fasting=True, anaesthesia=True, tags=("gastroscopy",)
)
ECG = exam("ECG-REST", "常规十二导联心电图", "ECG")
BARIUM = exam("DX-BARIUM", "上消化道钡餐造影", "DX", fasting=True, contrast="barium", tags=("barium_meal",))
CT_ABD = exam("CT-ABD", "上腹部CT平扫", "CT", fasting=True, tags=("abdominal_ct",))
CT_ABD_C = exam("CT-ABD-C", "上腹部增强CT", "CT", contrast="iodine", tags=("abdominal_ct",))
CT_CHEST_C = exam("CT-CHEST-C", "胸部增强CT", "CT", contrast="iodine")
MR_HEAD = exam("MR-HEAD", "头颅MRI平扫", "MR")
MR_HEAD_C = exam("MR-HEAD-C", "头颅MRI平扫+增强", "MR", contrast="gadolinium")
US_THYROID = exam("US-THYROID", "甲状腺超声", "US")

RULES: list[dict[str, Any]] = [
    {"id": "T01-US-BEFORE-GASTRO", "kind": "same_day_order", "severity": "block",
     "a": {"tags": ["upper_abdomen_us"]}, "b": {"tags": ["gastroscopy", "barium_meal"]},
     "message": "{a}须在{b}之前完成"},
    {"id": "T04-BARIUM-THEN-CT-7D", "kind": "min_gap", "severity": "block",
     "a": {"tags": ["barium_meal"]}, "b": {"tags": ["abdominal_ct"]}, "params": {"min_hours": 168, "directed": True},
     "message": "{a}后{gap}内不能做{b}"},
    {"id": "T06-IODINE-TWICE-7D", "kind": "min_gap", "severity": "block",
     "a": {"contrast": ["iodine"]}, "b": {"contrast": ["iodine"]}, "params": {"min_hours": 168, "directed": False},
     "message": "{a}与{b}都使用碘对比剂，须间隔至少{gap}"},
    {"id": "T07-ENHANCED-CT-MR-4H", "kind": "min_gap", "severity": "block",
     "a": {"modality": ["CT"], "contrast": ["iodine"]}, "b": {"modality": ["MR"], "contrast": ["gadolinium"]},
     "params": {"min_hours": 4, "directed": False}, "message": "增强CT（{a}）与增强MRI（{b}）须间隔至少{gap}"},
    {"id": "T09-FASTING-MORNING-FIRST", "kind": "time_of_day", "severity": "warn", "override_roles": ["doctor"],
     "a": {"fasting": True}, "params": {"latest_start": "11:30", "before_others": True},
     "message": "{a}需空腹，应安排在上午并先于当天的非空腹检查"},
    {"id": "T10-FULL-BLADDER-PREP", "kind": "prep_window", "severity": "warn", "override_roles": ["doctor"],
     "a": {"full_bladder": True}, "params": {"prep_minutes": 60, "day_start": "08:00"},
     "message": "{a}需憋尿，不宜在开诊后{minutes}分钟内作为第一项检查"},
    {"id": "T11-PAINLESS-NEEDS-ASSESSMENT", "kind": "prerequisite", "severity": "block", "a": {"anaesthesia": True},
     "params": {"fact": "anaesthesia_assessment", "equals": "passed", "notice": "无痛检查须有家属陪同"},
     "message": "{a}须先通过麻醉评估"},
    {"id": "T13-MRI-PACEMAKER", "kind": "contraindication", "severity": "block", "a": {"modality": ["MR"]},
     "params": {"fact": "pacemaker", "op": "eq", "value": True}, "message": "患者装有心脏起搏器，不能做{a}"},
    {"id": "T28-TRAVEL-GAP", "kind": "travel_gap", "severity": "block", "a": {},
     "params": {"same_campus_minutes": 30, "cross_campus_minutes": 60},
     "message": "{a}与{b}之间须预留至少{minutes}分钟"},
]  # fmt: skip


def checker_of(specs: list[dict[str, Any]] | list[RuleSpec]) -> Checker:
    return Checker(compile_rules(msgspec.convert(specs, list[RuleSpec])), TZ)


CHECKER = checker_of(RULES)


def windows(
    day: date, resource: str, campus: str = "main", start: str = "08:00", end: str = "17:00", step: int = 30
) -> list[tuple[str, str, int, int]]:
    out = []
    cur = datetime.combine(day, time.fromisoformat(start), TZ)
    stop = datetime.combine(day, time.fromisoformat(end), TZ)
    while cur < stop:
        nxt = cur + timedelta(minutes=step)
        out.append((resource, campus, int(cur.timestamp()), int(nxt.timestamp())))
        cur = nxt
    return out


def candidates(rows: list[tuple[str, str, int, int]], first_id: int) -> list[Candidate]:
    return [Candidate(first_id + i, r, c, s, e) for i, (r, c, s, e) in enumerate(rows)]


def request(
    exams: list[ExamType],
    rows: dict[str, list[tuple[str, str, int, int]]],
    *,
    facts: dict[str, Any] | None = None,
    existing: list[Placed] | None = None,
    prefs: Preferences | None = None,
    earliest: date = MONDAY,
) -> PlanRequest:
    plan_exams = [PlanExam(str(100 + i), e) for i, e in enumerate(exams)]
    return PlanRequest(
        exams=plan_exams,
        candidates={pe.key: candidates(rows.get(pe.exam.code, []), 1000 * (i + 1)) for i, pe in enumerate(plan_exams)},
        existing=existing or [],
        facts=facts or {},
        preferences=prefs or Preferences(),
        earliest=earliest,
    )


def as_placed(req: PlanRequest, plan: Plan) -> list[Placed]:
    by_key = {pe.key: pe.exam for pe in req.exams}
    return [Placed(i.key, by_key[i.key], i.starts_at, i.ends_at, i.resource_id, i.campus_id) for i in plan.items]


def assert_valid(req: PlanRequest, result: PlanResult, checker: Checker) -> None:
    """Every plan obeys every rule, has no overlaps, is consistent, and the plans are sorted and put the
    exams on distinct assignments to days."""
    signatures = set()
    for plan in result.plans:
        items = as_placed(req, plan)
        assert checker.check([*req.existing, *items], req.facts) == [], plan
        for n, a in enumerate(items):
            for b in [*items[n + 1 :], *req.existing]:
                assert a.ends_at <= b.starts_at or b.ends_at <= a.starts_at, (a, b)  # no overlap
        assert [i.starts_at for i in plan.items] == sorted(i.starts_at for i in plan.items)
        days = sorted({datetime.fromtimestamp(i.starts_at, TZ).date() for i in plan.items})
        assert plan.days == days and plan.visit_days == len(days)
        spans = 0
        for d in days:
            mine = [i for i in plan.items if datetime.fromtimestamp(i.starts_at, TZ).date() == d]
            spans += max(i.ends_at for i in mine) - min(i.starts_at for i in mine)
        assert plan.minutes_in_hospital == spans // 60
        assert plan.completes_at == max((i.ends_at for i in plan.items), default=0)
        assert {i.key for i in plan.items} | {u.key for u in plan.unplaced} == {pe.key for pe in req.exams}
        signatures.add(frozenset((i.key, datetime.fromtimestamp(i.starts_at, TZ).date()) for i in plan.items))
        assert len(plan.unplaced) == len(result.plans[0].unplaced)  # alternatives book as many exams
    assert len(signatures) == len(result.plans)  # each plan on its own assignment of exams to days
    scores = [plan_score(p) for p in result.plans]
    assert scores == sorted(scores)
    assert len(result.plans) <= req.max_plans


def local(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, TZ)


def item_of(plan: Plan, code: str) -> Any:
    return next(i for i in plan.items if i.exam_code == code)


# -- DOMAIN.md §4, case by case -------------------------------------------------------------------


def test_fasting_patient_gets_one_morning_ultrasound_before_gastroscopy_then_ecg() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(3)]
    rows = {
        "US-ABD-UPPER": [w for d in days for w in windows(d, "US1") + windows(d, "US7", "east")],
        "ES-GASTRO": [w for d in days for w in windows(d, "GS1", end="12:00")],
        "ECG-REST": [w for d in days for w in windows(d, "ECG1")],
    }
    req = request([GASTRO, ECG, US_ABD], rows)
    result = make_plans(req, CHECKER)
    assert result.complete_search
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    assert best.visit_days == 1 and not best.unplaced
    us, gs, ecg = item_of(best, "US-ABD-UPPER"), item_of(best, "ES-GASTRO"), item_of(best, "ECG-REST")
    assert us.ends_at <= gs.starts_at  # ultrasound before gastroscopy
    assert max(us.starts_at, gs.starts_at) < ecg.starts_at  # fasting exams before the non-fasting ECG
    assert local(us.starts_at).hour < 12 and local(gs.starts_at).hour < 12  # a morning
    # Packed: 08:00 US, 08:30 + 30 min travel -> 09:00 gastroscopy, 10:00 ECG; done by 10:30 on day one.
    assert best.days == [MONDAY] and best.minutes_in_hospital == 150
    assert best.explanation[0].startswith("共需来院1天：3月2日")
    assert "08:00 上腹部超声（US1）" in best.explanation[1]
    assert any("上腹部超声须在胃镜检查之前完成" in line for line in best.explanation)
    assert any("需空腹" in line for line in best.explanation)
    assert best.preparation[0].startswith("上腹部超声：")
    assert exhaustive_best(req, CHECKER) == plan_score(best)


def test_barium_meal_then_abdominal_ct_never_within_seven_days() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(14)]
    rows = {
        "DX-BARIUM": [w for d in days for w in windows(d, "DR1", end="11:00")],
        "CT-ABD": [w for d in days for w in windows(d, "CT1", end="11:00")],
    }
    req = request([BARIUM, CT_ABD], rows)
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    for plan in result.plans:
        barium, ct = item_of(plan, "DX-BARIUM"), item_of(plan, "CT-ABD")
        assert ct.starts_at < barium.starts_at or ct.starts_at - barium.ends_at >= 168 * 3600
    best = result.plans[0]
    assert best.visit_days == 1  # CT first, then the barium meal, the same morning
    assert item_of(best, "CT-ABD").starts_at < item_of(best, "DX-BARIUM").starts_at

    # A barium meal done three days before: the CT waits until 7 days after it.
    past = at(MONDAY - timedelta(days=3), "09:00")
    req = request([CT_ABD], rows, existing=[Placed("A1", BARIUM, past, past + 1800, "DR1", "main", proposed=False)])
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    ct = item_of(result.plans[0], "CT-ABD")
    assert ct.starts_at - (past + 1800) >= 168 * 3600
    assert local(ct.starts_at).date() == MONDAY + timedelta(days=4)
    assert any("T04" not in line and "后7天内不能做" in line for line in result.plans[0].explanation)


def test_pacemaker_patient_is_never_offered_mri() -> None:
    rows = {"MR-HEAD": windows(MONDAY, "MR1"), "US-THYROID": windows(MONDAY, "US1")}
    req = request([MR_HEAD, US_THYROID], rows, facts={"pacemaker": True})
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    for plan in result.plans:
        assert [i.exam_code for i in plan.items] == ["US-THYROID"]
        (mri,) = plan.unplaced
        assert mri.exam_code == "MR-HEAD" and mri.rule_ids == ["T13-MRI-PACEMAKER"]
        assert mri.reasons == ["患者装有心脏起搏器，不能做头颅MRI平扫"]
        assert any(line.startswith("其余检查无法安排：头颅MRI平扫") for line in plan.explanation)


def test_painless_gastroscopy_needs_a_passed_anaesthesia_assessment() -> None:
    rows = {"ES-GASTRO-PAINLESS": windows(MONDAY, "GS2", end="12:00")}
    req = request([GASTRO_PAINLESS], rows, facts={"anaesthesia_assessment": "pending"})
    (plan,) = make_plans(req, CHECKER).plans
    assert not plan.items and plan.visit_days == 0
    (gs,) = plan.unplaced
    assert gs.rule_ids == ["T11-PAINLESS-NEEDS-ASSESSMENT"] and gs.reasons == ["无痛胃镜检查须先通过麻醉评估"]
    assert plan.explanation[0] == "本次所有检查均无法安排。"

    req = request([GASTRO_PAINLESS], rows, facts={"anaesthesia_assessment": "passed"})
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    assert [i.exam_code for i in best.items] == ["ES-GASTRO-PAINLESS"] and not best.unplaced
    assert "无痛检查须有家属陪同" in best.preparation
    assert local(best.items[0].starts_at) == datetime.combine(MONDAY, time(8), TZ)


def test_two_iodine_exams_are_a_week_apart() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(14)]
    rows = {
        "CT-ABD-C": [w for d in days for w in windows(d, "CT1")],
        "CT-CHEST-C": [w for d in days for w in windows(d, "CT2")],
        "US-THYROID": [w for d in days for w in windows(d, "US1")],
    }
    req = request([CT_ABD_C, CT_CHEST_C, US_THYROID], rows)
    result = make_plans(req, CHECKER)
    assert result.complete_search
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    assert best.visit_days == 2 and not best.unplaced
    a, b = sorted((item_of(best, "CT-ABD-C"), item_of(best, "CT-CHEST-C")), key=lambda i: i.starts_at)
    assert b.starts_at - a.ends_at >= 168 * 3600
    assert best.days == [MONDAY, MONDAY + timedelta(days=7)]
    assert any(line.startswith("时间间隔：") and "碘对比剂" in line for line in best.explanation)
    assert exhaustive_best(request([CT_ABD_C, CT_CHEST_C], {k: v[:40] for k, v in rows.items()}), CHECKER) == (
        plan_score(make_plans(request([CT_ABD_C, CT_CHEST_C], {k: v[:40] for k, v in rows.items()}), CHECKER).plans[0])
    )


def test_enhanced_ct_and_enhanced_mri_the_same_day_are_four_hours_apart() -> None:
    rows = {"CT-ABD-C": windows(MONDAY, "CT1"), "MR-HEAD-C": windows(MONDAY, "MR1")}
    req = request([CT_ABD_C, MR_HEAD_C], rows)
    result = make_plans(req, CHECKER)
    assert result.complete_search
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    assert best.visit_days == 1
    first, second = best.items
    assert second.starts_at - first.ends_at >= 4 * 3600
    assert best.minutes_in_hospital == 30 + 240 + 30
    assert any("须间隔至少4小时" in line for line in best.explanation)
    assert exhaustive_best(req, CHECKER) == plan_score(best)


def test_travel_gap_between_campuses() -> None:
    rows = {"US-THYROID": windows(MONDAY, "US7", "east"), "ECG-REST": windows(MONDAY, "ECG1", "main")}
    req = request([US_THYROID, ECG], rows)
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    first, second = best.items
    assert first.campus_id != second.campus_id
    assert second.starts_at - first.ends_at >= 60 * 60
    assert best.minutes_in_hospital == 30 + 60 + 30
    assert any(line.startswith("院区间转移：") for line in best.explanation)
    # Same campus, different rooms: 30 minutes are enough.
    rows = {"US-THYROID": windows(MONDAY, "US1", "main"), "ECG-REST": windows(MONDAY, "ECG1", "main")}
    best = make_plans(request([US_THYROID, ECG], rows), CHECKER).plans[0]
    assert best.items[1].starts_at - best.items[0].ends_at == 30 * 60


def test_preferences_are_respected_and_the_output_is_deterministic() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(5)]
    rows = {
        "US-THYROID": [w for d in days for w in windows(d, "US1") + windows(d, "US7", "east")],
        "ECG-REST": [w for d in days for w in windows(d, "ECG1") + windows(d, "ECG3", "east")],
        "MR-HEAD": [w for d in days for w in windows(d, "MR1") + windows(d, "MR2", "east")],
    }
    exams = [US_THYROID, ECG, MR_HEAD]
    afternoon = make_plans(request(exams, rows, prefs=Preferences(part_of_day="afternoon")), CHECKER)
    avoid = [MONDAY, MONDAY + timedelta(days=1)]
    no_mon_tue = make_plans(request(exams, rows, prefs=Preferences(avoid_days=avoid)), CHECKER)
    east = make_plans(request(exams, rows, prefs=Preferences(campus="east")), CHECKER)
    for result in (afternoon, no_mon_tue, east):
        assert result.plans and all(not p.unplaced for p in result.plans)
    assert all(local(i.starts_at).hour >= 12 for p in afternoon.plans for i in p.items)
    assert all(local(i.starts_at).date() not in avoid for p in no_mon_tue.plans for i in p.items)
    assert all(i.campus_id == "east" for p in east.plans for i in p.items)
    assert "已按患者偏好安排：仅下午。" in afternoon.plans[0].explanation
    morning = make_plans(request(exams, rows, prefs=Preferences(part_of_day="morning")), CHECKER)
    assert all(local(i.starts_at).hour < 12 for p in morning.plans for i in p.items)

    # Filtered out by the preferences: said so.
    only_morning = {"US-THYROID": windows(MONDAY, "US1", end="12:00")}
    afternoon_only = Preferences(part_of_day="afternoon")
    (plan, *_) = make_plans(request([US_THYROID], only_morning, prefs=afternoon_only), CHECKER).plans
    assert plan.unplaced[0].reasons == ["按患者偏好（仅下午）筛选后无可用号源"]
    (plan, *_) = make_plans(request([US_THYROID], {}), CHECKER).plans
    assert plan.unplaced[0].reasons == ["未来可预约范围内该检查暂无可用号源"]

    req = request(exams, rows)
    first, second = make_plans(req, CHECKER), make_plans(req, CHECKER)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    # Candidate order does not matter either.
    shuffled = msgspec.structs.replace(req, candidates={k: v[::-1] for k, v in reversed(req.candidates.items())})
    assert msgspec.json.encode(make_plans(shuffled, CHECKER)) == msgspec.json.encode(first)


def test_full_bladder_exam_is_not_first_at_opening_and_unplaced_pairs_say_why() -> None:
    pelvic = exam("US-PELVIC", "盆腔超声", "US", full_bladder=True)
    rows = {"US-PELVIC": windows(MONDAY, "US1"), "ECG-REST": windows(MONDAY, "ECG1")}
    req = request([pelvic, ECG], rows)
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    first = best.items[0]
    assert first.exam_code == "ECG-REST" or local(first.starts_at).time() >= time(9)
    assert exhaustive_best(req, CHECKER) == plan_score(best)

    # Two iodine exams with a single day of slots: one of them cannot be placed, and says why.
    rows = {"CT-ABD-C": windows(MONDAY, "CT1"), "CT-CHEST-C": windows(MONDAY, "CT2")}
    req = request([CT_ABD_C, CT_CHEST_C], rows)
    result = make_plans(req, CHECKER)
    assert_valid(req, result, CHECKER)
    best = result.plans[0]
    assert len(best.items) == 1 and len(best.unplaced) == 1
    assert best.unplaced[0].rule_ids == ["T06-IODINE-TWICE-7D"]
    assert exhaustive_best(req, CHECKER) == plan_score(best)


@pytest.mark.skipif(not DEFAULT_RULES.exists(), reason="no default_rules.json")
def test_default_rules_case_one() -> None:
    checker = Checker(compile_rules(msgspec.json.decode(DEFAULT_RULES.read_bytes(), type=list[RuleSpec])), TZ)
    days = [MONDAY + timedelta(days=k) for k in range(3)]
    rows = {
        "US-ABD-UPPER": [w for d in days for w in windows(d, "US1")],
        "ES-GASTRO-PAINLESS": [w for d in days for w in windows(d, "GS2", end="12:00")],
        "ECG-REST": [w for d in days for w in windows(d, "ECG1")],
    }
    facts = {"anaesthesia_assessment": "passed", "implants_declared": True}
    req = request([ECG, GASTRO_PAINLESS, US_ABD], rows, facts=facts)
    result = make_plans(req, checker)
    assert_valid(req, result, checker)
    best = result.plans[0]
    assert best.visit_days == 1 and not best.unplaced
    assert [i.exam_code for i in best.items] == ["US-ABD-UPPER", "ES-GASTRO-PAINLESS", "ECG-REST"]
    assert any("家属陪同" in line for line in best.preparation)


# -- properties -----------------------------------------------------------------------------------

MODALITIES = ("US", "CT", "MR", "ES", "ECG")
TAGS = ("t1", "t2", "t3")
RESOURCES = (("R1", "main"), ("R2", "main"), ("R3", "east"), ("R4", "east"))


@st.composite
def selectors(draw: st.DrawFn, codes: list[str]) -> dict[str, Any]:
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return {}
    if choice == 1:
        return {"fasting": draw(st.booleans())}
    if choice == 2:
        return {"modality": draw(st.lists(st.sampled_from(MODALITIES), min_size=1, max_size=2, unique=True))}
    if choice == 3:
        return {"tags": [draw(st.sampled_from(TAGS))]}
    if choice == 4:
        return {"contrast": ["iodine"]}
    if choice == 5:
        return {"full_bladder": True}
    return {"codes": [draw(st.sampled_from(codes))]}


@st.composite
def rule_specs(draw: st.DrawFn, codes: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 5))):
        kind = draw(
            st.sampled_from(
                ["same_day_order", "min_gap", "time_of_day", "prep_window", "prerequisite", "contraindication",
                 "travel_gap"]
            )
        )  # fmt: skip
        spec: dict[str, Any] = {
            "id": f"P{n}",
            "kind": kind,
            "severity": draw(st.sampled_from(["block", "warn"])),
            "message": f"{kind} {{a}} {{b}}",
            "a": draw(selectors(codes)),
        }
        if kind == "same_day_order":
            spec["b"] = draw(selectors(codes))
        elif kind == "min_gap":
            spec["b"] = draw(selectors(codes))
            spec["params"] = {"min_hours": draw(st.sampled_from([1, 2, 4, 24, 48])), "directed": draw(st.booleans())}
        elif kind == "time_of_day":
            spec["params"] = {
                "latest_start": draw(st.sampled_from([None, "09:30", "11:30", "15:00"])),
                "before_others": draw(st.booleans()),
            }
        elif kind == "prep_window":
            spec["params"] = {"prep_minutes": draw(st.sampled_from([30, 60, 90])), "day_start": "08:00"}
        elif kind == "prerequisite":
            spec["params"] = {"fact": "f1", "equals": True, "notice": "陪同"}
        elif kind == "contraindication":
            spec["params"] = {"fact": "f2", "op": "eq", "value": True}
        else:
            cross = draw(st.sampled_from([30, 60, 90]))
            spec["params"] = {
                "same_campus_minutes": draw(st.sampled_from([0, 30])),
                "cross_campus_minutes": cross,
                "campus_minutes": draw(st.sampled_from([{}, {"main>east": 30}, {"east>main": 120}])),
            }
        out.append(spec)
    return out


@st.composite
def instances(draw: st.DrawFn, max_windows: int = 5) -> tuple[PlanRequest, Checker]:
    n = draw(st.integers(2, 4))
    exams: list[ExamType] = []
    for i in range(n):
        exams.append(
            exam(
                f"E{i}",
                f"检查{i}",
                draw(st.sampled_from(MODALITIES)),
                fasting=draw(st.booleans()),
                full_bladder=draw(st.booleans()),
                contrast=draw(st.sampled_from([None, None, "iodine", "gadolinium"])),
                anaesthesia=draw(st.booleans()),
                tags=tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True))),
            )
        )
    codes = [e.code for e in exams]
    checker = checker_of(draw(rule_specs(codes)))
    n_days = draw(st.integers(1, 3))
    grid = [f"{h:02d}:{m:02d}" for h in range(8, 17) for m in (0, 30)]
    rows: dict[str, list[tuple[str, str, int, int]]] = {}
    for e in exams:
        mine = []
        for _ in range(draw(st.integers(0 if n > 2 else 1, max_windows))):
            day = MONDAY + timedelta(days=draw(st.integers(0, n_days - 1)))
            start = at(day, draw(st.sampled_from(grid)))
            resource, campus = draw(st.sampled_from(RESOURCES))
            minutes = draw(st.sampled_from([30, 30, 60]))
            mine.append((resource, campus, start, start + minutes * 60))
        rows[e.code] = mine
    existing = []
    for j in range(draw(st.integers(0, 2))):
        day = MONDAY + timedelta(days=draw(st.integers(-2, n_days - 1)))
        start = at(day, draw(st.sampled_from(grid)))
        resource, campus = draw(st.sampled_from(RESOURCES))
        other = draw(st.sampled_from([*exams, ECG, CT_ABD_C, BARIUM]))
        existing.append(Placed(f"A{j}", other, start, start + 1800, resource, campus, proposed=False))
    facts = {k: draw(st.booleans()) for k in ("f1", "f2") if draw(st.booleans())}
    prefs = draw(
        st.sampled_from(
            [Preferences(), Preferences(), Preferences(part_of_day="morning"), Preferences(campus="main"),
             Preferences(avoid_days=[MONDAY])]
        )
    )  # fmt: skip
    req = request(exams, rows, facts=facts, existing=existing, prefs=prefs)
    return msgspec.structs.replace(req, max_plans=draw(st.integers(1, 4))), checker


PROPERTY = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(instances())
def test_every_plan_obeys_every_rule_and_plans_are_sorted(case: tuple[PlanRequest, Checker]) -> None:
    req, checker = case
    result = make_plans(req, checker)
    assert result.plans
    assert_valid(req, result, checker)
    assert result.complete_search


@PROPERTY
@given(instances())
def test_the_best_plan_matches_brute_force(case: tuple[PlanRequest, Checker]) -> None:
    req, checker = case
    result = make_plans(req, checker)
    assert result.complete_search
    assert plan_score(result.plans[0]) == exhaustive_best(req, checker), [r.spec for r in checker.rules]


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_windows=9))
def test_the_best_plan_matches_brute_force_on_busier_instances(case: tuple[PlanRequest, Checker]) -> None:
    req, checker = case
    result = make_plans(req, checker)
    assert result.complete_search
    assert_valid(req, result, checker)
    assert plan_score(result.plans[0]) == exhaustive_best(req, checker), [r.spec for r in checker.rules]


def test_node_limit_stops_the_search_but_still_answers() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(10)]
    rows = {e.code: [w for d in days for w in windows(d, f"R-{e.code}")] for e in (US_ABD, ECG, US_THYROID, CT_ABD_C)}
    for limit in (2, 5):
        req = msgspec.structs.replace(request([US_ABD, ECG, US_THYROID, CT_ABD_C], rows), node_limit=limit)
        result = make_plans(req, CHECKER)
        assert not result.complete_search and result.nodes == limit + 1
        assert result.plans  # the plans found so far, or at worst nothing booked
        assert_valid(req, result, CHECKER)
    assert make_plans(msgspec.structs.replace(req, node_limit=200_000), CHECKER).complete_search


def test_alternatives_are_other_days_or_other_splits() -> None:
    days = [MONDAY + timedelta(days=k) for k in range(3)]
    rows = {
        "US-THYROID": [w for d in days for w in windows(d, "US1", end="10:00")],
        "ECG-REST": [w for d in days for w in windows(d, "ECG1", end="10:00")],
    }
    req = msgspec.structs.replace(request([US_THYROID, ECG], rows), max_plans=4)
    result = make_plans(req, CHECKER)
    assert result.complete_search
    assert_valid(req, result, CHECKER)
    one_day = result.plans[:3]
    # Not the same morning shifted by half an hour: each alternative is another day...
    assert [p.days for p in one_day] == [[d] for d in days]
    assert all(p.minutes_in_hospital == 90 for p in one_day)
    # ...or another split of the exams over the days.
    assert result.plans[3].visit_days == 2
    assert exhaustive_best(req, CHECKER) == plan_score(result.plans[0])


def test_a_min_gap_across_days_can_prefer_a_longer_first_day() -> None:
    """The first day's shortest schedule ends the iodine CT at 09:00, which rules out the second
    iodine CT's 08:00 window a week later; the longer first day (CT at 07:00) makes the second day
    far shorter. The first day must offer both schedules (a Pareto set), not just its best."""
    checker = checker_of([r for r in RULES if r["id"] == "T06-IODINE-TWICE-7D"])
    week = MONDAY + timedelta(days=7)
    rows = {
        "CT-ABD-C": [
            ("CT1", "main", at(MONDAY, "07:00"), at(MONDAY, "07:30")),
            ("CT1", "main", at(MONDAY, "08:30"), at(MONDAY, "09:00")),
        ],
        "ECG-REST": [("ECG1", "main", at(MONDAY, "08:00"), at(MONDAY, "08:30"))],
        "CT-CHEST-C": [
            ("CT2", "main", at(week, "08:00"), at(week, "08:30")),
            ("CT2", "main", at(week, "15:00"), at(week, "15:30")),
        ],
        "MR-HEAD": [("MR1", "main", at(week, "08:30"), at(week, "09:00"))],
    }
    req = request([CT_ABD_C, ECG, CT_CHEST_C, MR_HEAD], rows)
    result = make_plans(req, checker)
    assert result.complete_search
    assert_valid(req, result, checker)
    best = result.plans[0]
    assert best.days == [MONDAY, week] and not best.unplaced
    assert best.minutes_in_hospital == 90 + 60  # not 60 + 420
    assert local(item_of(best, "CT-ABD-C").starts_at).time() == time(7)
    assert exhaustive_best(req, checker) == plan_score(best)


def test_selector_sanity() -> None:
    # The rule engine's selector is what the planner's relevance tables rely on.
    assert Selector().matches(ECG)
    assert not Selector(tags=["gastroscopy"]).matches(US_ABD)
