"""The load scenarios stay runnable: a short mixed clinical day and a one-minute soak, each a real
`python -m load_tests.run_mixed` against the machine's PostgreSQL and Redis (DATABASE_URL / REDIS_URL,
as CI sets them), in a database and under a Redis key prefix of their own.

What is asserted is that the scenario works, never how fast: no request failed, every request type
of the mixed day was exercised (a broken scenario or a renamed route shows up as a type never
seen), the booking invariant and Redis == PostgreSQL hold afterwards, and the soak's sampling
produced its figures. About 90 seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.settings import PROJECT_ROOT
from load_tests.run_mixed import EXPECTED_TYPES

pytestmark = pytest.mark.slow


def _local(url: str | None) -> bool:
    return bool(url) and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


needs_servers = pytest.mark.skipif(
    not (_local(os.environ.get("DATABASE_URL")) and _local(os.environ.get("REDIS_URL"))),
    reason="run_mixed needs DATABASE_URL and REDIS_URL of servers on 127.0.0.1 (not the embedded ones)",
)


def run_mixed(tmp_path: Path, name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    tag = uuid.uuid4().hex[:8]
    out = tmp_path / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "load_tests.run_mixed",
        "--db",
        f"hy_mixed_t{tag}",
        "--prefix",
        f"hymt{tag}",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / f"{name}-work"),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, check=False)
    printed = proc.stdout + proc.stderr
    assert out.exists(), f"run_mixed wrote no results (exit {proc.returncode}):\n{printed[-4000:]}"
    return proc.returncode, json.loads(out.read_text()), printed


def assert_clean(result: dict[str, Any], printed: str) -> None:
    assert "failed" not in result, f"{result['failed']}\n{printed[-4000:]}"
    figures = result["mixed"]["figures"]
    assert figures["errors"] == 0, printed[-4000:]
    assert result["mixed"]["failures"] == [] and result["mixed"]["exceptions"] == [], printed[-4000:]
    assert result["invariants"]["ok"], json.dumps(result["invariants"], indent=1)
    assert result["invariants"]["postgres"]["booked"] == result["invariants"]["postgres"]["appointments"]
    assert result["invariants"]["redis"]["live_holds"] == 0


@needs_servers
def test_mixed_clinical_day_exercises_every_request_type(tmp_path: Path) -> None:
    code, result, printed = run_mixed(
        tmp_path,
        "mixed",
        *("--seconds", "12", "--users", "12", "--techs", "2", "--viewers", "4", "--ws-hold", "4"),
        *("--ping-seconds", "2", "--ping-users", "8"),
    )
    assert_clean(result, printed)
    assert code == 0, printed[-4000:]
    figures = result["mixed"]["figures"]
    assert figures["missing_types"] == [], f"never exercised: {figures['missing_types']}\n{printed[-3000:]}"
    types = result["mixed"]["types"]
    assert all(types[t]["requests"] > 0 for t in EXPECTED_TYPES)
    assert figures["bookings"] > 0 and result["ping"]["rps"] > 0
    assert "cpu_us_per_booking" in figures and figures["requests_per_ping"] is not None
    orders = result["invariants"]["orders"]
    assert orders.get("done", 0) > 0, orders  # exams went the whole way: check-in, call, start, finish


@needs_servers
def test_soak_samples_resources_and_gives_a_verdict(tmp_path: Path) -> None:
    code, result, printed = run_mixed(
        tmp_path,
        "soak",
        *("--soak-minutes", "0.8", "--interval", "8", "--cycle-minutes", "0.4"),
        *("--users", "12", "--techs", "2", "--viewers", "4", "--ws-hold", "5", "--rate", "10", "--tech-rate", "0.5"),
    )
    assert_clean(result, printed)
    soak = result["soak"]
    samples = soak["samples"]
    assert len(samples) >= 4, printed[-3000:]
    for s in samples:
        assert s["rss_mb"] > 0 and s["fds"] > 0 and s["pg_backends"] >= 1 and s["server_to_redis"] >= 1
        assert s["hub_screens"] is not None and s["requests"] >= 0
    assert {p for s in samples for p in s["phases"]} == {"release", "peak", "clinic", "changes"}
    assert sum(s["requests"] for s in samples) > 0 and sum(s["bookings"] for s in samples) > 0
    assert soak["verdict"] in ("PASS", "FAIL")  # a one-minute soak proves the machinery, not the memory
    assert {"memory", "errors", "fds_other", "pg_backends", "server_pubsub", "hub_screens"} <= set(soak["checks"])
    assert code in (0, 1) and (code == 0) == (soak["verdict"] == "PASS"), printed[-3000:]
    assert "[soak " in printed and "soak verdict:" in printed
