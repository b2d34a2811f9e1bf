"""A mixed clinical day under Locust: the booking centre and the clinics reading availability, asking the
planner, booking, cancelling and rescheduling; technicians checking patients in and working their
room queues; live screens on WebSockets. Driven by `python -m load_tests.run_mixed`, which prepares
the data (load_tests/mixed_data.py), starts the server and reads the results; by hand:

    HY_MIXED_FILE=mixed.json locust -f load_tests/locustfile_clinical_day.py --headless -u 20 -r 20 \
        -t 60s --only-summary --csv out/mixed --host http://127.0.0.1:8000

Users (one Locust process; the data pools below are per process, so do not run several workers):

* `ClerkUser` (booking centre, channel desk, weight 3) and `DoctorUser` (clinic workstation, channel
  clinic, weight 2): availability by exam over the pool days and by department-day, the live grid
  snapshot, single bookings (availability first, then a slot with places left), cancels and
  reschedules of the bookings this process made, the planner for a patient with three exams and
  the booking of its best plan as one bundle (clerks; doctors only ask for plans), the patient's
  appointments. With HY_MIXED_USER_RATE > 0 each user runs that many tasks a second
  (`constant_throughput`: an open, fixed offered rate); 0 runs them back to back (closed loop).
* `TechUser` (HY_MIXED_TECHS of them, one room each): a patient's exam day, paced at
  HY_MIXED_TECH_RATE flows a second per room: a doctor books today's slot in progress in the room
  (same-day, clinic channel), the desk takes payment for outpatients, the technician checks the
  patient in by the slip's barcode, reads the room queue, calls the next patient (sometimes calls
  again), starts and finishes the exam.
* `ViewerUser` (HY_MIXED_VIEWERS of them): live screens, in turn a booking day's radiology grid,
  today's radiology grid, a room's call screen and the utilisation wall; each stays connected about
  HY_MIXED_WS_HOLD seconds reading frames (acknowledging every 16th, as the pages do), then closes
  and opens again. Each delta is recorded as a "WS" request whose time is publish -> arrival.

Outcomes: 409 "slot full" (slot_unavailable) and "plan slot taken" (plan_slot_taken) are expected and
recorded under their own names ("book (full)", "plans/book (taken)"), counted as successes; anything
else that is not the expected status is a failure. A 401 (the 8-hour session ran out during a long
soak) renews the shared login and retries once ("(session renewed)").

Data never runs out: a booked single or bundle goes back to the free pool when it is cancelled, and
the process keeps at most HY_MIXED_LIVE_CAP live single bookings (past that, "book" cancels instead).
Check-in orders are consumed (they end `done`): the driver sizes that pool for the run; when it runs
out the technicians only read their queue (counted as `checkin_pool_empty`).

Phases (HY_MIXED_CYCLE_S > 0, the soak): the task mix cycles through the day's phases, each a
quarter of the cycle: `release` (07:00 slot release: bookings on the first pool day's morning, the
most contended slots), `peak` (booking peak, planner), `clinic` (check-ins and queue calls at twice
the technicians' pace, reads) and `changes` (afternoon cancels and reschedules). 0: one all-day mix.

Logins are shared per process (one per account: clerk, doctor, tech, depthead): argon2 verification
is deliberately slow (see locustfile_release_storm.py).

Files written: HY_MIXED_INTERVAL_FILE (one JSON line every HY_MIXED_INTERVAL_S seconds: requests,
failures, p50/p95/p99 of the HTTP requests in that interval, WebSocket frames, bookings, counters)
and HY_MIXED_SUMMARY (counters and the HTTP aggregate, at quit).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import time
from collections import Counter, deque
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import gevent
import locust_final_stats  # noqa: F401 - registers the final --csv write
import websocket
from gevent.lock import Semaphore
from locust import User, between, constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

PASSWORD = os.environ.get("HY_MIXED_PASSWORD", "Huiyue@2026")
TZ = ZoneInfo("Asia/Shanghai")
USER_RATE = float(os.environ.get("HY_MIXED_USER_RATE", "0"))
TECH_RATE = float(os.environ.get("HY_MIXED_TECH_RATE", "1"))
TECHS = int(os.environ.get("HY_MIXED_TECHS", "2"))
VIEWERS = int(os.environ.get("HY_MIXED_VIEWERS", "2"))
WS_HOLD_S = float(os.environ.get("HY_MIXED_WS_HOLD", "30"))
CYCLE_S = float(os.environ.get("HY_MIXED_CYCLE_S", "0"))
LIVE_CAP = int(os.environ.get("HY_MIXED_LIVE_CAP", "300"))
INTERVAL_S = float(os.environ.get("HY_MIXED_INTERVAL_S", "30"))
PHASES = ("release", "peak", "clinic", "changes")
WS_EVENT = "WS"

# Task weights of the desk and the clinic per phase ("day": the whole day at once).
CLERK_MIX: dict[str, dict[str, float]] = {
    "day": {
        "avail_exam": 5,
        "avail_day": 2,
        "grid": 3,
        "book": 4,
        "cancel": 2,
        "reschedule": 2,
        "bundle": 1,
        "cancel_bundle": 1,
        "patient_view": 1,
    },
    "release": {"avail_exam": 6, "avail_day": 1, "grid": 3, "book": 8, "cancel": 1, "bundle": 1},
    "peak": {
        "avail_exam": 5,
        "avail_day": 2,
        "grid": 2,
        "book": 5,
        "cancel": 2,
        "reschedule": 1,
        "bundle": 2,
        "cancel_bundle": 1,
        "patient_view": 1,
    },
    "clinic": {
        "avail_exam": 4,
        "avail_day": 3,
        "grid": 3,
        "book": 2,
        "cancel": 1,
        "reschedule": 1,
        "bundle": 0.5,
        "cancel_bundle": 0.5,
        "patient_view": 3,
    },
    "changes": {
        "avail_exam": 3,
        "grid": 2,
        "book": 2,
        "cancel": 5,
        "reschedule": 5,
        "bundle": 0.5,
        "cancel_bundle": 2,
        "patient_view": 1,
    },
}
DOCTOR_MIX: dict[str, dict[str, float]] = {
    "day": {"avail_exam": 4, "grid": 2, "book": 3, "cancel": 1, "reschedule": 1, "propose": 1, "patient_view": 1},
    "release": {"avail_exam": 5, "grid": 2, "book": 6, "propose": 1},
    "peak": {"avail_exam": 4, "grid": 2, "book": 4, "cancel": 1, "reschedule": 1, "propose": 2, "patient_view": 1},
    "clinic": {"avail_exam": 3, "grid": 3, "book": 2, "cancel": 1, "propose": 1, "patient_view": 3},
    "changes": {"avail_exam": 2, "grid": 2, "book": 1, "cancel": 4, "reschedule": 4, "patient_view": 1},
}
TECH_PACE = {"day": 1.0, "release": 0.5, "peak": 0.5, "clinic": 2.0, "changes": 1.0}  # x HY_MIXED_TECH_RATE
VIEWS = ("grid", "grid-today", "queue", "wall")


def phase() -> str:
    if CYCLE_S <= 0 or day.started is None:
        return "day"
    return PHASES[int((time.time() - day.started) // (CYCLE_S / 4)) % 4]


def phases_between(t0: float, t1: float) -> list[str]:
    """The phases the interval [t0, t1] (epoch s) went through, in order."""
    if CYCLE_S <= 0 or day.started is None:
        return ["day"]
    step = CYCLE_S / 4
    first, last = int((t0 - day.started) // step), int((t1 - day.started) // step)
    return list(dict.fromkeys(PHASES[n % 4] for n in range(max(0, first), max(0, last) + 1)))


def today_local() -> date:
    return datetime.now(UTC).astimezone(TZ).date()


class _Day:
    """Per-process state: the data pools, the shared logins, the counters."""

    def __init__(self) -> None:
        self.loaded = False
        self.started: float | None = None
        self.tokens: dict[str, str] = {}
        self.login_locks: dict[str, Semaphore] = {}
        self.counters: Counter[str] = Counter()
        self.rooms_taken = itertools.count()
        self.viewers_taken = itertools.count()

    def load(self) -> None:
        if self.loaded:
            return
        path = os.environ.get("HY_MIXED_FILE")
        if not path:
            raise RuntimeError("HY_MIXED_FILE is not set (JSON from load_tests/mixed_data.py)")
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        self.pool_days: list[str] = d["pool_days"]
        self.pool_slots: list[tuple[int, str, str]] = [tuple(x) for x in d["pool_slots"]]  # type: ignore[misc]
        self.rooms: list[str] = d["rooms"]
        self.room_slots: dict[str, list[list[Any]]] = d["room_slots"]
        self.single_exam: str = d["single_exam"]
        rnd = random.Random(d["tag"])
        singles = [tuple(x) for x in d["singles"]]
        bundles = [(p, list(o)) for p, o in d["bundles"]]
        rnd.shuffle(singles)
        rnd.shuffle(bundles)
        self.free_singles: deque[tuple[int, int]] = deque(singles)  # type: ignore[arg-type]
        self.live_singles: deque[dict[str, Any]] = deque()
        self.free_bundles: deque[tuple[int, list[int]]] = deque(bundles)
        self.live_bundles: deque[tuple[int, list[int], list[int]]] = deque()  # (patient, orders, appointments)
        self.checkins: deque[tuple[int, int, str]] = deque(tuple(x) for x in d["checkins"])  # type: ignore[misc]
        self.loaded = True

    # -- logins, one per account and process ----------------------------------------------------

    def token(self, user: FastHttpUser, account: str) -> str:
        if account in self.tokens:
            return self.tokens[account]
        lock = self.login_locks.setdefault(account, Semaphore())
        with lock:
            if account not in self.tokens:
                self.tokens[account] = _login(user, account)
        return self.tokens[account]

    def renew(self, account: str, stale: str) -> None:
        if self.tokens.get(account) == stale:
            del self.tokens[account]
            self.counters["sessions_renewed"] += 1


day = _Day()


def _login(user: FastHttpUser, account: str) -> str:
    for _ in range(5):
        with user.client.post(
            "/api/v1/auth/login",
            json={"username": account, "password": PASSWORD},
            name="login",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                resp.success()
                return str(resp.json()["token"])
            resp.failure(f"login {account}: {resp.status_code} {resp.text[:200]}")
        gevent.sleep(1.0)
    raise RuntimeError(f"cannot log in as {account}")


def _code(resp: Any) -> str:
    try:
        return str(resp.json().get("code") or "")
    except Exception:
        return ""


def send(
    user: FastHttpUser,
    method: str,
    path: str,
    *,
    name: str,
    account: str,
    body: Any = None,
    ok: int = 200,
    expected: dict[str, str] | None = None,
) -> tuple[str, Any]:
    """One request as `account`: ("ok", json) on `ok`; (label, json) for an expected refusal (409 with
    code in `expected`, recorded as `name (label)` and counted a success); ("error", None) else."""
    for attempt in (0, 1):
        token = day.token(user, account)
        with user.client.request(
            method,
            path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            name=name,
            catch_response=True,
        ) as resp:
            status = resp.status_code
            if status == ok:
                resp.success()
                try:
                    return "ok", resp.json()
                except Exception:
                    return "ok", None
            code = _code(resp)
            if status == 401 and attempt == 0:
                resp.request_meta["name"] = "(session renewed)"
                resp.success()
                day.renew(account, token)
                continue
            if status == 409 and expected and code in expected:
                label = expected[code]
                resp.request_meta["name"] = f"{name} ({label})"
                resp.success()
                return label, resp.json()
            resp.failure(f"{status} {code or resp.text[:160]}")
            return "error", None
    return "error", None


def pick(weights: dict[str, float]) -> str:
    names = list(weights)
    return random.choices(names, [weights[n] for n in names])[0]


class _Desk(FastHttpUser):
    """What the booking centre and the clinics share."""

    abstract = True
    account = "clerk"
    channel = "desk"
    mix = CLERK_MIX
    connection_timeout = 10.0
    network_timeout = 60.0
    wait_time = constant_throughput(USER_RATE) if USER_RATE > 0 else constant(0)

    def on_start(self) -> None:
        day.load()
        if day.started is None:
            day.started = time.time()
        day.token(self, self.account)

    @task
    def act(self) -> None:
        getattr(self, "t_" + pick(self.mix[phase()]))()

    # -- reads ------------------------------------------------------------------------------------

    def _availability(self, first: str, last: str) -> list[dict[str, Any]]:
        path = f"/api/v1/availability?exam={day.single_exam}&date_from={first}&date_to={last}&channel={self.channel}"
        outcome, data = send(self, "GET", path, name="availability (exam)", account=self.account)
        return list(data["slots"]) if outcome == "ok" and data else []

    def t_avail_exam(self) -> None:
        self._availability(day.pool_days[0], day.pool_days[-1])

    def t_avail_day(self) -> None:
        d = random.choice(day.pool_days)
        path = f"/api/v1/availability?department=RAD&date_from={d}&channel={self.channel}"
        send(self, "GET", path, name="availability (department-day)", account=self.account)

    def t_grid(self) -> None:
        d = random.choice([*day.pool_days, today_local().isoformat()])
        send(self, "GET", f"/api/v1/live/grid?department=RAD&day={d}", name="live grid", account=self.account)

    def t_patient_view(self) -> None:
        if not day.live_singles:
            return self.t_avail_exam()
        b = random.choice(day.live_singles)
        send(
            self,
            "GET",
            f"/api/v1/patients/{b['patient']}/appointments",
            name="patient appointments",
            account=self.account,
        )
        send(self, "GET", f"/api/v1/appointments/{b['appointment']}", name="appointment", account=self.account)

    # -- single bookings --------------------------------------------------------------------------

    def t_book(self) -> None:
        if not day.free_singles or len(day.live_singles) >= LIVE_CAP:
            day.counters["book_turned_cancel"] += 1
            return self.t_cancel()
        patient, order = day.free_singles.popleft()
        if phase() == "release":  # the new day's first slots, everyone at once
            slots = [s for s in self._availability(day.pool_days[0], day.pool_days[0]) if s["available"] > 0][:4]
        else:
            d = random.choice(day.pool_days)
            slots = [s for s in self._availability(d, d) if s["available"] > 0]
        slot_id = random.choice(slots)["slot_id"] if slots else random.choice(day.pool_slots)[0]
        body = {"patient_id": patient, "channel": self.channel, "items": [{"order_id": order, "slot_id": slot_id}]}
        outcome, data = send(
            self,
            "POST",
            "/api/v1/appointments",
            name="book",
            account=self.account,
            body=body,
            ok=201,
            expected={"slot_unavailable": "full"},
        )
        if outcome == "ok":
            a = data["appointments"][0]
            day.live_singles.append(
                {"patient": patient, "order": order, "appointment": a["appointment_id"], "slot": a["slot_id"]}
            )
            day.counters["appointments_booked"] += 1
        elif outcome == "full":
            day.free_singles.append((patient, order))
            day.counters["book_full"] += 1
        else:
            day.counters["singles_lost"] += 1  # unknown state: out of the pools

    def t_cancel(self) -> None:
        if not day.live_singles:
            return self.t_book() if day.free_singles else self.t_avail_exam()
        b = day.live_singles.popleft()
        body = {"channel": self.channel, "reason": "患者要求取消"}
        outcome, _ = send(
            self,
            "POST",
            f"/api/v1/appointments/{b['appointment']}/cancel",
            name="cancel",
            account=self.account,
            body=body,
        )
        if outcome == "ok":
            day.free_singles.append((b["patient"], b["order"]))
            day.counters["cancelled"] += 1
        else:
            day.counters["singles_lost"] += 1

    def t_reschedule(self) -> None:
        if not day.live_singles:
            return self.t_book() if day.free_singles else self.t_avail_exam()
        b = day.live_singles.popleft()
        target = random.choice(day.pool_slots)[0]
        while target == b["slot"]:
            target = random.choice(day.pool_slots)[0]
        body = {"slot_id": target, "channel": self.channel, "reason": "患者要求改约"}
        outcome, data = send(
            self,
            "POST",
            f"/api/v1/appointments/{b['appointment']}/reschedule",
            name="reschedule",
            account=self.account,
            body=body,
            expected={"slot_unavailable": "full"},
        )
        if outcome == "ok":
            a = data["appointment"]
            day.live_singles.append({**b, "appointment": a["appointment_id"], "slot": a["slot_id"]})
            day.counters["rescheduled"] += 1
        elif outcome == "full":
            day.live_singles.append(b)
        else:
            day.counters["singles_lost"] += 1

    # -- the planner and bundles ------------------------------------------------------------------

    def _propose(self, patient: int) -> list[dict[str, Any]]:
        body = {"patient_id": patient, "channel": self.channel, "earliest": day.pool_days[0], "max_plans": 2}
        outcome, data = send(
            self, "POST", "/api/v1/plans/propose", name="plans/propose", account=self.account, body=body
        )
        if outcome != "ok":
            return []
        plans = [p for p in data["plans"] if not p.get("unplaced")]
        if not plans:
            day.counters["plans_none"] += 1
        return plans

    def t_propose(self) -> None:
        if not day.free_bundles:
            return self.t_avail_exam()
        patient, orders = day.free_bundles.popleft()
        try:
            self._propose(patient)
        finally:
            day.free_bundles.append((patient, orders))

    def t_bundle(self) -> None:
        if not day.free_bundles:
            return self.t_cancel_bundle() if day.live_bundles else self.t_avail_exam()
        patient, orders = day.free_bundles.popleft()
        send(self, "GET", f"/api/v1/patients/{patient}/orders", name="patient orders", account=self.account)
        plans = self._propose(patient)
        if not plans:
            day.free_bundles.append((patient, orders))
            return
        items = [{"order_id": i["order_id"], "slot_id": i["slot_id"]} for i in plans[0]["items"]]
        body = {"patient_id": patient, "channel": self.channel, "items": items, "earliest": day.pool_days[0]}
        outcome, data = send(
            self,
            "POST",
            "/api/v1/plans/book",
            name="plans/book",
            account=self.account,
            body=body,
            ok=201,
            expected={"plan_slot_taken": "taken", "slot_unavailable": "full"},
        )
        if outcome == "ok":
            appts = [a["appointment_id"] for a in data["appointments"]]
            day.live_bundles.append((patient, orders, appts))
            day.counters["appointments_booked"] += len(appts)
            day.counters["bundles_booked"] += 1
        elif outcome in ("taken", "full"):
            day.free_bundles.append((patient, orders))
            day.counters["bundle_taken"] += 1
        else:
            day.counters["bundles_lost"] += 1

    def t_cancel_bundle(self) -> None:
        if not day.live_bundles:
            return self.t_bundle() if day.free_bundles else self.t_avail_exam()
        patient, orders, appts = day.live_bundles.popleft()
        body = {"channel": self.channel, "reason": "患者要求取消"}
        failed = 0
        for a in appts:
            outcome, _ = send(
                self,
                "POST",
                f"/api/v1/appointments/{a}/cancel",
                name="cancel (bundle)",
                account=self.account,
                body=body,
            )
            failed += outcome != "ok"
            day.counters["cancelled"] += outcome == "ok"
        if failed:
            day.counters["bundles_lost"] += 1
        else:
            day.free_bundles.append((patient, orders))


class ClerkUser(_Desk):
    """The booking centre (预约中心): desk channel, the planner and bundles."""

    weight = 3
    account = "clerk"
    channel = "desk"
    mix = CLERK_MIX


class DoctorUser(_Desk):
    """The clinic workstation (诊间): clinic channel; asks the planner, books singles."""

    weight = 2
    account = "doctor"
    channel = "clinic"
    mix = DOCTOR_MIX


class TechUser(FastHttpUser):
    """One room's exam day: same-day booking, payment, check-in by barcode, call, start, finish."""

    fixed_count = TECHS
    connection_timeout = 10.0
    network_timeout = 60.0

    def wait_time(self) -> float:
        pace = TECH_RATE * TECH_PACE[phase()]
        if pace <= 0:
            return 1.0
        return max(0.0, 1.0 / pace - (time.monotonic() - self._began))

    def on_start(self) -> None:
        day.load()
        if day.started is None:
            day.started = time.time()
        self.room = day.rooms[next(day.rooms_taken) % len(day.rooms)]
        self._began = time.monotonic()
        for account in ("tech", "doctor", "clerk"):
            day.token(self, account)

    def _slot(self) -> tuple[int, str] | None:
        """A slot of today (hospital time) in this room whose check-in window is open now and that
        does not end within the minute."""
        now = time.time()
        today = today_local().isoformat()
        for slot_id, starts, ends, d in day.room_slots[self.room]:
            if d == today and starts <= now + 50 * 60 and ends > now + 60:
                return int(slot_id), d
        return None

    @task
    def exam_day(self) -> None:
        self._began = time.monotonic()
        room = self.room
        if not day.checkins:
            day.counters["checkin_pool_empty"] += 1
            send(self, "GET", f"/api/v1/queues/{room}", name="queue view", account="tech")
            return
        found = self._slot()
        if found is None:  # the last minute before midnight
            day.counters["checkin_no_slot"] += 1
            return
        slot_id, d = found
        patient, order, klass = day.checkins.popleft()
        body = {"patient_id": patient, "channel": "clinic", "items": [{"order_id": order, "slot_id": slot_id}]}
        outcome, data = send(
            self,
            "POST",
            "/api/v1/appointments",
            name="book (today)",
            account="doctor",
            body=body,
            ok=201,
            expected={"slot_unavailable": "full"},
        )
        if outcome != "ok":
            day.counters["flows_broken"] += 1
            return
        appointment = data["appointments"][0]["appointment_id"]
        day.counters["appointments_booked"] += 1
        if klass == "outpatient":
            outcome, _ = send(
                self, "POST", f"/api/v1/orders/{order}/events", name="pay", account="clerk", body={"event": "pay"}
            )
            if outcome != "ok":
                day.counters["flows_broken"] += 1
                return
        outcome, _ = send(
            self, "POST", "/api/v1/checkin", name="checkin", account="tech", body={"barcode": f"A{appointment:010d}"}
        )
        if outcome != "ok":
            day.counters["flows_broken"] += 1
            return
        day.counters["checked_in"] += 1
        q = f"?day={d}"
        send(self, "GET", f"/api/v1/queues/{room}{q}", name="queue view", account="tech")
        outcome, data = send(self, "POST", f"/api/v1/queues/{room}/call{q}", name="queue call", account="tech", body={})
        if outcome != "ok":
            day.counters["flows_broken"] += 1
            return
        called = int(data["appointment_id"])
        if random.random() < 0.2:
            send(
                self,
                "POST",
                f"/api/v1/queues/{room}/entries/{called}/recall{q}",
                name="queue recall",
                account="tech",
                body={},
            )
        for action in ("start", "finish"):
            outcome, _ = send(
                self,
                "POST",
                f"/api/v1/queues/{room}/entries/{called}/{action}{q}",
                name=f"queue {action}",
                account="tech",
                body={},
            )
            if outcome != "ok":
                day.counters["flows_broken"] += 1
                return
        day.counters["exams_done"] += 1


