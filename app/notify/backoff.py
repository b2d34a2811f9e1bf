"""When a failed message is tried again: exponential backoff, capped, with a little jitter so the
messages that failed together during an outage do not all come back in the same second."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True):
    base_s: float = 5.0
    cap_s: float = 900.0
    jitter: float = 0.2  # the delay is shortened by up to this fraction, at random


def backoff_delay(attempts: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> timedelta:
    """The wait after the `attempts`-th failed attempt (1 = the first): base, 2 base, 4 base, ...
    up to the cap. Jitter only shortens it, so the cap holds and the wait never reaches zero."""
    if attempts < 1:
        raise ValueError(f"attempts counts failures and starts at 1, got {attempts}")
    exponent = min(attempts - 1, 62)  # 2**62 base seconds is far past any cap
    delay = min(policy.cap_s, policy.base_s * 2.0**exponent)
    return timedelta(seconds=delay * (1.0 - policy.jitter * rand()))
