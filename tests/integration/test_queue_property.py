"""The room queue script (app/booking/lua/queue.lua) on the real Redis, property-based: random
arrivals with random priority classes and appointment times, interleaved with call, recall, pass,
defer, resume, start, finish and priority changes. After every step:

* the script agrees with a plain Python model of the rules (the differential part);
* every entry is in exactly one state and the line holds exactly the waiting ones, once each;
* the waiting entries that were never passed (过号) stand in key order — priority class, then
  appointment time, then check-in time — whatever else happened;
* a passed entry stands exactly `n` places behind where it stood (or last).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.queue.model import is_sorted, sort_key
from realtime.publisher import lua_source
from tests.conftest import Servers


@pytest.fixture(scope="module")
def sync_redis(servers: Servers) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.redis)
    yield client
    client.close()


class Model:
    """The queue rules, written plainly."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.line: list[str] = []

    def place(self, ident: str) -> None:
        key = sort_key(self.entries[ident])
        for i, other in enumerate(self.line):
            if key < sort_key(self.entries[other]):
                self.line.insert(i, ident)
                return
        self.line.append(ident)

    def apply(self, op: str, args: list[Any]) -> str:
        if op == "add":
            e = args[0]
            if e["id"] in self.entries:
                return "EXISTS"
            self.entries[e["id"]] = {**e, "st": "waiting", "passes": 0, "calls": 0}
            self.place(e["id"])
            return "OK"
        if op == "call" and not args[0]:
            if not self.line:
                return "EMPTY"
            ident = self.line.pop(0)
            self.entries[ident]["st"] = "called"
            return "OK"
        ident = args[0]
        e = self.entries.get(ident)
        if e is None:
            return "NO_ENTRY"
        allowed = {
            "call": {"waiting"},
            "recall": {"called"},
            "pass": {"called", "waiting"},
            "defer": {"called", "waiting"},
            "resume": {"deferred"},
            "start": {"called", "waiting"},
            "finish": {"in_exam"},
            "priority": {"waiting", "deferred"},
        }[op]
        if e["st"] not in allowed:
            return "BAD_STATE"
        was = e["st"]
        if ident in self.line:
            at = self.line.index(ident)
            self.line.remove(ident)
        else:
            at = 0
        if op == "call":
            e["st"] = "called"
        elif op == "recall":
            pass
        elif op == "pass":
            e["st"] = "waiting"
            e["passes"] += 1
            self.line.insert(min(at + args[1] if was == "waiting" else args[1], len(self.line)), ident)
        elif op == "defer":
            e["st"] = "deferred"
        elif op == "resume":
            e["st"] = "waiting"
            self.place(ident)
        elif op == "start":
            e["st"] = "in_exam"
        elif op == "finish":
            e["st"] = "done"
        elif op == "priority":
            e["pc"] = args[1]
            if was == "waiting":
                self.place(ident)
        return "OK"


class Queue:
    def __init__(self, client: redis.Redis) -> None:
        base = f"hyprop:{uuid.uuid4().hex[:10]}:q"
        self.client = client
        self.keys = [f"{base}:line", f"{base}:ent", f"{base}:seq", f"{base}:ok"]
        self.script = client.register_script(lua_source("queue"))
        self.run("load", "[]")

    def run(self, op: str, *args: Any) -> tuple[str, str, dict[str, Any]]:
        code, ident, _, body = self.script(keys=self.keys, args=[op, "hyprop:void", "queue:test", 1_000, *args])
        state = orjson.loads(body) if body else {}
        return code.decode(), ident.decode() if isinstance(ident, bytes) else str(ident), state

    def close(self) -> None:
        self.client.delete(*self.keys)


ACTIONS = ("call", "call_id", "recall", "pass", "defer", "resume", "start", "finish", "priority")

step = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(0, 3),  # priority class
        st.integers(0, 8),  # appointment time (coarse: many ties, to exercise the later keys)
    ),
    st.tuples(st.sampled_from(ACTIONS), st.integers(0, 30), st.integers(0, 5)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=60))
def test_the_queue_script_keeps_its_order_rules_under_random_actions(
    sync_redis: redis.Redis, steps: list[tuple[Any, ...]]
) -> None:
    queue, model = Queue(sync_redis), Model()
    arrivals = 0
    try:
        for kind, a, b in steps:
            if kind == "add":
                arrivals += 1
                entry = {"id": str(arrivals), "t": arrivals, "pc": a, "at": 1_000 + b * 600, "ci": arrivals, "dur": 10}
                code, _, _ = queue.run("add", msgspec.json.encode({**entry, "nm": "", "ex": "", "mk": ""}).decode())
                expected = model.apply("add", [entry])
            else:
                ident = str(a % (arrivals + 1)) if arrivals else "1"
                if kind == "call":
                    args: list[Any] = [""]
                    code, _, _ = queue.run("call", "")
                    expected = model.apply("call", [""])
                else:
                    op = "call" if kind == "call_id" else kind
                    args = [ident]
                    if op == "pass":
                        args.append(b)
                    if op == "priority":
                        args += [b % 4, ""]
                    code, _, _ = queue.run(op, *args)
                    expected = model.apply(op, [ident, *args[1:]] if op != "priority" else [ident, b % 4])
            assert code == expected, (kind, a, b)
            _, _, now = queue.run("state")
            line = [e["id"] for e in now["waiting"]]
            assert line == model.line
            states = {e["id"]: e["st"] for part in ("calling", "in_exam", "deferred", "waiting") for e in now[part]}
            assert states == {i: e["st"] for i, e in model.entries.items() if e["st"] != "done"}
            assert len(line) == len(set(line))
            assert now["done"] == sum(1 for e in model.entries.values() if e["st"] == "done")
            never_passed = [e for e in now["waiting"] if e["passes"] == 0]
            assert is_sorted(never_passed)
    finally:
        queue.close()


def test_a_passed_patient_goes_exactly_n_places_back_and_an_emergency_goes_first(sync_redis: redis.Redis) -> None:
    queue = Queue(sync_redis)
    try:
        for i in range(1, 7):
            entry = {"id": str(i), "t": i, "pc": 3, "at": 1_000 + i, "ci": i, "dur": 10, "nm": "", "ex": "", "mk": ""}
            queue.run("add", orjson.dumps(entry).decode())
        code, called, _ = queue.run("call", "")
        assert (code, called) == ("OK", "1")
        _, _, state = queue.run("pass", "1", 2)
        assert [e["id"] for e in state["waiting"]] == ["2", "3", "1", "4", "5", "6"]
        _, _, state = queue.run("pass", "4", 10)  # beyond the end: last
        assert [e["id"] for e in state["waiting"]] == ["2", "3", "1", "5", "6", "4"]
        emergency = {"id": "9", "t": 9, "pc": 0, "at": 9_999, "ci": 9, "dur": 10, "nm": "", "ex": "", "mk": "emergency"}
        _, _, state = queue.run("add", orjson.dumps(emergency).decode())
        assert next(e["id"] for e in state["waiting"]) == "9"
        code, state_name, _ = queue.run("finish", "2")
        assert (code, state_name) == ("BAD_STATE", "waiting")
    finally:
        queue.close()
