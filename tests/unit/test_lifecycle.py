"""The closed loop's state machine, table-driven: every (event, state) pair is either the expected
move or refused. The expected table below is written out by hand, independently of the module."""

from __future__ import annotations

import pytest

from app.orders import lifecycle
from app.queue import model

# event -> {state before: state after}; every pair not listed must be refused.
EXPECTED: dict[str, dict[str, str]] = {
    "booked": {"ordered": "booked", "no_show": "booked"},
    "pay": {"ordered": "ordered", "no_show": "no_show", "booked": "paid"},
    "rescheduled": {"booked": "booked", "paid": "paid"},
    "cancelled": {"booked": "ordered", "paid": "ordered"},
    "checked_in": {"booked": "checked_in", "paid": "checked_in"},
    "started": {"checked_in": "started"},
    "done": {"started": "done"},
    "aborted": {"checked_in": "aborted", "started": "aborted"},
    "no_show": {"booked": "no_show", "paid": "no_show"},
    "report_written": {"done": "report_written"},
    "verified": {"report_written": "verified"},
    "published": {"verified": "published"},
    "viewed": {"published": "viewed", "viewed": "viewed"},
    "order_cancelled": {"ordered": "cancelled", "no_show": "cancelled"},
}

PAIRS = [(event, state) for event in EXPECTED for state in lifecycle.STATES]


def test_the_table_covers_exactly_the_expected_events() -> None:
    assert set(lifecycle.TRANSITIONS) == set(EXPECTED)
    assert set(lifecycle.STATE_NAMES) == set(lifecycle.STATES)


@pytest.mark.parametrize(("event", "state"), PAIRS)
def test_every_transition_is_allowed_or_refused_as_specified(event: str, state: str) -> None:
    expected = EXPECTED[event].get(state)
    if expected is None:
        with pytest.raises(lifecycle.InvalidTransition):
            lifecycle.target(event, state)
        message = lifecycle.refusal_message(event, state)
        assert lifecycle.STATE_NAMES[state] in message and message.startswith("检查申请当前为")
    else:
        assert lifecycle.target(event, state) == expected


def test_the_happy_path_runs_from_order_to_viewed() -> None:
    state = "ordered"
    for event in ("booked", "pay", "checked_in", "started", "done", "report_written", "verified", "published"):
        state = lifecycle.target(event, state)
    assert state == "published"
    assert lifecycle.target("viewed", state) == "viewed"


def test_terminal_states_lead_nowhere_but_repeated_viewing() -> None:
    assert lifecycle.allowed_events("cancelled") == []
    assert lifecycle.allowed_events("aborted") == []
    assert lifecycle.allowed_events("viewed") == ["viewed"]


def test_only_steps_without_a_path_of_their_own_are_open_to_the_order_events_api() -> None:
    assert set(lifecycle.API_EVENTS) == {"pay", "report_written", "verified", "published", "viewed", "order_cancelled"}
    assert "patient" in lifecycle.TRANSITIONS["viewed"].roles
    assert "patient" not in lifecycle.TRANSITIONS["pay"].roles


def test_priority_classes_and_marks() -> None:
    from datetime import date

    day = date(2026, 12, 1)
    kw = {"day": day, "elderly_age": 70, "child_age": 6, "military": False}
    assert model.priority_of(
        order_priority="emergency", patient_class="outpatient", birth_date=date(1990, 1, 1), **kw
    ) == (
        0,
        "emergency",
    )
    assert model.priority_of(
        order_priority="routine", patient_class="outpatient", birth_date=date(1990, 1, 1), requested="green", **kw
    ) == (1, "green")
    assert model.priority_of(
        order_priority="routine", patient_class="outpatient", birth_date=date(1956, 12, 1), **kw
    ) == (
        2,
        "elderly",
    )
    assert model.priority_of(
        order_priority="routine", patient_class="outpatient", birth_date=date(1956, 12, 2), **kw
    ) == (
        3,
        "",
    )
    assert model.priority_of(
        order_priority="routine", patient_class="outpatient", birth_date=date(2022, 1, 1), **kw
    ) == (
        2,
        "child",
    )
    kw["military"] = True
    assert model.priority_of(
        order_priority="routine", patient_class="outpatient", birth_date=date(1990, 1, 1), **kw
    ) == (
        2,
        "military",
    )


def test_the_spoken_line_names_number_and_room_only() -> None:
    room = model.room_call_name("CT2 (联影 uCT 760)", "医技楼1层 CT2室")
    assert room == "CT2室"
    assert model.call_line(23, room) == "请 0023 号 到 CT2室 检查"
    assert model.room_call_name("胃镜1室", "") == "胃镜1室"


def test_expected_starts_follow_the_line_and_never_precede_the_appointment() -> None:
    now = 1_000_000_000_000
    state = {
        "in_exam": [{"id": "1", "dur": 10, "sa": now - 5 * 60_000, "at": 0}],
        "calling": [{"id": "2", "dur": 10, "at": 0}],
        "waiting": [{"id": "3", "dur": 20, "at": 0}, {"id": "4", "dur": 5, "at": (now + 3 * 3600_000) // 1000}],
    }
    out = model.expected_starts(state, now)
    assert out["2"] == now + 5 * 60_000
    assert out["3"] == now + 15 * 60_000
    assert out["4"] == now + 3 * 3600_000
    later = {**state, "waiting": [{"id": "9", "dur": 40, "at": 0}, *state["waiting"]]}
    moved = model.delayed(out, model.expected_starts(later, now), 30 * 60_000)
    assert [m[0] for m in moved] == ["3"]  # "4" is held by its appointment time anyway
