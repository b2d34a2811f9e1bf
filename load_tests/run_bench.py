"""Booking benchmark driver: python -m load_tests.run_bench [--seconds N] [--users N]

Needs DATABASE_URL and REDIS_URL (a PostgreSQL server where it may create and drop the database
`hy_bench`, and a Redis server where it uses the key prefix `hybench`). It seeds the demo hospital
into hy_bench, starts `python -m app serve --no-demo` on a free port of 127.0.0.1, and measures,
under wrk (when installed) and Locust:

  ping        GET /ping, the HTTP ceiling of the same server
  booking     scenario A: 20 slots of 100,000 places: nearly every request books (bookings/s)
  storm       scenario B: 10 slots of 5 places: the 07:00 release storm, most attempts find the slots full

After each booking run it checks the invariant in PostgreSQL (booked <= capacity, booked == live
appointments; in the storm exactly min(capacity, attempts) succeed) and compares Redis's counters
with PostgreSQL's. It prints a report and writes load_tests/results/latest.json. The server is
stopped, the database dropped and the hybench:* keys deleted whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import psutil
import redis

from load_tests.storm_data import StormData, check_invariant, prepare_storm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCH_DB = "hy_bench"
REDIS_PREFIX = "hybench"
PASSWORD = "Huiyue@2026"
HOSPITAL_ID = "h1"
TIMEZONE = "Asia/Shanghai"

# Reference figures from /work/shared/PERFORMANCE.md
MINIMAL_PATH_RATIO = 0.088  # minimal booking / ping, 1 worker, wrk
FLOOR_BOOKINGS_S = 1000.0  # the hospital's floor ...
FLOOR_P99_MS = 2000.0  # ... with p99 under 2 s

CLK_TCK = os.sysconf("SC_CLK_TCK")
_EXCEPTION_LINE = re.compile(
    r"^((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Disconnect|Timeout|Unavailable))\b"
)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def working_days_ahead(n: int, count: int) -> list[date]:
    """`count` consecutive working days (Mon-Fri), the first being the nth working day after today."""
    day = datetime.now(ZoneInfo(TIMEZONE)).date()
    out: list[date] = []
    seen = 0
    while len(out) < count:
        day += timedelta(days=1)
        if day.isoweekday() <= 5:
            seen += 1
            if seen >= n:
                out.append(day)
    return out


def http_json(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30.0) -> Any:
    assert url.startswith("http://127.0.0.1:"), url  # never anywhere else
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 2)


# ------------------------------------------------------------------------------------------------
# CPU accounting: utime + stime from /proc/<pid>/stat
# ------------------------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(start time in ticks, utime + stime in seconds) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
    return starttime, (utime + stime) / CLK_TCK


_CLIENT_BACKEND = re.compile(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]|\[[0-9a-f:]+\]\(\d+\)")


def _groups(server_pid: int, db: str) -> dict[str, list[int]]:
    """The processes whose CPU a booking costs: the server (and any children), Redis, and PostgreSQL's
    postmaster, auxiliary processes and hy_bench backends (other databases' backends are left out:
    this machine's PostgreSQL is shared)."""
    groups: dict[str, list[int]] = {"server": [], "redis": [], "postgres": []}
    try:
        server = psutil.Process(server_pid)
        groups["server"] = [server_pid] + [c.pid for c in server.children(recursive=True)]
    except psutil.Error:
        pass
    for p in psutil.process_iter(["name", "cmdline"]):
        name = p.info["name"] or ""
        if name in ("redis-server", "valkey-server"):
            groups["redis"].append(p.pid)
        elif name == "postgres" or name.startswith("postgres:"):
            cmd = " ".join(p.info["cmdline"] or [])
            if _CLIENT_BACKEND.search(cmd) and f" {db} " not in cmd:
                continue  # a backend of another database
            groups["postgres"].append(p.pid)
    return groups


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[str, dict[tuple[int, int], float]]
    children: float  # this process's waited-for children (the load generator)


def cpu_snapshot(server_pid: int, db: str = BENCH_DB) -> CpuSnapshot:
    """CPU times of the server (and children), Redis, and PostgreSQL's shared processes and `db`'s
    backends, and of this process's waited-for children (the load generator)."""
    procs: dict[str, dict[tuple[int, int], float]] = {}
    for group, pids in _groups(server_pid, db).items():
        procs[group] = {}
        for pid in pids:
            got = _proc_cpu(pid)
            if got is not None:
                procs[group][(pid, got[0])] = got[1]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(time.monotonic(), procs, ru.ru_utime + ru.ru_stime)


def cpu_delta(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """CPU seconds used between two snapshots, per group (a process new in b counts from zero)."""
    out: dict[str, float] = {}
    for group, now in b.procs.items():
        before = a.procs.get(group, {})
        out[group] = sum(max(0.0, t - before.get(key, 0.0)) for key, t in now.items())
    out["loadgen"] = max(0.0, b.children - a.children)
    out["wall"] = b.at - a.at
    return out


# ------------------------------------------------------------------------------------------------
# Setup and teardown of the database, Redis and the server
# ------------------------------------------------------------------------------------------------


async def recreate_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def delete_redis_keys(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
        return deleted
    finally:
        client.close()


def seed_demo(env: dict[str, str], timeout_s: float = 300) -> None:
    """`python -m app seed-demo` into the database of `env`; RuntimeError with its output if it fails."""
    seed = subprocess.run(
        [sys.executable, "-m", "app", "seed-demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if seed.returncode != 0:
        raise RuntimeError(f"seed-demo failed: {seed.stdout[-1000:]}{seed.stderr[-2000:]}")


class Server:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--no-demo", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if http_json("GET", self.base + "/ready", timeout=2).get("status") == "ready":
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only the server and its children
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()


# ------------------------------------------------------------------------------------------------
# One measured run
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    scenario: str  # ping | booking | storm
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0  # all requests / s
    booked: int = 0  # 201s seen by the client
    full: int = 0  # 409 slot_unavailable
    errors: int = 0  # anything else (and transport errors)
    attempts: int = 0  # booking requests answered
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    pairs: int = 0
    exhausted: bool = False
    cpu: dict[str, float] = field(default_factory=dict)
    invariant: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bookings_per_s(self) -> float:
        return self.booked / self.seconds if self.seconds else 0.0

    @property
    def attempts_per_s(self) -> float:
        return self.attempts / self.seconds if self.seconds else 0.0

    def cpu_us_per(self, n: int) -> dict[str, float]:
        if not n or not self.cpu:
            return {}
        keys = ("server", "postgres", "redis", "loadgen")
        out = {k: round(self.cpu.get(k, 0.0) / n * 1e6, 1) for k in keys}
        out["total"] = round(sum(out.values()), 1)
        return out

    def as_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["bookings_per_s"] = round(self.bookings_per_s, 1)
        d["attempts_per_s"] = round(self.attempts_per_s, 1)
        d["cpu_us_per_booking"] = self.cpu_us_per(self.booked)
        d["cpu_us_per_attempt"] = self.cpu_us_per(self.attempts)
        return d


def _hybench_json(out: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith("HYBENCH_JSON "):
            return dict(json.loads(line[len("HYBENCH_JSON ") :]))
    raise RuntimeError(f"wrk printed no HYBENCH_JSON line:\n{out[-2000:]}")


def _wrk_rps(out: str) -> float:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, bench_db_url: str, redis_url: str) -> None:
        self.args = args
        self.server = server
        self.db_url = bench_db_url
        self.redis_url = redis_url
        self.clerk_token = ""
        self.admin_token = ""
        self.workdir = RESULTS / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- data --------------------------------------------------------------------------------

    def prepare(self, day: date, n_patients: int, n_slots: int, capacity: int) -> StormData:
        async def go() -> StormData:
            conn = await asyncpg.connect(self.db_url)
            try:
                data = await prepare_storm(
                    conn, day=day, n_patients=n_patients, n_slots=n_slots, capacity_per_slot=capacity
                )
                # fresh statistics, and no autovacuum of the new rows in the middle of the run
                await conn.execute("VACUUM ANALYZE patient, exam_order, slot")
                return data
            finally:
                await conn.close()

        t = time.monotonic()
        data = asyncio.run(go())
        reply = http_json(
            "POST",
            self.server.base + "/api/v1/admin/reconcile",
            {"day": day.isoformat()},
            self.admin_token,
            timeout=120,
        )
        log(
            f"prepared {n_patients} patients, {n_slots} slots x {capacity} on {day} ({data.resource_id}) "
            f"in {time.monotonic() - t:.1f}s; index rebuilt: {reply['days']}"
        )
        return data

    def verify(self, data: StormData, run: Run) -> None:
        async def go() -> dict[str, Any]:
            conn = await asyncpg.connect(self.db_url)
            try:
                return await check_invariant(conn, data.slot_ids)
            finally:
                await conn.close()

        # let the last in-flight requests of a killed load generator finish in the server
        time.sleep(1.0)
        inv = asyncio.run(go())
        inv["redis"] = self.redis_check(data)
        if run.scenario == "storm":
            expected = min(data.total_capacity, run.attempts)
            inv["expected_booked"] = expected
            inv["storm_exact"] = inv["booked"] == expected
        inv["client_booked"] = run.booked
        run.invariant = inv

    def redis_check(self, data: StormData) -> dict[str, Any]:
        """Redis's booked counters against PostgreSQL's, and no live hold left behind."""
        tag = f"{REDIS_PREFIX}:{{{HOSPITAL_ID}:{data.day.isoformat()}}}"
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            b = [client.hget(f"{tag}:slot:{sid}", "b") for sid in data.slot_ids]
            holds = client.zcard(f"{tag}:holds")
        finally:
            client.close()

        async def pg() -> list[int]:
            conn = await asyncpg.connect(self.db_url)
            try:
                rows = await conn.fetch(
                    "SELECT id, booked FROM slot WHERE id = ANY($1::bigint[]) ORDER BY id", data.slot_ids
                )
                return [r["booked"] for r in rows]
            finally:
                await conn.close()

        booked = asyncio.run(pg())
        redis_b = [int(x) if x is not None else None for x in b]
        return {
            "ok": redis_b == booked and holds == 0,
            "redis_booked": sum(x or 0 for x in redis_b),
            "live_holds": holds,
            "mismatched_slots": sum(1 for x, y in zip(redis_b, booked, strict=True) if x != y),
        }

    # -- wrk ---------------------------------------------------------------------------------

    def wrk(self, scenario: str, data: StormData | None = None) -> Run:
        a = self.args
        cmd = [
            "wrk",
            f"-t{a.wrk_threads}",
            f"-c{a.wrk_connections}",
            f"-d{a.seconds}s",
            "--latency",
            "--timeout",
            "10s",
        ]
        if data is None:
            cmd += ["-s", str(HERE / "wrk_report.lua"), self.server.base + "/ping"]
        else:
            pairs = data.write_pairs_txt(self.workdir / f"wrk_{scenario}_pairs.txt")
            slots = ",".join(str(s) for s in data.slot_ids)
            cmd += [
                "-s",
                str(HERE / "wrk_book.lua"),
                self.server.base,
                "--",
                str(pairs),
                self.clerk_token,
                slots,
                str(a.wrk_threads),
            ]
        log(f"wrk {scenario}: {' '.join(cmd[:7])} ...")
        before = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 60, check=False)
        after = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
        (self.workdir / f"wrk_{scenario}.out").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        j = _hybench_json(proc.stdout)
        lat = j["latency_us"]
        e = j["errors"]
        run = Run(
            "wrk",
            scenario,
            requests=j["requests"],
            seconds=j["duration_us"] / 1e6,
            rps=_wrk_rps(proc.stdout),
            p50_ms=ms(lat["p50"]),
            p95_ms=ms(lat["p95"]),
            p99_ms=ms(lat["p99"]),
            max_ms=ms(lat["max"]),
        )
        transport = e["connect"] + e["read"] + e["write"] + e["timeout"]
        if data is None:
            run.errors = transport + e["status"]
        else:
            run.pairs = len(data.pairs)
            run.booked, run.full, run.attempts = j["booked"], j["full"], j["attempts"]
            run.errors = transport + j["conflict_other"] + j["other"]
            run.exhausted = j["threads_exhausted"] > 0
            if run.exhausted:
                run.notes.append(
                    f"{j['threads_exhausted']} wrk thread(s) ran out of pairs before {a.seconds}s: per-second "
                    "figures are lower bounds (raise --booking-rate-cap / --storm-rate-cap)"
                )
            if proc.stderr.strip():
                run.notes.append("wrk stderr: " + proc.stderr.strip().replace("\n", " | ")[:300])
        run.cpu = cpu_delta(before, after)
        return run

    # -- open loop ---------------------------------------------------------------------------

    def open_loop(self, rate: float, data: StormData) -> Run:
        """Bookings arriving at `rate` a second whatever the answers (load_tests/open_loop.py)."""
        a = self.args
        scenario = f"open{rate:g}"
        pairs = data.write_pairs_txt(self.workdir / f"{scenario}_pairs.txt")
        cmd = [
            sys.executable,
            "-m",
            "load_tests.open_loop",
            "--url",
            self.server.base,
            "--token",
            self.clerk_token,
            "--pairs",
            str(pairs),
            "--slots",
            ",".join(str(s) for s in data.slot_ids),
            "--rate",
            str(rate),
            "--seconds",
            str(a.seconds),
        ]
        log(f"open loop {scenario}: {rate:,.0f} bookings/s offered for {a.seconds}s")
        before = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 120, check=False, cwd=ROOT)
        after = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        (self.workdir / f"{scenario}.out").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("OPENLOOP_JSON ")), None)
        if line is None:
            raise RuntimeError(f"open_loop printed no result (rc {proc.returncode}): {proc.stderr[-2000:]}")
        j = json.loads(line[len("OPENLOOP_JSON ") :])
        lat = j["latency_ms"]
        run = Run(
            "open_loop",
            scenario,
            requests=j["sent"],
            seconds=j["answer_seconds"],  # booked/s over the time it took to answer them all
            rps=j["achieved_rate"],
            booked=j["booked"],
            full=j["full"],
            errors=j["other"] + j["transport_errors"] + j["unanswered"],
            attempts=j["answered"],
            p50_ms=lat["p50"],
            p95_ms=lat["p95"],
            p99_ms=lat["p99"],
            max_ms=lat["max"],
            pairs=len(data.pairs),
            exhausted=j["pairs_exhausted"],
        )
        run.cpu = cpu_delta(before, after)
        run.notes += [f"open loop: {x}" for x in j["other_samples"]]
        if j["unanswered"]:
            run.notes.append(f"{j['unanswered']} requests still unanswered after the drain")
        run.notes.append(f"open loop used {j['connections']} connections")
        return run

    # -- Locust ------------------------------------------------------------------------------

    def locust(self, scenario: str, data: StormData | None = None, open_rate: float | None = None) -> Run:
        """One Locust run; `open_rate` (bookings/s offered by `--open-users` paced users) instead of
        users booking as fast as the server answers."""
        a = self.args
        prefix = self.workdir / f"locust_{scenario}"
        env = dict(os.environ)
        users = a.users
        if open_rate is not None:
            users = a.open_users
            env["HY_OPEN_RATE_PER_USER"] = f"{open_rate / users:.6f}"
        final_csv = Path(f"{prefix}_final_stats.csv")  # written at quit by locust_final_stats.py
        final_csv.unlink(missing_ok=True)
        env["HY_LOCUST_FINAL_CSV"] = str(final_csv)
        if data is None:
            locustfile, classes = HERE / "locustfile_ping.py", ["PingUser"]
        else:
            locustfile, classes = HERE / "locustfile_release_storm.py", ["BookingUser"]
            env["HY_STORM_FILE"] = str(data.write_json(self.workdir / f"locust_{scenario}.json"))
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users if open_rate is None else max(1, users // 2)),
            "-t",
            f"{a.seconds}s",
            "--only-summary",
            "--csv",
            str(prefix),
            "--host",
            self.server.base,
            "--loglevel",
            "WARNING",
            *classes,
        ]
        offered = "" if open_rate is None else f" (open arrival {open_rate:,.0f}/s)"
        log(f"locust {scenario}: -u {users} -t {a.seconds}s {locustfile.name} {' '.join(classes)}{offered}")
        before = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=a.seconds + 90, check=False, env=env, cwd=ROOT
        )
        after = cpu_snapshot(self.server.proc.pid)  # type: ignore[union-attr]
        (self.workdir / f"locust_{scenario}.out").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        stats_path = final_csv if final_csv.exists() else Path(f"{prefix}_stats.csv")
        if not stats_path.exists():
            raise RuntimeError(f"locust wrote no {stats_path.name} (rc {proc.returncode}): {proc.stderr[-2000:]}")
        with stats_path.open(newline="") as f:
            rows = {r["Name"]: r for r in csv.DictReader(f)}
        run = Run("locust", scenario)
        run.cpu = cpu_delta(before, after)
        agg = rows.get("Aggregated", {})
        run.errors = int(agg.get("Failure Count") or 0)
        run.requests = int(agg.get("Request Count") or 0)
        run.rps = float(agg.get("Requests/s") or 0.0)
        # Locust's Requests/s is count / (last request - start): the real window, also when the users
        # stopped early because the pairs ran out.
        run.seconds = run.requests / run.rps if run.rps else 0.0

        def pct(row: dict[str, str], col: str) -> float | None:
            v = row.get(col)
            return float(v) if v not in (None, "", "N/A") else None

        if data is None:
            main = rows.get("ping", agg)
        else:
            run.pairs = len(data.pairs)
            book, full = rows.get("book", {}), rows.get("book (full)", {})
            run.booked = int(book.get("Request Count") or 0) - int(book.get("Failure Count") or 0)
            run.full = int(full.get("Request Count") or 0)
            run.attempts = int(book.get("Request Count") or 0) + run.full
            run.exhausted = run.attempts >= len(data.pairs)
            main = book if scenario != "storm" else agg  # storm: every attempt, booked or full
            if rows.get("login"):
                run.notes.append(f"logins: {rows['login']['Request Count']} (HY_STORM_LOGIN=shared by default)")
            if scenario != "storm" and run.exhausted:
                run.notes.append("the users ran out of pairs before -t: raise --booking-rate-cap")
        run.p50_ms, run.p95_ms, run.p99_ms, run.max_ms = (
            pct(main, "50%"),
            pct(main, "95%"),
            pct(main, "99%"),
            pct(main, "Max Response Time"),
        )
        fails = Path(f"{prefix}_failures.csv")
        if fails.exists():
            with fails.open(newline="") as f:
                top = sorted(csv.DictReader(f), key=lambda r: -int(r.get("Occurrences") or 0))[:3]
            run.notes += [f"failure x{r['Occurrences']}: {r['Name']} {r['Error'][:160]}" for r in top]
        return run


