"""Mixed clinical day and soak driver:
python -m load_tests.run_mixed [--seconds 60] [--users N] [--rate R] | --soak-minutes M | --soak-hours H

Needs DATABASE_URL and REDIS_URL (servers on 127.0.0.1 only). On the PostgreSQL server it drops and
creates its own database (`hy_mixed`, `--db`); in Redis it uses its own key prefix (`hymixed`,
`--prefix`). It seeds the demo hospital, adds the mixed day's resources, slots, patients and orders
straight in PostgreSQL (load_tests/mixed_data.py), starts `python -m app serve --no-demo` on a free
port (HY_RATE_LIMITS=0, HY_LOG_LEVEL=warning, `--workers`), and then:

* **timed run** (default): /ping under Locust for `--ping-seconds` (the ceiling of the same server, for
  the ratio), then the mixed day (load_tests/locustfile_clinical_day.py) headless for `--seconds`;
  prints per request type req/s, p50/p95/p99, errors; bookings/s; CPU per booking (server,
  PostgreSQL, Redis, load generator: run_bench's accounting); the ratios against /ping.
* **soak** (`--soak-minutes` / `--soak-hours`): the mixed day at a fixed, modest offered rate with the
  day's phases cycling every `--cycle-minutes`; every `--interval` seconds one line: server RSS (and
  each worker's), its open files and sockets to PostgreSQL / Redis, PostgreSQL backends on its
  database, Redis clients, pub/sub patterns and channels, live-screen subscriptions, requests, errors,
  p99 and bookings in the interval; at the end a verdict (PASS / FAIL on the thresholds documented
  in load_tests/README.md, constants in soak_verdict). Ctrl-C / SIGTERM stop it early with the
  figures so far.

Afterwards, both: the invariant over every slot (booked <= capacity, booked == live appointments, one
live appointment per order), Redis's booked counters == PostgreSQL's for every day of the index, and
no live hold left. Results go to load_tests/results/ (git-ignored): `mixed-latest.json` or
`soak-<time>.json` (+ `soak-latest.json`), the server log and Locust's files in results/<db>/.
Whatever happens it stops the server, drops the database and deletes the prefix's keys (`--keep`
keeps them). Exit status: 0 all good, 1 errors / invariant violation / soak FAIL / interrupted,
2 bad set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import psutil
import redis

from load_tests import run_bench
from load_tests.mixed_data import MixedData, check_all_slots, loop_counts, prepare_mixed, slots_by_day
from load_tests.run_bench import (
    ROOT,
    Server,
    cpu_delta,
    cpu_snapshot,
    delete_redis_keys,
    drop_database,
    free_port,
    http_json,
    local_servers,
    recreate_database,
    seed_demo,
    with_database,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PASSWORD = "Huiyue@2026"
HOSPITAL_ID = "h1"
TZ = ZoneInfo("Asia/Shanghai")
HORIZON_DAYS = 14
POOL_DAYS = 3

# Request types a healthy mixed day exercises (the CI test checks each appears at least once).
EXPECTED_TYPES = (
    "GET availability (exam)",
    "GET availability (department-day)",
    "GET live grid",
    "GET patient appointments",
    "GET appointment",
    "GET patient orders",
    "POST book",
    "POST cancel",
    "POST reschedule",
    "POST plans/propose",
    "POST plans/book",
    "POST cancel (bundle)",
    "POST book (today)",
    "POST pay",
    "POST checkin",
    "GET queue view",
    "POST queue call",
    "POST queue start",
    "POST queue finish",
    "WS /ws/grid connect",
    "WS /ws/grid-today connect",
    "WS /ws/queue connect",
    "WS /ws/wall connect",
)

# Soak verdict thresholds (documented in load_tests/README.md).
RSS_NOISE_MB = 2.0  # fitted growth over the second half below this is noise, whatever the slope
FD_SLACK = 10
SOCKET_SLACK = 2
ERROR_GROWTH = 0.001  # second-half error rate may exceed the first half's by 0.1 point at most


def log(msg: str) -> None:
    print(f"[mixed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def hospital_today() -> date:
    return datetime.now(UTC).astimezone(TZ).date()


# ------------------------------------------------------------------------------------------------
# Locust
# ------------------------------------------------------------------------------------------------


def read_stats_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {f"{r['Type']} {r['Name']}".strip(): r for r in csv.DictReader(f)}


def _num(v: str | None) -> float | None:
    return float(v) if v not in (None, "", "N/A") else None


def locust_cmd(locustfile: Path, users: int, spawn: float, seconds: float, prefix: Path, base: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn),
        "-t",
        f"{math.ceil(seconds)}s",
        "--only-summary",
        "--csv",
        str(prefix),
        "--host",
        base,
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
    ]


def run_ping(server: Server, db: str, users: int, seconds: int, work: Path) -> dict[str, Any]:
    prefix = work / "ping"
    final = Path(f"{prefix}_final_stats.csv")
    final.unlink(missing_ok=True)
    env = {**os.environ, "HY_LOCUST_FINAL_CSV": str(final)}
    cmd = locust_cmd(HERE / "locustfile_ping.py", users, users, seconds, prefix, server.base)
    log(f"locust ping: -u {users} -t {seconds}s")
    before = cpu_snapshot(server.proc.pid, db)  # type: ignore[union-attr]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=False, env=env, cwd=ROOT)
    after = cpu_snapshot(server.proc.pid, db)  # type: ignore[union-attr]
    (work / "ping.out").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    path = final if final.exists() else Path(f"{prefix}_stats.csv")
    if not path.exists():
        raise RuntimeError(f"locust ping wrote no stats (rc {proc.returncode}): {proc.stderr[-2000:]}")
    row = read_stats_csv(path).get("GET ping", {})
    return {
        "users": users,
        "rps": _num(row.get("Requests/s")) or 0.0,
        "requests": int(row.get("Request Count") or 0),
        "errors": int(row.get("Failure Count") or 0),
        "p50_ms": _num(row.get("50%")),
        "p99_ms": _num(row.get("99%")),
        "cpu": cpu_delta(before, after),
    }


def mixed_env(
    args: argparse.Namespace, data_file: Path, work: Path, cycle_s: float, interval_s: float
) -> dict[str, str]:
    http_users = args.users - args.viewers - args.techs
    env = dict(os.environ)
    env.update(
        {
            "HY_MIXED_FILE": str(data_file),
            "HY_MIXED_USER_RATE": str(args.rate / http_users if args.rate > 0 else 0),
            "HY_MIXED_TECH_RATE": str(args.tech_rate),
            "HY_MIXED_TECHS": str(args.techs),
            "HY_MIXED_VIEWERS": str(args.viewers),
            "HY_MIXED_WS_HOLD": str(args.ws_hold),
            "HY_MIXED_CYCLE_S": str(cycle_s),
            "HY_MIXED_INTERVAL_S": str(interval_s),
            "HY_MIXED_INTERVAL_FILE": str(work / "intervals.jsonl"),
            "HY_MIXED_SUMMARY": str(work / "summary.json"),
            "HY_LOCUST_FINAL_CSV": str(work / "mixed_final_stats.csv"),
        }
    )
    for name in ("intervals.jsonl", "summary.json", "mixed_final_stats.csv", "mixed_exceptions.csv"):
        (work / name).unlink(missing_ok=True)
    return env


def collect_mixed(work: Path) -> dict[str, Any]:
    """Per request type figures from Locust's final CSV, the locustfile's summary, task exceptions."""
    path = work / "mixed_final_stats.csv"
    if not path.exists():
        path = work / "mixed_stats.csv"
    if not path.exists():
        raise RuntimeError(f"locust wrote no stats: {(work / 'mixed.out').read_text()[-2000:]}")
    rows = read_stats_csv(path)
    types = {}
    for key, r in rows.items():
        if key.strip() == "Aggregated":
            continue
        types[key] = {
            "requests": int(r.get("Request Count") or 0),
            "errors": int(r.get("Failure Count") or 0),
            "rps": _num(r.get("Requests/s")) or 0.0,
            "p50_ms": _num(r.get("50%")),
            "p95_ms": _num(r.get("95%")),
            "p99_ms": _num(r.get("99%")),
            "max_ms": _num(r.get("Max Response Time")),
        }
    summary = json.loads((work / "summary.json").read_text()) if (work / "summary.json").exists() else {}
    failures: list[str] = []
    if (work / "mixed_failures.csv").exists():
        with (work / "mixed_failures.csv").open(newline="") as f:
            top = sorted(csv.DictReader(f), key=lambda r: -int(r.get("Occurrences") or 0))
        failures = [f"x{r['Occurrences']} {r['Method']} {r['Name']}: {r['Error'][:200]}" for r in top[:10]]
    exceptions: list[str] = []
    if (work / "mixed_exceptions.csv").exists():
        with (work / "mixed_exceptions.csv").open(newline="") as f:
            exceptions = [f"x{r['Count']} {r['Message'][:200]}" for r in csv.DictReader(f)]
    return {"types": types, "summary": summary, "failures": failures, "exceptions": exceptions}


# ------------------------------------------------------------------------------------------------
# Invariants
# ------------------------------------------------------------------------------------------------


def redis_vs_pg(db_url: str, redis_url: str, prefix: str) -> dict[str, Any]:
    """Every day of the index (yesterday .. the horizon): Redis's `b` of each slot == PostgreSQL's
    booked, and the day's live holds."""
    today = hospital_today()

    async def pg() -> dict[date, list[tuple[int, int]]]:
        conn = await asyncpg.connect(db_url)
        try:
            return await slots_by_day(conn, today - timedelta(days=1), today + timedelta(days=HORIZON_DAYS))
        finally:
            await conn.close()

    by_day = asyncio.run(pg())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    mismatched: list[dict[str, Any]] = []
    holds = 0
    slots = 0
    redis_booked = 0
    try:
        for d, rows in sorted(by_day.items()):
            tag = f"{prefix}:{{{HOSPITAL_ID}:{d.isoformat()}}}"
            pipe = client.pipeline(transaction=False)
            for slot_id, _ in rows:
                pipe.hget(f"{tag}:slot:{slot_id}", "b")
            pipe.zcard(f"{tag}:holds")
            got = pipe.execute()
            holds += int(got[-1])
            for (slot_id, booked), b in zip(rows, got[:-1], strict=True):
                slots += 1
                value = int(b) if b is not None else None
                redis_booked += value or 0
                if value != booked:
                    mismatched.append({"slot_id": slot_id, "day": d.isoformat(), "pg": booked, "redis": value})
    finally:
        client.close()
    return {
        "ok": not mismatched and holds == 0,
        "days": len(by_day),
        "slots": slots,
        "redis_booked": redis_booked,
        "live_holds": holds,
        "mismatched_slots": len(mismatched),
        "mismatches": mismatched[:10],
    }


