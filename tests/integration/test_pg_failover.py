"""Failover of PostgreSQL in the middle of a booking storm (主备双机热备, docs/failover.md).

`scripts/pg-standby up` builds a primary and a synchronous streaming standby on this machine (two
clusters, two free ports, a temporary directory). The platform connects with the host list
`postgresql://…@127.0.0.1:P,127.0.0.1:S/db?target_session_attrs=read-write`. While booking workers
hammer a few slots, the primary is crashed (`pg_ctl stop -m immediate`) and the standby promoted.

Invariants:
- every attempt ends in a booking, a clear 503 (DatabaseUnavailable) or a 409 (slot full): no
  other error;
- every booking the platform acknowledged is on the promoted server (synchronous replication:
  nothing committed is lost) and no slot is over capacity;
- once the service has settled the holds the crash left in doubt (without the reaper, long before
  they expire), Redis and PostgreSQL agree;
- bookings go on through the same Services against the new primary (the host list), and the 503s
  are a short burst around the failover.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.booking.service import BookItem
from app.db.migrate import migrate
from app.db.pool import connect, create_pool
from app.demo.seed import seed_demo
from app.errors import AppError, SlotUnavailable
from app.security.actor import Actor
from app.services import Services
from app.settings import PROJECT_ROOT, DatabaseSettings
from tests.conftest import Servers, make_settings
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    dedicated_slots,
    future_day,
    new_patients_with_orders,
)
from tests.live_server import free_ports

pytestmark = pytest.mark.slow

SCRIPT = PROJECT_ROOT / "scripts" / "pg-standby"
DATABASE = "huiyue_failover"
SLOTS, CAPACITY = 4, 100  # 400 places: the storm stops well before they run out
WORKERS = 32
PATIENTS = 3000  # a 503 costs the worker its patient: the outage eats through them
BEFORE = 120  # bookings committed before the primary is crashed
AFTER = 120  # bookings committed on the promoted standby before the storm stops
DETECTION_S = 0.3  # the gap between the crash and the promotion (a failover manager's reaction)
PHASE_TIMEOUT_S = 20.0
SETTLED_BOUND_S = 10.0  # promotion -> every in-doubt hold settled (they would expire after 60 s)


@dataclass
class Pair:
    dir: str
    primary_port: int
    standby_port: int

    def url(self, *ports: int, database: str = DATABASE) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        query = "?target_session_attrs=read-write" if len(ports) > 1 else ""
        return f"postgresql://postgres@{hosts}/{database}{query}"


async def _script(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        env={**os.environ, "HY_PYTHON": sys.executable},
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if check:
        assert proc.returncode == 0, f"scripts/pg-standby {' '.join(args)} failed ({proc.returncode}):\n{text}"
    return text


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A primary and its synchronous standby, stopped and removed afterwards whatever happened."""
    workdir = tempfile.mkdtemp(prefix="hy-pgfo-")
    primary_port, standby_port = free_ports(2)
    try:
        print(await _script("up", workdir, str(primary_port), str(standby_port)), end="")
        yield Pair(workdir, primary_port, standby_port)
    finally:
        await _script("down", workdir, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def failover_services(
    pair: Pair, servers: Servers, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Services]:
    """The demo hospital on the pair, the platform connected through the host list."""
    admin = await connect(pair.url(pair.primary_port, database="postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    conn = await connect(pair.url(pair.primary_port))
    try:
        await migrate(conn)
        await seed_demo(conn)
    finally:
        await conn.close()
    url = pair.url(pair.primary_port, pair.standby_port)
    svc = await Services.open(make_settings(url, servers.redis, redis_prefix), url, servers.redis)
    try:
        await svc.pool_admin.generate()
        yield svc
    finally:
        try:
            await asyncio.wait_for(svc.close(), timeout=15)
        except TimeoutError:
            svc.pool.terminate()


@dataclass
class Outcomes:
    booked: list[tuple[float, int, int]] = field(default_factory=list)  # (when, patient, appointment)
    unavailable: list[tuple[float, int, str]] = field(default_factory=list)  # (when, patient, error)
    full: list[int] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def booked_since(self, t: float) -> int:
        return sum(1 for when, _, _ in self.booked if when >= t)


class Storm:
    """WORKERS concurrent clients, each booking one new patient after another until stopped. A
    client that gets a 503 backs off briefly and moves on to its next patient (the in-doubt one
    is settled by the service once the new primary answers)."""

    def __init__(self, services: Services, clerk: Actor, slot_ids: list[int], patients: list[tuple[int, int]]):
        self.services, self.clerk, self.slot_ids = services, clerk, slot_ids
        self.queue = list(reversed(patients))
        self.out = Outcomes()
        self.stop = asyncio.Event()

    async def worker(self, n: int) -> None:
        while not self.stop.is_set() and self.queue:
            pid, oid = self.queue.pop()
            slot = self.slot_ids[(n + len(self.queue)) % len(self.slot_ids)]
            try:
                (appt,) = await self.services.booking.book(self.clerk, pid, "desk", [BookItem(oid, slot)])
            except SlotUnavailable as exc:
                if exc.extra.get("reason") == "FULL":
                    self.out.full.append(pid)
                else:
                    self.out.unexpected.append(f"409 {exc!r} {exc.extra}")
            except AppError as exc:
                if exc.status == 503:
                    self.out.unavailable.append((time.monotonic(), pid, type(exc).__name__))
                    await asyncio.sleep(0.02)
                else:
                    self.out.unexpected.append(f"{exc.status} {exc!r}")
            except Exception as exc:
                self.out.unexpected.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
            else:
                self.out.booked.append((time.monotonic(), pid, appt.appointment_id))

    async def until(self, condition: str, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not predicate():
            assert time.monotonic() < deadline, f"storm: timed out waiting for {condition}"
            assert not self.out.unexpected, self.out.unexpected[:5]
            await asyncio.sleep(0.01)


async def test_failover_mid_storm_loses_no_committed_booking(failover_services: Services, pair: Pair) -> None:
    services = failover_services
    day = future_day(services, 2)
    slot_ids = await dedicated_slots(services, day, "FAILOVER-CT", SLOTS, CAPACITY)
    clerk = await actor_for(services, "clerk")
    patients = [(pid, oid) for pid, [oid] in await new_patients_with_orders(services.pool, PATIENTS, ["CT-HEAD"])]
    storm = Storm(services, clerk, slot_ids, patients)
    out = storm.out

    workers = [asyncio.create_task(storm.worker(n)) for n in range(WORKERS)]
    try:
        await storm.until(f"{BEFORE} bookings on the primary", lambda: len(out.booked) >= BEFORE)
        t_crash = time.monotonic()
        await _script("stop", pair.dir, "primary", "immediate")
        t_down = time.monotonic()
        await asyncio.sleep(DETECTION_S)
        await _script("promote", pair.dir)
        t_promoted = time.monotonic()
        await storm.until(f"{AFTER} bookings on the promoted standby", lambda: out.booked_since(t_promoted) >= AFTER)
    finally:
        storm.stop.set()
        await asyncio.gather(*workers)

    assert not out.unexpected, f"{len(out.unexpected)} unexpected outcomes: {out.unexpected[:10]}"
    assert out.unavailable, "the crash of the primary went unnoticed: no 503 at all"
    before = sum(1 for when, _, _ in out.booked if when < t_down)
    during = sum(1 for when, _, _ in out.booked if t_down <= when < t_promoted)
    after = out.booked_since(t_promoted)
    first_503, last_503 = out.unavailable[0][0], out.unavailable[-1][0]
    first_after = min(when for when, _, _ in out.booked if when >= t_promoted)

    # Zero committed loss: the promoted standby, asked directly, has every acknowledged booking.
    promoted = await connect(pair.url(pair.standby_port))
    try:
        assert await promoted.fetchval("SELECT NOT pg_is_in_recovery()")
        acknowledged = {appt: pid for _, pid, appt in out.booked}
        rows = await promoted.fetch(
            "SELECT id, patient_id FROM appointment WHERE id = ANY($1::bigint[]) AND status = 'booked'",
            list(acknowledged),
        )
        assert {r["id"]: r["patient_id"] for r in rows} == acknowledged, "acknowledged bookings lost in the failover"
        # Commits the crash cut off before they were acknowledged: a 503 for the client, but the
        # booking may have reached the standby. Either way its hold is settled below.
        reached = await promoted.fetchval(
            "SELECT count(*) FROM appointment WHERE patient_id = ANY($1::bigint[])",
            [pid for _, pid, _ in out.unavailable],
        )
        slots = await promoted.fetch(
            """SELECT s.id, s.booked, s.capacity,
                      (SELECT count(*) FROM appointment a WHERE a.slot_id = s.id AND a.status = 'booked') AS live
                 FROM slot s WHERE s.id = ANY($1::bigint[])""",
            slot_ids,
        )
    finally:
        await promoted.close()
    assert all(r["live"] == r["booked"] <= r["capacity"] for r in slots), [dict(r) for r in slots]

    # The same Services goes on booking against the new primary: the host list found it.
    extra = await new_patients_with_orders(services.pool, 5, ["CT-HEAD"])
    for pid, [oid] in extra:
        views = [v for v in await services.store.read_slots_by_id(day, slot_ids) if v is not None]
        roomiest = max(views, key=lambda v: v.open_left)  # a slot the storm (or its holds) left room in
        await services.booking.book(clerk, pid, "desk", [BookItem(oid, roomiest.slot_id)])

    # Attempts cut off after their Redis hold was taken leave it behind, in doubt: the place looks
    # taken (a "full" answer for others) until it is settled. The service settles them itself as
    # soon as PostgreSQL answers from another postmaster (app/booking/in_doubt.py): it confirms the
    # in-doubt commits that reached the standby and releases the rest, without waiting for the
    # holds to expire and the reaper to run (which this test never calls).
    in_doubt = services.booking.in_doubt
    while await services.store.live_hold_ids(day):
        assert time.monotonic() - t_promoted < SETTLED_BOUND_S, (
            f"{len(await services.store.live_hold_ids(day))} holds still in doubt {SETTLED_BOUND_S:.0f} s after "
            f"the promotion ({in_doubt.pending} watched)"
        )
        await asyncio.sleep(0.05)
    settled_ms = (time.monotonic() - t_promoted) * 1000

    burst_ms = (last_503 - first_503) * 1000
    print(
        f"\nfailover: {before} bookings before the primary went down, {during} while it was down, "
        f"{after} after the promotion (+{len(extra)} after the storm), {len(out.full)} x 409 full; "
        f"{len(out.unavailable)} x 503 in a burst of {burst_ms:.0f} ms (primary stopped in "
        f"{(t_down - t_crash) * 1000:.0f} ms, promoted {(t_promoted - t_down) * 1000:.0f} ms later, first booking "
        f"{(first_after - t_promoted) * 1000:.0f} ms after that, last 503 {(last_503 - t_promoted) * 1000:+.0f} ms "
        f"from the promotion); {len(acknowledged)} acknowledged bookings all on the promoted standby; "
        f"in-doubt holds settled {settled_ms:.0f} ms after the promotion: {in_doubt.released} released, "
        f"{in_doubt.confirmed} confirmed (in-doubt commits that had reached the standby: {reached})"
    )
    # A short burst: the 503s start with the crash and end soon after the promotion.
    assert first_503 >= t_crash
    assert last_503 - t_promoted < 2.0, f"503s went on {last_503 - t_promoted:.1f} s after the promotion"

    # Every in-doubt hold is settled: released (its commit never happened; a booking that could not
    # even reach a server released its own at once) or confirmed (an in-doubt commit that had
    # reached the standby).
    assert in_doubt.confirmed <= reached
    assert in_doubt.pending == 0
    await assert_redis_matches_postgres(services, day)


async def test_a_silent_host_in_the_list_is_passed_over(pair: Pair) -> None:
    """A first host that takes the TCP connection and never answers (a hung server) must not hold
    up the connection to the next one: each host gets its own timeout (app/db/pool.py)."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_port = int(server.sockets[0].getsockname()[1])
    try:
        url = pair.url(silent_port, pair.standby_port, pair.primary_port, database="postgres")
        # asyncpg alone spends its one timeout on the silent host and never reaches the others.
        with pytest.raises(TimeoutError):
            await asyncpg.connect(url, timeout=1.5)
        started = time.monotonic()
        pool = await create_pool(DatabaseSettings(url=None, pool_min=1, pool_max=2), url + "&connect_timeout=1")
        try:
            port = await pool.fetchval("SELECT inet_server_port()")
            writable = await pool.fetchval("SELECT NOT pg_is_in_recovery()")
        finally:
            await pool.close()
        took = time.monotonic() - started
        print(f"\nsilent first host: connected to the primary (3rd in the list) in {took * 1000:.0f} ms")
        assert (port, writable) == (pair.primary_port, True)  # the standby (2nd) is read-only: passed over
        assert took < 4.0
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
