"""The 07:00 release storm under Locust: clerks booking distinct (patient, order) pairs as fast as
the server answers.

    HY_STORM_FILE=storm.json locust -f load_tests/locustfile_release_storm.py --headless \
        -u 200 -r 200 -t 20s --only-summary --csv out/book --host http://127.0.0.1:8000 BookingUser
    locust -f load_tests/locustfile_release_storm.py ... PingUser       # the /ping ceiling

HY_OPEN_RATE_PER_USER=r paces each user to r bookings a second (an open arrival rate of users x r,
as long as a booking answers within 1/r s; run_bench --open-rates).

HY_STORM_FILE is JSON: {"pairs": [[patient_id, order_id], ...], "slot_ids": [...]}. Each pair is
used once across all users of the process (a shared counter); a user stops when the pairs run out,
and the run quits once every booking user has stopped (or at -t, whichever comes first).

Outcomes: 201 is "book"; 409 with code slot_unavailable is "book (full)" and counted as a success
(the expected answer once the slots are gone), so Locust's failures are only real errors.

Login: argon2id verification of a password takes ~0.1-0.3 s of CPU on the server's event loop, so
200 users logging in at once would stall the server for many seconds and the measurement with it.
By default (HY_STORM_LOGIN=shared) the first user of the process logs in as clerk and every user
reuses that token; HY_STORM_LOGIN=per-user makes each user log in once in on_start. HY_STORM_TOKEN
skips the login altogether.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from typing import Any

import gevent
import locust_final_stats  # noqa: F401 - registers the final --csv write
from gevent.lock import Semaphore
from locust import constant, constant_throughput, task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser

USERNAME = os.environ.get("HY_STORM_USER", "clerk")
PASSWORD = os.environ.get("HY_STORM_PASSWORD", "Huiyue@2026")
LOGIN_MODE = os.environ.get("HY_STORM_LOGIN", "shared")
CHANNEL = "desk"
# Open arrival (run_bench --open-rates): each user paces itself to this many bookings a second, so
# many users together offer a fixed rate whatever the latency (0: as fast as the server answers).
OPEN_RATE_PER_USER = float(os.environ.get("HY_OPEN_RATE_PER_USER") or 0)


class _Shared:
    """Per-process state: the pairs, the counter that hands them out, the shared token."""

    def __init__(self) -> None:
        self.loaded = False
        self.pairs: list[tuple[int, int]] = []
        self.slot_ids: list[int] = []
        self.counter = itertools.count()
        self.token: str | None = os.environ.get("HY_STORM_TOKEN") or None
        self.login_lock = Semaphore()
        self.active_bookers = 0
        self.exhausted = False

    def load(self) -> None:
        if self.loaded:
            return
        path = os.environ.get("HY_STORM_FILE")
        if not path:
            raise RuntimeError("HY_STORM_FILE is not set (JSON with pairs and slot_ids)")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        self.pairs = [(int(p), int(o)) for p, o in data["pairs"]]
        self.slot_ids = [int(s) for s in data["slot_ids"]]
        if not self.pairs or not self.slot_ids:
            raise RuntimeError(f"{path}: no pairs or no slot ids")
        self.loaded = True

    def take(self) -> tuple[int, tuple[int, int]] | None:
        """The next unused pair and its index, or None once they are all handed out."""
        n = next(self.counter)
        if n >= len(self.pairs):
            self.exhausted = True
            return None
        return n, self.pairs[n]


shared = _Shared()


def _login(user: FastHttpUser) -> str:
    with user.client.post(
        "/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD}, name="login", catch_response=True
    ) as resp:
        if resp.status_code != 200:
            resp.failure(f"login {resp.status_code}: {resp.text[:200]}")
            raise StopUser()
        return str(resp.json()["token"])


class BookingUser(FastHttpUser):
    """Books one distinct pair per request into the bench slots, round-robin over the slots."""

    wait_time = constant_throughput(OPEN_RATE_PER_USER) if OPEN_RATE_PER_USER > 0 else constant(0)
    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        shared.load()
        shared.active_bookers += 1
        if OPEN_RATE_PER_USER > 0:
            # Paced users start at random points of their first period: an open arrival from the
            # first second, not a burst of every user at once followed by a queue.
            gevent.sleep(random.uniform(0, 1 / OPEN_RATE_PER_USER))
        if LOGIN_MODE == "per-user":
            self.token = _login(self)
        else:
            with shared.login_lock:
                if shared.token is None:
                    shared.token = _login(self)
            self.token = shared.token
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def on_stop(self) -> None:
        shared.active_bookers -= 1
        if shared.exhausted and shared.active_bookers <= 0:
            # Every pair has been tried and no request is in flight: end the run now rather than at -t.
            # quit() kills the user greenlets, so it must not run in this one.
            runner = self.environment.runner
            if runner is not None:
                gevent.spawn_later(0.2, runner.quit)

    @task
    def book(self) -> None:
        taken = shared.take()
        if taken is None:
            raise StopUser()
        n, (patient_id, order_id) = taken
        slot_id = shared.slot_ids[n % len(shared.slot_ids)]
        body = {"patient_id": patient_id, "channel": CHANNEL, "items": [{"order_id": order_id, "slot_id": slot_id}]}
        with self.client.post(
            "/api/v1/appointments", json=body, headers=self.headers, name="book", catch_response=True
        ) as resp:
            if resp.status_code == 201:
                resp.success()
            elif resp.status_code == 409 and _code(resp) == "slot_unavailable":
                resp.request_meta["name"] = "book (full)"
                resp.success()
            else:
                resp.failure(f"{resp.status_code} {_code(resp) or resp.text[:120]}")


class PingUser(FastHttpUser):
    """GET /ping: the HTTP ceiling of the same server, for the bookings/ping ratio."""

    wait_time = constant(0)

    @task
    def ping(self) -> None:
        self.client.get("/ping", name="ping")


def _code(resp: Any) -> str | None:
    try:
        return str(resp.json().get("code"))
    except Exception:
        return None