# ------------------------------------------------------------------------------------------------
# Raw Redis: EVALSHA of a one-counter script, the ceiling of one Lua call on this Redis
# ------------------------------------------------------------------------------------------------

RAW_SCRIPT = "return redis.call('HINCRBY', KEYS[1], 'b', 1)"


def raw_evalsha(redis_url: str, requests: int = 100_000, clients: int = 50) -> dict[str, Any]:
    """redis-benchmark (-c clients, no pipelining) running EVALSHA of a script that bumps one hash
    field, as grab.lua does at its core, against the benchmark's Redis in the same run."""
    exe = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if exe is None:
        return {"skipped": "redis-benchmark not installed"}
    parts = urlsplit(redis_url)
    client = redis.Redis.from_url(redis_url)
    key = f"{REDIS_PREFIX}:raw:evalsha"
    try:
        sha = str(client.script_load(RAW_SCRIPT))
        cmd = [exe, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        if parts.password:
            cmd += ["-a", parts.password]
        cmd += ["--dbnum", (parts.path or "/0").lstrip("/") or "0", "-n", str(requests), "-c", str(clients)]
        cmd += ["--csv", "EVALSHA", sha, "1", key]
        log(f"raw EVALSHA: redis-benchmark -n {requests} -c {clients}")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        row = next(csv.DictReader(out.stdout.splitlines()), None)
        if out.returncode != 0 or row is None:
            return {"skipped": f"redis-benchmark failed ({out.returncode}): {out.stderr[-300:]}"}
        return {
            "rps": float(row["rps"]),
            "p50_ms": float(row["p50_latency_ms"]),
            "p99_ms": float(row["p99_latency_ms"]),
        }
    finally:
        client.delete(key)
        client.close()


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def report(runs: list[Run], meta: dict[str, Any], ceilings: dict[str, Any] | None = None) -> dict[str, Any]:
    by: dict[tuple[str, str], Run] = {(r.tool, r.scenario): r for r in runs}
    tools = [t for t in ("wrk", "locust") if any(r.tool == t for r in runs)]
    summary: dict[str, Any] = {}
    line = "=" * 100
    print("\n" + line)
    print("HuiYue booking benchmark  " + "  ".join(f"{k}={v}" for k, v in meta.items() if k != "skipped"))
    print(line)
    for tool in tools:
        ping, book, storm = by.get((tool, "ping")), by.get((tool, "booking")), by.get((tool, "storm"))
        print(f"\n--- {tool} " + "-" * (95 - len(tool)))
        print(
            f"{'run':<9}{'req/s':>10}{'ok/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'requests':>10}{'booked':>8}{'full':>8}{'errors':>7}{'secs':>7}"
        )
        for r in (ping, book, storm):
            if r is None:
                continue
            ok = r.rps if r.scenario == "ping" else r.bookings_per_s
            print(
                f"{r.scenario:<9}{_f(r.rps):>10}{_f(ok):>10}{_f(r.p50_ms, '.1f'):>9}{_f(r.p95_ms, '.1f'):>9}"
                f"{_f(r.p99_ms, '.1f'):>9}{_f(r.max_ms, '.0f'):>9}{r.requests:>10,}{r.booked:>8,}{r.full:>8,}"
                f"{r.errors:>7,}{r.seconds:>7.1f}"
            )
        s: dict[str, Any] = {}
        if ping and book:
            ratio = book.bookings_per_s / ping.rps if ping.rps else 0.0
            s["bookings_per_ping"] = round(ratio, 4)
            print(
                f"ratio bookings/ping          {ratio:.3f}   (PERFORMANCE.md minimal path: {MINIMAL_PATH_RATIO}; "
                f"this run = {ratio / MINIMAL_PATH_RATIO:.0%} of it)"
            )
        raw = (ceilings or {}).get("evalsha", {})
        if book and raw.get("rps"):
            ratio = book.bookings_per_s / raw["rps"]
            s["bookings_per_evalsha"] = round(ratio, 4)
            print(
                f"ratio bookings/raw EVALSHA   {ratio:.4f}   (redis-benchmark -c 50, same Redis, same run: "
                f"{raw['rps']:,.0f}/s, p99 {raw['p99_ms']:.2f} ms)"
            )
        if ping and storm:
            ratio = storm.attempts_per_s / ping.rps if ping.rps else 0.0
            s["storm_attempts_per_ping"] = round(ratio, 4)
            print(
                f"storm attempts/s             {storm.attempts_per_s:,.0f}   attempts/ping {ratio:.3f}   "
                f"({storm.attempts:,} attempts, {storm.booked} booked, {storm.full:,} full)"
            )
        if book:
            floor_ok = book.bookings_per_s >= FLOOR_BOOKINGS_S and (book.p99_ms or 1e9) < FLOOR_P99_MS
            s["floor_met"] = floor_ok
            print(
                f"hospital floor (>= {FLOOR_BOOKINGS_S:,.0f} bookings/s, p99 < {FLOOR_P99_MS / 1000:.0f} s): "
                f"{'MET' if floor_ok else 'NOT MET'}  ({book.bookings_per_s:,.0f}/s, p99 {_f(book.p99_ms, '.0f')} ms)"
            )
            cpu = book.cpu_us_per(book.booked)
            if cpu:
                s["cpu_us_per_booking"] = cpu
                print(
                    "CPU us per booking           "
                    + "  ".join(f"{k} {v:,.0f}" for k, v in cpu.items())
                    + "   (PERFORMANCE.md minimal path: ~670 total, uvicorn ~400, PostgreSQL ~210)"
                )
        if storm:
            cpu = storm.cpu_us_per(storm.attempts)
            if cpu:
                s["cpu_us_per_storm_attempt"] = cpu
                print("CPU us per storm attempt     " + "  ".join(f"{k} {v:,.0f}" for k, v in cpu.items()))
        for r in (book, storm):
            if r is None:
                continue
            inv = r.invariant
            red = inv.get("redis", {})
            verdict = "OK" if inv.get("ok") and red.get("ok") and inv.get("storm_exact", True) else "VIOLATION"
            extra = ""
            if r.scenario == "storm":
                extra = (
                    f"; storm: booked {inv.get('booked')} == min(capacity {inv.get('capacity')}, attempts "
                    f"{r.attempts}) = {inv.get('expected_booked')}: {'yes' if inv.get('storm_exact') else 'NO'}"
                )
            print(
                f"invariant {r.scenario:<8} {verdict}: slots booked {inv.get('booked')} = appointments "
                f"{inv.get('appointments')} <= capacity {inv.get('capacity')}, client saw {r.booked} x 201; "
                f"redis booked {red.get('redis_booked')}, live holds {red.get('live_holds')}{extra}"
            )
            if inv.get("violations"):
                print(f"   violations: {inv['violations']}")
            if r.booked != inv.get("booked"):
                print(
                    f"   note: {inv.get('booked', 0) - r.booked:+d} bookings committed that the client did not "
                    "count (requests in flight when the load generator stopped)"
                )
        for r in (ping, book, storm):
            for n in r.notes if r else []:
                print(f"   note ({r.scenario}): {n}")  # type: ignore[union-attr]
        summary[tool] = s
    opens = [r for r in runs if r.scenario.startswith("open")]
    if opens:
        print(f"\n--- open arrival ({opens[0].tool}) " + "-" * 70)
        print(
            f"{'offered/s':>10}{'booked/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
            f"{'p99 < 100 ms':>14}   invariant"
        )
        for r in opens:
            offered = float(r.scenario[4:])
            inv = r.invariant
            inv_ok = bool(inv.get("ok") and inv.get("redis", {}).get("ok"))
            print(
                f"{offered:>10,.0f}{r.bookings_per_s:>10,.0f}{_f(r.p50_ms, '.1f'):>9}{_f(r.p95_ms, '.1f'):>9}"
                f"{_f(r.p99_ms, '.1f'):>9}{_f(r.max_ms, '.0f'):>9}{r.errors:>8,}"
                f"{'yes' if (r.p99_ms or 1e9) < 100 else 'NO':>14}   {'OK' if inv_ok else 'VIOLATION'}"
            )
            cpu = r.cpu_us_per(r.booked)
            if cpu:
                print("   CPU us per booking " + "  ".join(f"{k} {v:,.0f}" for k, v in cpu.items()))
            for n in r.notes:
                print(f"   note: {n}")
            summary.setdefault("open_arrival", []).append(
                {"offered": offered, "booked_per_s": round(r.bookings_per_s, 1), "p99_ms": r.p99_ms, "errors": r.errors}
            )
    raw = (ceilings or {}).get("evalsha", {})
    if raw.get("skipped"):
        print(f"\nraw EVALSHA: {raw['skipped']}")
    elif raw:
        summary["raw_evalsha"] = raw
    for skipped in meta.get("skipped", []):
        print(f"\n{skipped}")
    print(line)
    return summary


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m load_tests.run_bench", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10, help="duration of each timed run (default 10)")
    p.add_argument("--users", type=int, default=200, help="Locust users (default 200)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=64)
    p.add_argument("--storm-patients", type=int, default=5000, help="patients of the Locust release storm")
    p.add_argument(
        "--booking-rate-cap",
        type=int,
        default=4000,
        help="bookings/s the booking scenario's patients must last for (patients = cap x seconds)",
    )
    p.add_argument(
        "--storm-rate-cap",
        type=int,
        default=6000,
        help="attempts/s the wrk storm's patients must last for (wrk runs for a fixed time)",
    )
    p.add_argument("--tools", default="wrk,locust", help="comma-separated: wrk, locust")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server (default 1)")
    p.add_argument(
        "--open-rates",
        default="",
        help="comma-separated bookings/s to offer as an open arrival rate under Locust, e.g. 250,500,1000",
    )
    p.add_argument(
        "--open-tool",
        choices=("open_loop", "locust"),
        default="open_loop",
        help="what offers the open-arrival rate: load_tests/open_loop.py (default) or paced Locust users",
    )
    p.add_argument("--open-users", type=int, default=1000, help="paced Locust users (--open-tool locust)")
    p.add_argument("--scenarios", default="ping,booking,storm", help="comma-separated subset of ping, booking, storm")
    p.add_argument("--keep", action="store_true", help="keep the hy_bench database and hybench:* keys")
    return p.parse_args(argv)


def local_servers(tool: str, db: str, prefix: str) -> tuple[str, str] | None:
    """DATABASE_URL and REDIS_URL when both are set and name this machine; else None, with the reason
    printed (the drivers create and drop databases there: never anywhere else)."""
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not database_url or not redis_url:
        print(
            f"{tool} needs DATABASE_URL and REDIS_URL, e.g.\n"
            "  DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 "
            f"python -m load_tests.{tool}\n"
            f"(it creates and drops the database {db} on that server and uses Redis keys {prefix}:*)",
            file=sys.stderr,
        )
        return None
    for url in (database_url, redis_url):
        host = urlsplit(url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"refusing a non-local server: {host}", file=sys.stderr)
            return None
    return database_url, redis_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    urls = local_servers("run_bench", BENCH_DB, REDIS_PREFIX)
    if urls is None:
        return 2
    database_url, redis_url = urls

    RESULTS.mkdir(parents=True, exist_ok=True)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    skipped: list[str] = []
    if "wrk" in tools and shutil.which("wrk") is None:
        tools.remove("wrk")
        skipped.append("wrk not installed: skipped (apt-get install -y wrk)")
        print(skipped[-1], flush=True)

    bench_db_url = with_database(database_url, BENCH_DB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HY_")}
    env.update(
        {
            "DATABASE_URL": bench_db_url,
            "REDIS_URL": redis_url,
            "HY_REDIS_PREFIX": REDIS_PREFIX,
            "HY_LOG_LEVEL": "info",  # the server's closing "group commit: ..." line is printed below
            # Thousands of bookings a second from one loopback address and a few accounts are the
            # point here, not abuse: the per-account and per-address limits stay out of the way.
            "HY_RATE_LIMITS": "0",
            "HY_WORKERS": str(args.workers),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for passthrough in (
        "HY_DB_POOL_MAX",
        "HY_DB_POOL_MIN",
        "HY_REDIS_MAX_CONNECTIONS",
        "HY_GROUP_COMMIT_MAX",
        "HY_GROUP_COMMIT_IN_FLIGHT",
    ):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    started = time.monotonic()
    server = Server(env, free_port(), RESULTS / "server.log")
    runs: list[Run] = []
    ceilings: dict[str, Any] = {}  # the raw EVALSHA ceiling
    load_before = os.getloadavg()
    try:
        log(f"recreating database {BENCH_DB}; deleting {REDIS_PREFIX}:* keys")
        asyncio.run(recreate_database(database_url, BENCH_DB))
        delete_redis_keys(redis_url, REDIS_PREFIX)
        seed_demo(env)
        log(f"seeded; starting the server on {server.base}")
        server.start()
        server_proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
        log(f"server ready (pid {server_proc.pid}, {len(server_proc.children(recursive=True))} children)")
        bench = Bench(args, server, bench_db_url, redis_url)
        bench.clerk_token = http_json(
            "POST", server.base + "/api/v1/auth/login", {"username": "clerk", "password": PASSWORD}
        )["token"]
        bench.admin_token = http_json(
            "POST", server.base + "/api/v1/auth/login", {"username": "admin", "password": PASSWORD}
        )["token"]
        open_rates = [float(x) for x in args.open_rates.split(",") if x.strip()]
        scenarios = {x.strip() for x in args.scenarios.split(",") if x.strip()}
        days = iter(working_days_ahead(3, 2 * len(tools) + len(open_rates)))
        for tool in tools:
            measure = bench.wrk if tool == "wrk" else bench.locust
            if "ping" in scenarios:
                runs.append(measure("ping"))
                if "evalsha" not in ceilings:
                    ceilings["evalsha"] = raw_evalsha(redis_url)
            if "booking" in scenarios:
                cap = args.booking_rate_cap if tool == "wrk" else max(1000, args.booking_rate_cap * 3 // 4)
                data = bench.prepare(next(days), n_patients=cap * args.seconds, n_slots=20, capacity=100_000)
                run = measure("booking", data)
                bench.verify(data, run)
                runs.append(run)
            if "storm" in scenarios:
                storm_patients = args.storm_rate_cap * args.seconds if tool == "wrk" else args.storm_patients
                data = bench.prepare(next(days), n_patients=storm_patients, n_slots=10, capacity=5)
                run = measure("storm", data)
                bench.verify(data, run)
                runs.append(run)
        for rate in open_rates:
            # Enough pairs for the whole run at the offered rate, plus a margin.
            pairs = int(rate * args.seconds * 1.2) + 100
            data = bench.prepare(next(days), n_patients=pairs, n_slots=20, capacity=100_000)
            if args.open_tool == "locust":
                run = bench.locust(f"open{rate:g}", data, open_rate=rate)
            else:
                run = bench.open_loop(rate, data)
            bench.verify(data, run)
            runs.append(run)
    finally:
        server.stop()
        if not args.keep:
            try:
                asyncio.run(drop_database(database_url, BENCH_DB))
                n = delete_redis_keys(redis_url, REDIS_PREFIX)
                log(f"server stopped; database {BENCH_DB} dropped; {n} {REDIS_PREFIX}:* keys deleted")
            except Exception as exc:
                log(f"cleanup failed: {exc!r}")
        server_log = server.tail(1_000_000).splitlines()
        warnings = [ln for ln in server_log if re.search(r"WARNING|ERROR|Traceback", ln)]
        exceptions = Counter(m.group(1) for ln in server_log if (m := _EXCEPTION_LINE.match(ln)))
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "users": args.users,
        "wrk": f"-t{args.wrk_threads} -c{args.wrk_connections}",
        "workers": args.workers,
        "loadavg_before": f"{load_before[0]:.2f}",
        "loadavg_after": f"{os.getloadavg()[0]:.2f}",
        "skipped": skipped,
    }
    summary = report(runs, meta, ceilings)
    if warnings:
        print(f"server log ({server.log_path}): {len(warnings)} warning/error lines")
        for name, n in exceptions.most_common(5):
            print(f"   {n} x {name}")
        for ln in [w for w in warnings if "Traceback" not in w][:3]:
            print("   " + ln[:200])
    for ln in server_log:
        if "group commit:" in ln:  # app/services.py, at shutdown: bookings per PostgreSQL commit
            print("server " + ln.split("INFO ", 1)[-1])
    print(f"wall time {time.monotonic() - started:.0f}s; results in {RESULTS / 'latest.json'}")
    out = {
        "meta": meta,
        "summary": summary,
        "runs": [r.as_json() for r in runs],
        "server_warnings": warnings[:50],
        "server_exceptions": dict(exceptions),
        "reference": {
            "minimal_path_ratio": MINIMAL_PATH_RATIO,
            "floor_bookings_s": FLOOR_BOOKINGS_S,
            "floor_p99_ms": FLOOR_P99_MS,
        },
    }
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2, default=str))
    violations = [
        r
        for r in runs
        if r.invariant
        and not (
            r.invariant.get("ok") and r.invariant.get("redis", {}).get("ok") and r.invariant.get("storm_exact", True)
        )
    ]
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