class ViewerUser(User):
    """A live screen: connects, reads frames (acknowledging every 16th) for about HY_MIXED_WS_HOLD
    seconds, closes, and connects again."""

    fixed_count = VIEWERS
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        day.load()
        self.n = next(day.viewers_taken)
        self.view = VIEWS[self.n % len(VIEWS)]
        self.ws_base = (self.host or "").replace("http", "ws", 1)
        # The tokens come over HTTP: borrow a throwaway FastHttpUser-like client for the login.
        self.http = _LoginClient(self.environment, self.host or "")
        self.account = {"grid": "clerk", "grid-today": "clerk", "queue": "tech", "wall": "depthead"}[self.view]
        day.token(self.http, self.account)  # type: ignore[arg-type]

    def _url(self) -> str:
        today = today_local().isoformat()
        if self.view == "grid":
            return f"{self.ws_base}/ws/grid?department=RAD&day={day.pool_days[0]}"
        if self.view == "grid-today":
            return f"{self.ws_base}/ws/grid?department=RAD&day={today}"
        if self.view == "queue":
            room = day.rooms[(self.n // len(VIEWS)) % len(day.rooms)]
            return f"{self.ws_base}/ws/queue?room={room}&day={today}"
        return f"{self.ws_base}/ws/wall?day={today}"

    def _event(self, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type=WS_EVENT,
            name=f"/ws/{self.view} {name}",
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    @task
    def watch(self) -> None:
        hold = random.uniform(0.5, 1.5) * WS_HOLD_S
        token = day.tokens.get(self.account) or day.token(self.http, self.account)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        try:
            ws = websocket.create_connection(self._url(), header=[f"Authorization: Bearer {token}"], timeout=10)
        except Exception as exc:
            self._event("connect", (time.perf_counter() - t0) * 1000, 0, exc)
            return
        day.counters["ws_sessions"] += 1
        since_ack, last_seq, got_snapshot = 0, 0, False
        deadline = time.monotonic() + hold
        try:
            while (left := deadline - time.monotonic()) > 0:
                ws.settimeout(max(0.05, min(left, 20.0)))
                try:
                    opcode, raw = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    if not got_snapshot:
                        raise
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(raw[:2], "big") if len(raw) >= 2 else 0
                    if code == 4401:  # the session ran out: renew it, connect again
                        day.renew(self.account, token)
                        self._event("closed (session renewed)", 0)
                        return
                    self._event("closed", 0, 0, RuntimeError(f"server closed {code} {raw[2:60]!r}"))
                    return
                now_ms = time.time() * 1000
                parsed = json.loads(raw)
                for frame in parsed if isinstance(parsed, list) else [parsed]:
                    kind = frame.get("type")
                    if kind == "heartbeat":
                        day.counters["ws_heartbeats"] += 1
                        continue
                    last_seq = int(frame.get("seq") or last_seq)
                    if not got_snapshot:  # the grids' and queues' "snapshot", the wall's first "metrics"
                        self._event("connect", (time.perf_counter() - t0) * 1000, len(raw))
                        got_snapshot = True
                        continue
                    since_ack += 1
                    day.counters["ws_frames"] += 1
                    at = frame.get("at")
                    if kind == "delta" and isinstance(at, int | float):  # publish (Redis clock, ms) -> here
                        self._event("delta", max(0.0, now_ms - at), len(raw))
                    else:  # the wall's updates, a snapshot after a resync
                        self._event(f"{kind}", 0, len(raw))
                if since_ack >= 16:
                    since_ack = 0
                    ws.send(json.dumps({"type": "ack", "seq": last_seq}))
        except Exception as exc:
            self._event("closed", 0, 0, exc)
        finally:
            with contextlib.suppress(Exception):
                ws.close(timeout=2)


class _LoginClient:
    """Just enough of a FastHttpUser for _login(): a FastHttpSession on the environment's host."""

    def __init__(self, environment: Any, host: str) -> None:
        from locust.contrib.fasthttp import FastHttpSession

        self.client = FastHttpSession(base_url=host, request_event=environment.events.request, user=None)


# -- per-interval figures and the final summary ------------------------------------------------------


def _percentile(hist: Counter[int], total: int, q: float) -> float | None:
    if total <= 0:
        return None
    want = q * total
    seen = 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= want:
            return float(ms)
    return float(max(hist))


def _http_totals(environment: Any) -> tuple[int, int, Counter[int], dict[str, tuple[int, int]]]:
    requests = failures = 0
    hist: Counter[int] = Counter()
    by_name: dict[str, tuple[int, int]] = {}
    for (name, method), e in list(environment.stats.entries.items()):
        by_name[f"{method} {name}"] = (e.num_requests, e.num_failures)
        if method == WS_EVENT:
            continue
        requests += e.num_requests
        failures += e.num_failures
        hist.update(e.response_times)
    return requests, failures, hist, by_name


def _exceptions(environment: Any) -> int:
    runner = environment.runner
    return sum(int(e.get("count", 0)) for e in (runner.exceptions.values() if runner else []))


def _writer(environment: Any, path: str) -> None:
    last_req, last_fail, last_hist, last_names = 0, 0, Counter[int](), dict[str, tuple[int, int]]()
    last_counters: Counter[str] = Counter()
    t_last = time.time()
    with open(path, "a", encoding="utf-8") as f:
        while True:
            gevent.sleep(max(0.1, INTERVAL_S - (time.time() - t_last)))
            now = time.time()
            req, fail, hist, names = _http_totals(environment)
            d_hist = hist - last_hist
            d_req = req - last_req
            counters = Counter(day.counters)
            d_counters = counters - last_counters
            ws = {k: v for k, v in names.items() if k.startswith(WS_EVENT + " ")}
            ws_events = sum(v[0] - last_names.get(k, (0, 0))[0] for k, v in ws.items())
            ws_fail = sum(v[1] - last_names.get(k, (0, 0))[1] for k, v in ws.items())
            line = {
                "t": round(now, 3),
                "seconds": round(now - t_last, 3),
                "phase": phase(),
                "phases": phases_between(t_last, now),
                "requests": d_req,
                "failures": fail - last_fail,
                "p50_ms": _percentile(d_hist, d_req, 0.50),
                "p95_ms": _percentile(d_hist, d_req, 0.95),
                "p99_ms": _percentile(d_hist, d_req, 0.99),
                "max_ms": float(max(d_hist)) if d_hist else None,
                "ws_events": ws_events,
                "ws_failures": ws_fail,
                "bookings": d_counters.get("appointments_booked", 0),
                "exceptions": _exceptions(environment),
                "interval": dict(d_counters),
                "failed_names": {
                    k: v[1] - last_names.get(k, (0, 0))[1]
                    for k, v in names.items()
                    if v[1] > last_names.get(k, (0, 0))[1]
                },
                "pools": _pools(),
            }
            f.write(json.dumps(line) + "\n")
            f.flush()
            last_req, last_fail, last_hist, last_names, last_counters, t_last = req, fail, hist, names, counters, now


def _pools() -> dict[str, int]:
    if not day.loaded:
        return {}
    return {
        "free_singles": len(day.free_singles),
        "live_singles": len(day.live_singles),
        "free_bundles": len(day.free_bundles),
        "live_bundles": len(day.live_bundles),
        "checkins_left": len(day.checkins),
    }


_state: dict[str, Any] = {}


@events.init.add_listener
def _remember(environment: Any, **_kw: Any) -> None:
    _state["environment"] = environment


@events.test_start.add_listener
def _start(environment: Any, **_kw: Any) -> None:
    path = os.environ.get("HY_MIXED_INTERVAL_FILE")
    if path and "writer" not in _state:
        _state["writer"] = gevent.spawn(_writer, environment, path)


@events.quit.add_listener
def _summary(**_kw: Any) -> None:
    path = os.environ.get("HY_MIXED_SUMMARY")
    environment = _state.get("environment")
    if not path or environment is None:
        return
    req, fail, hist, _ = _http_totals(environment)
    total = environment.stats.total
    seconds = (total.last_request_timestamp or time.time()) - total.start_time
    out = {
        "counters": dict(day.counters),
        "pools": _pools(),
        "http": {
            "requests": req,
            "failures": fail,
            "seconds": round(seconds, 3),
            "rps": round(req / seconds, 2) if seconds > 0 else 0.0,
            "p50_ms": _percentile(hist, req, 0.50),
            "p95_ms": _percentile(hist, req, 0.95),
            "p99_ms": _percentile(hist, req, 0.99),
            "max_ms": float(max(hist)) if hist else None,
        },
        "exceptions": _exceptions(environment),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