def check_invariants(db_url: str, redis_url: str, prefix: str, tag: str) -> dict[str, Any]:
    async def pg() -> tuple[dict[str, Any], dict[str, int]]:
        conn = await asyncpg.connect(db_url)
        try:
            return await check_all_slots(conn), await loop_counts(conn, tag)
        finally:
            await conn.close()

    # Requests still in flight when the load generator stopped finish in the server; a hold whose
    # request was cut short is reaped within its TTL: give Redis a little time to settle.
    deadline = time.monotonic() + 20
    time.sleep(1.0)
    while True:
        red = redis_vs_pg(db_url, redis_url, prefix)
        if red["ok"] or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    slots, loop = asyncio.run(pg())
    return {"ok": bool(slots["ok"] and red["ok"]), "postgres": slots, "redis": red, "orders": loop}


# ------------------------------------------------------------------------------------------------
# Soak sampling
# ------------------------------------------------------------------------------------------------


class Sampler:
    """Resource figures of the server and its stores, one sample at a time."""

    def __init__(self, server: Server, db_url: str, db_name: str, redis_url: str, prefix: str) -> None:
        self.server = server
        self.db_name = db_name
        self.prefix = prefix
        self.pg_port = urlsplit(db_url).port or 5432
        self.redis_port = urlsplit(redis_url).port or 6379
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(db_url))
        self.admin = ""
        self.cpu_last: dict[int, float] = {}
        self.at_last = time.monotonic()

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.conn.close())
        finally:
            self.loop.close()
            self.redis.close()

    def _admin_live(self) -> dict[str, Any]:
        for _ in range(2):
            if not self.admin:
                self.admin = http_json(
                    "POST", self.server.base + "/api/v1/auth/login", {"username": "admin", "password": PASSWORD}
                )["token"]
            try:
                return dict(http_json("GET", self.server.base + "/api/v1/admin/live", token=self.admin, timeout=10))
            except urllib.error.HTTPError as exc:
                if exc.code != 401:
                    raise
                self.admin = ""
        return {}

    def sample(self, locust_pid: int | None) -> dict[str, Any]:
        now = time.monotonic()
        procs: list[psutil.Process] = []
        try:
            top = psutil.Process(self.server.proc.pid)  # type: ignore[union-attr]
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            pass
        rss, cpu = [], 0.0
        fds = to_pg = to_redis = clients = other_sockets = all_sockets = 0
        redis_ports: set[int] = set()
        for p in procs:
            try:
                rss.append(p.memory_info().rss / 2**20)
                fds += p.num_fds()
                socks = p.net_connections(kind="all")
                all_sockets += len(socks)
                for c in socks:
                    established = c.status == psutil.CONN_ESTABLISHED and c.raddr and isinstance(c.raddr, tuple)
                    if established and c.raddr.port == self.pg_port:
                        to_pg += 1
                    elif established and c.raddr.port == self.redis_port:
                        to_redis += 1
                        redis_ports.add(c.laddr.port)
                    elif established and c.laddr and c.laddr.port == self.server.port:
                        clients += 1
                    elif c.status != psutil.CONN_LISTEN:
                        other_sockets += 1  # closing, half-closed, unix...: a leak would pile up here
                t = sum(p.cpu_times()[:2])
                cpu += t - self.cpu_last.get(p.pid, t)
                self.cpu_last[p.pid] = t
            except psutil.Error:
                continue
        lg_cpu = 0.0
        lg_rss = 0.0
        if locust_pid:
            try:
                p = psutil.Process(locust_pid)
                t = sum(p.cpu_times()[:2])
                lg_cpu = t - self.cpu_last.get(-1, 0.0)  # new process: its first interval counts from zero
                self.cpu_last[-1] = t
                lg_rss = p.memory_info().rss / 2**20
            except psutil.Error:
                pass
        # The server's own pub/sub subscriptions: its connections in CLIENT LIST, by their local port.
        pubsub = 0
        for entry in self.redis.client_list():
            port = int(str(entry.get("addr", ":0")).rsplit(":", 1)[-1] or 0)
            if port in redis_ports:
                pubsub += int(entry.get("sub", 0) or 0) + int(entry.get("psub", 0) or 0)
        backends = self.loop.run_until_complete(
            self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.db_name
            )
        )
        info = self.redis.info("clients")
        numpat = int(self.redis.execute_command("PUBSUB", "NUMPAT"))
        channels = len(self.redis.execute_command("PUBSUB", "CHANNELS", f"{self.prefix}:*"))
        try:
            live = self._admin_live()
        except Exception as exc:
            live = {"error": repr(exc)}
        wall = max(1e-6, now - self.at_last)
        self.at_last = now
        return {
            "rss_mb": round(sum(rss), 1),
            "rss_each_mb": [round(x, 1) for x in rss],
            "fds": fds,
            "fds_other": fds - all_sockets,  # files, pipes, epoll...: not the sockets counted apart
            "sockets_other": other_sockets,
            "server_to_pg": to_pg,
            "server_to_redis": to_redis,
            "server_clients": clients,
            "pg_backends": int(backends),
            "redis_clients": int(info.get("connected_clients", 0)),
            "redis_numpat": numpat,
            "redis_channels": channels,
            "server_pubsub": pubsub,
            "hub_subscribers": live.get("subscribers"),
            # the screens' subscriptions: the hub's own watch on the "devices" topic left out
            "hub_screens": (live["subscribers"] - (live.get("topics") or {}).get("devices", 0))
            if isinstance(live.get("subscribers"), int)
            else None,
            "hub_topics": len(live.get("topics") or {}),
            "hub_dropped": live.get("dropped"),
            "server_cpu_pct": round(100 * cpu / wall, 1),
            "loadgen_cpu_pct": round(100 * lg_cpu / wall, 1),
            "loadgen_rss_mb": round(lg_rss, 1),
        }


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx <= 0:
        return None
    return 3600 * sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def soak_line(elapsed: float, iv: dict[str, Any], s: dict[str, Any]) -> str:
    req, secs = iv.get("requests", 0), max(1e-6, iv.get("seconds") or 1)
    each = "+".join(f"{x:.0f}" for x in s["rss_each_mb"]) if len(s["rss_each_mb"]) > 1 else ""
    p99 = iv.get("p99_ms")
    return (
        f"[soak {_hms(elapsed)} {iv.get('phase', '-'):<7}] req {req:>6,} ({req / secs:5.1f}/s) "
        f"err {iv.get('failures', 0) + iv.get('ws_failures', 0):>3} p99 {('-' if p99 is None else f'{p99:.0f}'):>5} ms "
        f"book {iv.get('bookings', 0):>4} ws {iv.get('ws_events', 0):>5} | rss {s['rss_mb']:.1f} MB"
        f"{f' [{each}]' if each else ''} fds {s['fds']} (other {s['fds_other']}) pg-backends {s['pg_backends']} "
        f"srv->pg {s['server_to_pg']} srv->redis {s['server_to_redis']} conns {s['server_clients']} | "
        f"redis clients {s['redis_clients']} numpat {s['redis_numpat']} chans {s['redis_channels']} "
        f"srv-pubsub {s['server_pubsub']} "
        f"hub screens {s['hub_screens']} | cpu srv {s['server_cpu_pct']:.0f}% lg {s['loadgen_cpu_pct']:.0f}%"
    )


