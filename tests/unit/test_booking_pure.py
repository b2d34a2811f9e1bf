"""Pure parts of the booking core: slot windows, the day index, availability per channel, settings."""

from __future__ import annotations

from datetime import date, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.booking.availability import places_for
from app.booking.generation import Template, plan_slots, windows
from app.booking.index import BookedRow, DayIndex, LockRow, SlotRow, pool_field, pool_name
from app.booking.keys import KeyBuilder
from app.booking.slot_store import SlotView
from app.settings import load_settings

TZ = ZoneInfo("Asia/Shanghai")


def template(**kw: object) -> Template:
    base: dict[str, object] = dict(
        id=1,
        resource_id="CT1",
        weekday=1,
        start_time=time(8),
        end_time=time(10),
        window_min=30,
        capacity=4,
        quotas={"ward": 1},
        valid_from=date(2000, 1, 1),
        valid_to=None,
    )
    base.update(kw)
    return Template(**base)  # type: ignore[arg-type]


def test_windows_follow_the_template_on_its_weekday_only() -> None:
    monday, tuesday = date(2026, 11, 30), date(2026, 12, 1)
    got = windows(template(), monday, TZ)
    assert [(s.strftime("%H:%M"), e.strftime("%H:%M")) for s, e in got] == [
        ("08:00", "08:30"),
        ("08:30", "09:00"),
        ("09:00", "09:30"),
        ("09:30", "10:00"),
    ]
    assert got[0][0].utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert windows(template(), tuesday, TZ) == []


def test_a_window_that_would_overrun_the_end_is_dropped() -> None:
    assert len(windows(template(end_time=time(9, 45)), date(2026, 11, 30), TZ)) == 3


def test_validity_range_is_respected() -> None:
    monday = date(2026, 11, 30)
    assert windows(template(valid_from=date(2026, 12, 1)), monday, TZ) == []
    assert windows(template(valid_to=date(2026, 11, 29)), monday, TZ) == []


def test_plan_slots_is_deterministic_and_first_template_wins_a_shared_window() -> None:
    days = [date(2026, 11, 30) + timedelta(days=n) for n in range(14)]
    a, b = template(id=1, capacity=4), template(id=2, capacity=9)
    planned = plan_slots([a, b], days, TZ)
    assert len(planned) == 8  # two Mondays x four windows
    assert {p.template_id for p in planned} == {1}
    assert plan_slots([a, b], days, TZ) == planned


def test_day_index_counts_pools_locks_and_patients() -> None:
    index = DayIndex(
        day=date(2030, 1, 1),
        slots=[SlotRow(1, "CT1", 100, 200, 5, {"ward": 2, "emergency": 1}, 3, "open")],
        booked=[
            BookedRow(1, 7, "CT-HEAD", 70, "ward", "h1"),
            BookedRow(1, 8, "CT-ABD", 80, "open", "h2"),
            BookedRow(1, 9, "CT-CHEST", 90, "open", "h3"),
        ],
        locks=[LockRow(1, ["self"]), LockRow(1, None), LockRow(1, ["self"])],
    )
    fields = index.slot_fields()[1]
    assert fields["o"] == "0" and fields["q:ward"] == "1" and fields["q:emergency"] == "1"
    assert fields["lk:self"] == "2" and fields["lk:*"] == "1" and fields["b"] == "3"
    keys, payload = index.to_payload(KeyBuilder("hy", "h1").day(index.day))
    assert keys[0] == "hy:{h1:2030-01-01}:slot:1"
    assert all(k.startswith("hy:{h1:2030-01-01}:") for k in keys)  # one hash slot for the whole day
    patient_ops = [op for op in payload if str(keys[int(op[0]) - 1]).endswith(":pt:7")]
    assert patient_ops == [[patient_ops[0][0], "h", "1", "100|200|CT-HEAD|h1|b|70"]]


def test_pool_names_round_trip() -> None:
    for name in ("open", "ward", "emergency"):
        assert pool_name(pool_field(name)) == name


def view(**kw: object) -> SlotView:
    base: dict[str, object] = dict(
        slot_id=1,
        resource_id="CT1",
        starts_at=1000,
        ends_at=2000,
        status="open",
        capacity=5,
        booked=1,
        open_left=2,
        quota_left={"ward": 2},
        locked_channels=[],
    )
    base.update(kw)
    return SlotView(**base)  # type: ignore[arg-type]


def test_places_for_a_channel() -> None:
    assert places_for(view(), "ward", 0) == (4, False)
    assert places_for(view(), "desk", 0) == (2, False)
    assert places_for(view(), None, 0) == (4, False)
    assert places_for(view(locked_channels=["self"]), "self", 0) == (0, True)
    assert places_for(view(locked_channels=["self"]), "desk", 0) == (2, False)
    assert places_for(view(locked_channels=["*"]), "desk", 0) == (0, True)
    assert places_for(view(), "desk", 2000) == (0, False)  # ended
    assert places_for(view(status="closed"), "desk", 0) == (0, False)


@given(cap=st.integers(0, 50), booked=st.integers(0, 50), open_left=st.integers(0, 50), quota=st.integers(0, 50))
def test_places_never_exceed_what_is_left(cap: int, booked: int, open_left: int, quota: int) -> None:
    places, _ = places_for(
        view(capacity=cap, booked=booked, open_left=open_left, quota_left={"ward": quota}), "ward", 0
    )
    assert 0 <= places <= max(0, cap - booked)


def test_settings_defaults_and_errors() -> None:
    s = load_settings({})
    assert s.embedded and s.booking.timezone == "Asia/Shanghai" and s.booking.horizon_days == 14
    s = load_settings({"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://z", "HY_PORT": "9000"})
    assert not s.embedded and s.server.port == 9000
    with pytest.raises(ValueError, match="HY_PORT"):
        load_settings({"HY_PORT": "eighty"})
