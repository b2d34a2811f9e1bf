"""Backoff of failed notices: doubling, capped, jitter only ever shortens the wait."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.notify.backoff import RetryPolicy, backoff_delay

POLICY = RetryPolicy(base_s=5.0, cap_s=900.0, jitter=0.2)


def test_backoff_doubles_from_the_base_without_jitter() -> None:
    waits = [backoff_delay(n, POLICY, rand=lambda: 0.0) for n in range(1, 6)]
    assert waits == [timedelta(seconds=s) for s in (5, 10, 20, 40, 80)]


def test_backoff_stops_at_the_cap_even_after_very_many_attempts() -> None:
    assert backoff_delay(9, POLICY, rand=lambda: 0.0) == timedelta(seconds=900)
    assert backoff_delay(10_000, POLICY, rand=lambda: 0.0) == timedelta(seconds=900)


def test_backoff_refuses_an_attempt_count_below_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(0, POLICY)


@given(attempts=st.integers(min_value=1, max_value=200), r=st.floats(min_value=0.0, max_value=0.999999))
def test_backoff_with_jitter_stays_within_80_to_100_percent_of_the_capped_wait(attempts: int, r: float) -> None:
    plain = backoff_delay(attempts, POLICY, rand=lambda: 0.0)
    jittered = backoff_delay(attempts, POLICY, rand=lambda: r)
    assert plain * 0.8 <= jittered <= plain <= timedelta(seconds=POLICY.cap_s)
    assert jittered > timedelta(0)


@given(attempts=st.integers(min_value=1, max_value=60))
def test_backoff_never_shrinks_as_attempts_rise(attempts: int) -> None:
    assert backoff_delay(attempts + 1, POLICY, rand=lambda: 0.0) >= backoff_delay(attempts, POLICY, rand=lambda: 0.0)