def soak_verdict(samples: list[dict[str, Any]], args: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    if len(samples) < 4:
        return {"verdict": "INCONCLUSIVE", "reason": f"only {len(samples)} samples (need 4)"}
    half = duration_s / 2
    first = [s for s in samples if s["elapsed"] < half]
    second = [s for s in samples if s["elapsed"] >= half] or samples[-2:]
    first = first or samples[:2]
    rss = [s["rss_mb"] for s in samples]
    slope = slope_per_hour([(s["elapsed"], s["rss_mb"]) for s in second])
    span_h = (second[-1]["elapsed"] - second[0]["elapsed"]) / 3600
    growth = (slope or 0.0) * span_h

    def rate(group: list[dict[str, Any]]) -> tuple[int, int, float]:
        req = sum(s["requests"] + s["ws_events"] for s in group)
        err = sum(s["errors"] for s in group)
        return req, err, (err / req if req else 0.0)

    r1, e1, rate1 = rate(first)
    r2, e2, rate2 = rate(second)
    checks: dict[str, dict[str, Any]] = {}
    checks["memory"] = {
        "ok": slope is None or slope <= args.max_rss_slope or growth < RSS_NOISE_MB,
        "rule": f"RSS slope over the second half <= {args.max_rss_slope} MB/h (or fitted growth < {RSS_NOISE_MB} MB)",
        "slope_mb_per_h": None if slope is None else round(slope, 2),
        "fitted_growth_mb": round(growth, 2),
        "first_mb": rss[0],
        "last_mb": rss[-1],
        "max_mb": max(rss),
    }
    checks["errors"] = {
        "ok": rate2 <= max(2 * rate1, rate1 + ERROR_GROWTH),
        "rule": f"second-half error rate <= max(2 x first half, first half + {ERROR_GROWTH:.1%})",
        "first_half": {"requests": r1, "errors": e1, "rate": round(rate1, 6)},
        "second_half": {"requests": r2, "errors": e2, "rate": round(rate2, 6)},
        "per_interval": [round(s["errors"] / max(1, s["requests"] + s["ws_events"]), 6) for s in samples],
    }
    pg_cap = int(os.environ.get("HY_DB_POOL_MAX", "20")) * args.workers + 2
    redis_cap = (int(os.environ.get("HY_REDIS_MAX_CONNECTIONS", "64")) + 2) * args.workers
    leaks = {  # name: (slack over the first half's maximum, a bound the pools may always reach)
        "fds_other": (FD_SLACK, 0),
        "sockets_other": (5, 0),
        "server_to_pg": (SOCKET_SLACK, pg_cap),
        "pg_backends": (SOCKET_SLACK, pg_cap),
        "server_to_redis": (SOCKET_SLACK, redis_cap),
        "server_pubsub": (0, 0),
        "redis_channels": (0, 0),
    }
    for key, (slack, cap) in leaks.items():
        values = [s[key] for s in samples if s.get(key) is not None]
        if not values:
            continue
        limit = max(s[key] for s in first) + slack
        rule = f"end <= max over the first half + {slack}"
        if cap:
            limit = max(limit, cap)
            rule += f", or within the pools' bound {cap}"
        checks[key] = {
            "ok": values[-1] <= limit,
            "rule": rule,
            "start": values[0],
            "end": values[-1],
            "max": max(values),
            "limit": limit,
        }
    subs = [s["hub_screens"] for s in samples if isinstance(s.get("hub_screens"), int)]
    if subs:
        checks["hub_screens"] = {
            "ok": max(subs) <= args.viewers,
            "rule": f"live-screen subscriptions never above the {args.viewers} screens (one worker's hub)",
            "start": subs[0],
            "end": subs[-1],
            "max": max(subs),
        }
    for key, why in (
        ("fds", "all the server's descriptors, sockets included: they follow the pools"),
        ("redis_clients", "Redis's connected_clients counts every user of the server"),
        ("redis_numpat", "PUBSUB NUMPAT counts every user of the server"),
    ):
        checks[key] = {  # shown, not judged
            "ok": True,
            "rule": f"shown only: {why}",
            "start": samples[0][key],
            "end": samples[-1][key],
            "max": max(s[key] for s in samples),
        }
    ok = all(c["ok"] for c in checks.values())
    return {"verdict": "PASS" if ok else "FAIL", "checks": checks}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def print_types(types: dict[str, dict[str, Any]]) -> None:
    print(
        f"{'request type':<40}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'count':>9}{'errors':>7}"
    )
    for name in sorted(types, key=lambda k: (k.startswith("WS"), k.split(" ", 1)[-1])):
        t = types[name]
        print(
            f"{name[:39]:<40}{_f(t['rps']):>9}{_f(t['p50_ms'], '.0f'):>9}{_f(t['p95_ms'], '.0f'):>9}"
            f"{_f(t['p99_ms'], '.0f'):>9}{_f(t['max_ms'], '.0f'):>9}{t['requests']:>9,}{t['errors']:>7,}"
        )


def print_invariants(inv: dict[str, Any]) -> None:
    pg, red = inv["postgres"], inv["redis"]
    print(
        f"invariant {'OK' if inv['ok'] else 'VIOLATION'}: {pg['slots']:,} slots, booked {pg['booked']:,} = live "
        f"appointments {pg['appointments']:,} <= capacity; orders with two live appointments "
        f"{pg['orders_with_two_live_appointments']}; Redis: {red['slots']:,} slots on {red['days']} days, "
        f"booked {red['redis_booked']:,}, mismatched {red['mismatched_slots']}, live holds {red['live_holds']}"
    )
    if pg["violations"]:
        print(f"   violations: {pg['violations']}")
    if red["mismatches"]:
        print(f"   redis mismatches: {red['mismatches']}")
    print(f"   the run's orders by state: {dict(sorted(inv['orders'].items()))}")


def print_mixed(
    res: dict[str, Any], ping: dict[str, Any] | None, seconds: float, meta: dict[str, Any]
) -> dict[str, Any]:
    line = "=" * 100
    print("\n" + line)
    print("HuiYue mixed clinical day  " + "  ".join(f"{k}={v}" for k, v in meta.items()))
    print(line)
    print_types(res["types"])
    s = res["summary"]
    http = s.get("http", {})
    counters = s.get("counters", {})
    secs = http.get("seconds") or seconds
    booked = int(counters.get("appointments_booked", 0))
    out: dict[str, Any] = {
        "http_rps": http.get("rps"),
        "bookings": booked,
        "bookings_per_s": round(booked / secs, 2) if secs else 0.0,
    }
    errors = sum(t["errors"] for t in res["types"].values()) + len(res["exceptions"])
    out["errors"] = errors
    c = counters.get
    print(
        f"\nHTTP: {http.get('requests', 0):,} requests, {http.get('rps', 0):,.1f}/s, "
        f"p50 {_f(http.get('p50_ms'), '.0f')} p95 {_f(http.get('p95_ms'), '.0f')} "
        f"p99 {_f(http.get('p99_ms'), '.0f')} max {_f(http.get('max_ms'), '.0f')} ms, {http.get('failures', 0)} "
        f"failures; WebSocket frames {c('ws_frames', 0):,} on {c('ws_sessions', 0)} screen sessions"
    )
    print(
        f"bookings: {booked:,} appointments ({out['bookings_per_s']:,.1f}/s): cancelled {c('cancelled', 0):,}, "
        f"rescheduled {c('rescheduled', 0):,}, bundles {c('bundles_booked', 0):,}, slot full {c('book_full', 0):,}, "
        f"plan slot taken {c('bundle_taken', 0):,}; check-ins {c('checked_in', 0):,}, "
        f"exams done {c('exams_done', 0):,}"
    )
    if ping:
        rps = http.get("rps") or 0.0
        out["ping_rps"] = ping["rps"]
        out["requests_per_ping"] = round(rps / ping["rps"], 4) if ping["rps"] else None
        out["bookings_per_ping"] = round(out["bookings_per_s"] / ping["rps"], 4) if ping["rps"] else None
        print(
            f"/ping (same server, Locust, {ping['users']} users): {ping['rps']:,.0f} req/s -> mixed requests/ping "
            f"{out['requests_per_ping']}, bookings/ping {out['bookings_per_ping']}"
        )
    cpu = res.get("cpu") or {}
    if cpu and booked:
        per = {k: round(cpu.get(k, 0.0) / booked * 1e6) for k in ("server", "postgres", "redis", "loadgen")}
        per["total"] = sum(per.values())
        out["cpu_us_per_booking"] = per
        reqs = max(1, http.get("requests", 0))
        per_req = {k: round(cpu.get(k, 0.0) / reqs * 1e6) for k in ("server", "postgres", "redis", "loadgen")}
        out["cpu_us_per_request"] = per_req
        print("CPU us per booking   " + "  ".join(f"{k} {v:,}" for k, v in per.items()))
        print("CPU us per request   " + "  ".join(f"{k} {v:,}" for k, v in per_req.items()))
        spent = ", ".join(f"{k} {cpu.get(k, 0.0):.1f}s" for k in ("server", "postgres", "redis", "loadgen"))
        print(f"CPU over the run: {spent} in {cpu.get('wall', 0.0):.1f}s wall")
    missing = [t for t in EXPECTED_TYPES if res["types"].get(t, {}).get("requests", 0) == 0]
    out["missing_types"] = missing
    if missing:
        print(f"request types never exercised: {missing}")
    pools = s.get("pools", {})
    if pools:
        print(f"pools at the end: {pools}; counters: {dict(sorted(counters.items()))}")
    for f in res["failures"]:
        print(f"   failure {f}")
    for e in res["exceptions"]:
        print(f"   task exception {e}")
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.run_mixed", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=float, default=60, help="length of the timed mixed run (default 60)")
    p.add_argument("--users", type=int, default=30, help="Locust users, technicians and viewers included (30)")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="tasks/s offered by the desk and clinic users together (0: closed loop; default 0, soak 12)",
    )
    p.add_argument("--tech-rate", type=float, default=None, help="exam flows/s per room (default 1, soak 0.2)")
    p.add_argument("--techs", type=int, default=3, help="technicians, one room each (3)")
    p.add_argument("--viewers", type=int, default=4, help="WebSocket screens (4)")
    p.add_argument("--ws-hold", type=float, default=30, help="mean seconds a screen stays connected (30)")
    p.add_argument("--ping-seconds", type=int, default=None, help="/ping run (default min(10, seconds/3); 0: none)")
    p.add_argument("--ping-users", type=int, default=64, help="Locust users of the /ping run (64)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers (1)")
    p.add_argument("--db", default="hy_mixed", help="database to (re)create (hy_mixed)")
    p.add_argument("--prefix", default="hymixed", help="Redis key prefix (hymixed)")
    p.add_argument("--keep", action="store_true", help="keep the database and keys afterwards")
    p.add_argument("--soak-minutes", type=float, default=None, help="soak this many minutes")
    p.add_argument("--soak-hours", type=float, default=None, help="soak this many hours")
    p.add_argument("--interval", type=float, default=30, help="soak sampling interval, seconds (30)")
    p.add_argument("--cycle-minutes", type=float, default=4, help="soak: one cycle of the day's phases (4)")
    p.add_argument(
        "--max-rss-slope",
        type=float,
        default=None,
        help="soak: RSS MB/h allowed over the second half (default 20 / hours of the run, between 2 and 20)",
    )
    p.add_argument("--out", type=Path, default=None, help="results JSON (default results/mixed-latest.json ...)")
    p.add_argument("--workdir", type=Path, default=None, help="server log, Locust files (default results/<db>/)")
    a = p.parse_args(argv)
    a.soak = a.soak_minutes is not None or a.soak_hours is not None
    if a.soak_minutes is not None and a.soak_hours is not None:
        p.error("give --soak-minutes or --soak-hours, not both")
    a.duration = (a.soak_minutes or 0) * 60 + (a.soak_hours or 0) * 3600 if a.soak else a.seconds
    if a.rate is None:
        a.rate = 12.0 if a.soak else 0.0
    if a.max_rss_slope is None:
        a.max_rss_slope = round(min(20.0, max(2.0, 20.0 * 3600 / a.duration)), 2)
    if a.tech_rate is None:
        a.tech_rate = 0.2 if a.soak else 1.0
    if a.ping_seconds is None:
        a.ping_seconds = 0 if a.soak else int(min(10, max(2, a.seconds // 3)))
    if a.users < a.techs + a.viewers + 2:
        p.error(f"--users must be at least techs + viewers + 2 = {a.techs + a.viewers + 2}")
    if a.duration <= 0:
        p.error("nothing to run")
    return a


def sizes(a: argparse.Namespace) -> dict[str, int]:
    """Check-in orders are consumed, one per exam flow: enough for the technicians' pace over the run
    (the phases average 1x --tech-rate: 0.5, 0.5, 2, 1) with a 30 % margin. The other pools churn."""
    flows = a.techs * a.tech_rate * (a.duration + 60)
    return {"n_single": 2000, "n_bundle": 600, "n_checkin": int(flows * 1.3) + 50}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM (a CI timeout, `timeout`, kill) stop the run early and still clean up; SIGINT
    # explicitly, since a shell's background job starts with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    urls = local_servers("run_mixed", args.db, args.prefix)
    if urls is None:
        return 2
    database_url, redis_url = urls
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", args.db) or args.db in ("postgres", "template0", "template1"):
        print(f"refusing database name {args.db!r}", file=sys.stderr)
        return 2
    if not re.fullmatch(r"[A-Za-z0-9_-]{3,40}", args.prefix):
        print(f"refusing key prefix {args.prefix!r}", file=sys.stderr)
        return 2
    days_needed = 2 + math.ceil(args.duration / 86400)
    if days_needed + POOL_DAYS > HORIZON_DAYS:
        print(f"a run of {args.duration / 3600:.0f} h leaves no booking days inside the horizon", file=sys.stderr)
        return 2

    work = args.workdir or RESULTS / args.db  # one per database: concurrent runs never share files
    work.mkdir(parents=True, exist_ok=True)
    db_url = with_database(database_url, args.db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HY_")}
    env.update(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "HY_REDIS_PREFIX": args.prefix,
            "HY_LOG_LEVEL": "warning",
            # Many requests a second from one loopback address and a few accounts are the point here.
            "HY_RATE_LIMITS": "0",
            "HY_WORKERS": str(args.workers),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for passthrough in ("HY_DB_POOL_MAX", "HY_DB_POOL_MIN", "HY_REDIS_MAX_CONNECTIONS", "HY_PII_KEYS"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    started = time.monotonic()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    server = Server(env, free_port(), work / "server.log")
    result: dict[str, Any] = {
        "mode": "soak" if args.soak else "timed",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date": datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_before": round(os.getloadavg()[0], 2),
    }
    data: MixedData | None = None
    exit_code = 0
    sampler: Sampler | None = None
    try:
        log(f"recreating database {args.db}; deleting {args.prefix}:* keys")
        asyncio.run(recreate_database(database_url, args.db))
        delete_redis_keys(redis_url, args.prefix)
        seed_demo(env)
        first_day = hospital_today() + timedelta(days=days_needed)
        pool_days = [first_day + timedelta(days=n) for n in range(POOL_DAYS)]
        n = sizes(args)

        async def prep() -> MixedData:
            conn = await asyncpg.connect(db_url)
            try:
                made = await prepare_mixed(
                    conn,
                    pool_days=pool_days,
                    checkin_until=datetime.now(UTC) + timedelta(seconds=args.duration + 300),
                    n_rooms=args.techs,
                    **n,
                )
                await conn.execute("VACUUM ANALYZE patient, exam_order, slot")
                return made
            finally:
                await conn.close()

        t = time.monotonic()
        data = asyncio.run(prep())
        data_file = data.write_json(work / "mixed_data.json")
        log(
            f"prepared {data.tag}: pool days {pool_days[0]}..{pool_days[-1]}, {len(data.singles)} single and "
            f"{len(data.bundles)} bundle patients, {len(data.checkins)} check-in orders, rooms {data.rooms} "
            f"({time.monotonic() - t:.1f}s)"
        )
        server.start(timeout_s=300)  # its start-up generates the horizon and rebuilds the index
        log(f"server ready on {server.base} (pid {server.proc.pid}, workers {args.workers})")  # type: ignore[union-attr]
        ping = None
        if args.ping_seconds > 0:
            ping = run_ping(server, args.db, args.ping_users, args.ping_seconds, work)
            log(f"/ping: {ping['rps']:,.0f} req/s, p50 {ping['p50_ms']} ms, {ping['errors']} errors")
            result["ping"] = ping

        cycle_s = args.cycle_minutes * 60 if args.soak else 0.0
        interval_s = args.interval if args.soak else max(5.0, args.duration / 6)
        lenv = mixed_env(args, data_file, work, cycle_s, interval_s)
        spawn = args.users if not args.soak else max(1.0, args.users / 10)
        cmd = locust_cmd(
            HERE / "locustfile_clinical_day.py", args.users, spawn, args.duration, work / "mixed", server.base
        )
        log(
            f"locust mixed day: -u {args.users} ({args.techs} technicians, {args.viewers} screens), rate "
            f"{args.rate or 'closed loop'} tasks/s, {args.tech_rate} flows/s per room, {args.duration:.0f}s"
            + (f", phases every {args.cycle_minutes} min, sample every {args.interval:.0f}s" if args.soak else "")
        )
        if args.soak:
            sampler = Sampler(server, db_url, args.db, redis_url, args.prefix)
        before = cpu_snapshot(server.proc.pid, args.db)  # type: ignore[union-attr]
        baseline = sampler.sample(None) if sampler else None
        out_file = (work / "mixed.out").open("w")
        t0 = time.monotonic()
        # Its own session: a Ctrl-C reaches the driver only, which then stops Locust once, cleanly.
        proc = subprocess.Popen(
            cmd, stdout=out_file, stderr=subprocess.STDOUT, env=lenv, cwd=ROOT, start_new_session=True
        )
        samples: list[dict[str, Any]] = []
        try:
            if sampler is not None:
                assert baseline is not None
                print(soak_line(0, {"phase": "start"}, baseline), flush=True)
                soak_loop(proc, sampler, work / "intervals.jsonl", t0, args, samples)
            proc.wait(timeout=max(1.0, args.duration + 120 - (time.monotonic() - t0)))
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else "locust overran its time"
            log(f"{why}: stopping the load generator; the figures so far follow")
            result["interrupted"] = why
            proc.send_signal(signal.SIGINT)  # Locust writes its final figures on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            out_file.close()
        after = cpu_snapshot(server.proc.pid, args.db)  # type: ignore[union-attr]
        res = collect_mixed(work)
        res["cpu"] = cpu_delta(before, after)
        meta = {
            "users": args.users,
            "rate": args.rate or "closed",
            "workers": args.workers,
            "seconds": round(args.duration),
            "cpus": os.cpu_count(),
            "load": f"{result['loadavg_before']:.2f}->{os.getloadavg()[0]:.2f}",
        }
        result["mixed"] = {**res, "figures": print_mixed(res, ping, args.duration, meta)}
        errors = result["mixed"]["figures"]["errors"]
        if args.soak:
            ran = min(args.duration, time.monotonic() - t0) if result.get("interrupted") else args.duration
            verdict = soak_verdict(samples, args, ran)
            if result.get("interrupted"):
                verdict["reason"] = f"{result['interrupted']} after {_hms(ran)}: partial figures"
            result["soak"] = {"baseline": baseline, "samples": samples, **verdict}
            print_verdict(verdict)
            if verdict["verdict"] == "FAIL":
                exit_code = 1
        if errors or result.get("interrupted"):
            exit_code = 1  # an interrupted run's figures are partial: never a clean pass
        inv = check_invariants(db_url, redis_url, args.prefix, data.tag)
        result["invariants"] = inv
        print_invariants(inv)
        if not inv["ok"]:
            exit_code = 1
    except (Exception, KeyboardInterrupt) as exc:
        log(f"run failed: {exc!r}")
        result["failed"] = repr(exc)
        exit_code = 1
    finally:
        if sampler is not None:
            sampler.close()
        server.stop()
        if not args.keep:
            try:
                asyncio.run(drop_database(database_url, args.db))
                n_keys = delete_redis_keys(redis_url, args.prefix)
                log(f"server stopped; database {args.db} dropped; {n_keys} {args.prefix}:* keys deleted")
            except Exception as exc:
                log(f"cleanup failed: {exc!r}")
        server_log = server.tail(1_000_000).splitlines()
        warnings = [ln for ln in server_log if re.search(r"WARNING|ERROR|Traceback", ln)]
        exceptions = Counter(m.group(1) for ln in server_log if (m := run_bench._EXCEPTION_LINE.match(ln)))
    result["server_warnings"] = warnings[:50]
    result["server_exceptions"] = dict(exceptions)
    if warnings:
        print(f"server log ({server.log_path}): {len(warnings)} warning/error lines")
        for name, k in exceptions.most_common(5):
            print(f"   {k} x {name}")
        for ln in [w for w in warnings if "Traceback" not in w][:5]:
            print("   " + ln[:200])
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["exit_code"] = exit_code
    out = args.out or RESULTS / (f"soak-{stamp}.json" if args.soak else "mixed-latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    if args.soak and args.out is None:
        (RESULTS / "soak-latest.json").write_text(out.read_text())
    print(f"wall time {result['wall_s']:.0f}s; results in {out}; exit {exit_code}")
    return exit_code


def soak_loop(
    proc: subprocess.Popen[bytes],
    sampler: Sampler,
    path: Path,
    t0: float,
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
) -> None:
    """One sample (appended to `samples`) per interval line the load generator writes, until it exits."""
    offset = 0
    deadline = t0 + args.duration + 120
    while time.monotonic() < deadline:
        lines: list[str] = []
        if path.exists():
            with path.open(encoding="utf-8") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1] if "\n" in chunk else ""
            offset += len(complete.encode("utf-8"))
            lines = [ln for ln in complete.splitlines() if ln.strip()]
        for ln in lines:
            iv = json.loads(ln)
            s = sampler.sample(proc.pid)
            elapsed = time.monotonic() - t0
            print(soak_line(elapsed, iv, s), flush=True)
            samples.append(
                {
                    "elapsed": round(elapsed, 1),
                    "phase": iv.get("phase"),
                    "phases": iv.get("phases"),
                    "requests": iv.get("requests", 0),
                    "errors": iv.get("failures", 0) + iv.get("ws_failures", 0),
                    "ws_events": iv.get("ws_events", 0),
                    "p99_ms": iv.get("p99_ms"),
                    "bookings": iv.get("bookings", 0),
                    "failed_names": iv.get("failed_names"),
                    "pools": iv.get("pools"),
                    **s,
                }
            )
        if proc.poll() is not None:
            break
        time.sleep(0.5)


def print_verdict(v: dict[str, Any]) -> None:
    print(f"\nsoak verdict: {v['verdict']}" + (f" ({v['reason']})" if v.get("reason") else ""))
    for name, c in v.get("checks", {}).items():
        figures = {k: val for k, val in c.items() if k not in ("ok", "rule", "per_interval")}
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name:<16} {figures}  [{c['rule']}]")
    per = v.get("checks", {}).get("errors", {}).get("per_interval")
    if per:
        print(f"  error rate per interval: {' '.join(f'{x:.4f}' for x in per)}")


if __name__ == "__main__":
    sys.exit(main())
