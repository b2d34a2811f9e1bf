"""Redis Sentinel failover (the load-and-resilience issue, part 4) on real servers: a primary, a
replica and three Sentinels (quorum 2, down after 1 s) started here from the machine's
redis-server, with passwords, the platform on `REDIS_URL=redis+sentinel://…` (app/redis_url.py).

* The primary SIGKILLed in the middle of a booking storm through HTTP (clerks retry a 503): every
  answer is a booking, a 409 or a clear 503; the Sentinels promote the replica and bookings succeed
  through it again within a bound; PostgreSQL holds exactly the bookings answered 201, no slot over
  capacity. The replica's copy is made to differ from the primary's before the kill (a counter
  written on the replica alone, as a write it missed would) and the promoted replica still has
  that difference: one background sweep sees a server the index was not built on, rebuilds the
  horizon from PostgreSQL (`Reconciler.reconcile_new_server`) and Redis agrees with PostgreSQL
  again; the process's pub/sub hub resubscribes on the new primary.
* Every process role on the Sentinel URL: `python -m app serve` (web and its background loop)
  follows the failover by itself — `/ready` comes back, its own sweep repairs the index, it books
  — and the `reconcile` command runs through the Sentinels; the client's pool waits for a free
  connection rather than failing with "Too many connections".

Skipped only when redis-server is not installed. About 20 s per test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from app.background import sweep_once
from app.booking.reaper import reap_expired
from app.errors import CacheUnavailable
from app.services import Services, create_redis
from app.settings import PROJECT_ROOT
from realtime.hub import RESYNC, Hub
from tests.conftest import CloneDb, make_settings
from tests.helpers import (
    assert_clear_503,
    assert_redis_matches_postgres,
    availability_snapshot,
    book_every_place_left,
    booking_body,
    dedicated_slots,
    future_day,
    new_patients_with_orders,
    open_slots,
    postgres_outcome,
    redis_disagreements,
    token_for,
)
from tests.live_server import REDIS_SERVER, free_ports, running_worker, serve_app, sigkill, start_redis, wait_for_redis

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed (it runs the servers and Sentinels)"),
]

MASTER = "huiyue"
PASSWORD = "sentinel-test-pw"  # requirepass / masterauth of both servers, auth-pass of the Sentinels


@dataclass
class Cluster:
    primary: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinels: list[subprocess.Popen[bytes]]
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{MASTER}/0"

    def server(self, port: int) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=5)


def _sentinel_conf(folder: Path, port: int, primary_port: int, *, quorum: int = 2) -> Path:
    """Sentinel rewrites its file: one writable copy per Sentinel, in the test's tmp_path."""
    folder.mkdir()
    conf = folder / "sentinel.conf"
    conf.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize no",
                f"dir {folder}",
                f'logfile "{folder / "sentinel.log"}"',
                f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}",
                f"sentinel auth-pass {MASTER} {PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 4000",
                f"sentinel parallel-syncs {MASTER} 1",
                "",
            ]
        )
    )
    return conf


async def _until(what: str, check: Callable[[], Awaitable[bool]], wait_s: float) -> None:
    """Poll `check` until it is true, failing after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {wait_s:.0f}s")
        await asyncio.sleep(0.05)


async def _replica_in_sync(port: int, tls: dict[str, Any] | None = None) -> None:
    """Until the replica on `port` has its link to the primary up (asked over TLS with `tls`)."""
    replica = aioredis.Redis(port=port, password=PASSWORD, socket_timeout=2, **(tls or {}))
    try:

        async def in_sync() -> bool:
            return (await replica.info("replication")).get("master_link_status") == "up"

        await _until("the replica in sync", in_sync, 20)
    finally:
        await replica.aclose()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    assert REDIS_SERVER is not None
    primary_port, replica_port, *sentinel_ports = free_ports(5)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        primary = await start_redis(primary_port, password=PASSWORD)
        procs.append(primary)
        replica = await start_redis(replica_port, "--replicaof", "127.0.0.1", str(primary_port), password=PASSWORD)
        procs.append(replica)
        # The replica in sync before the Sentinels start: they learn of replicas from the primary's
        # INFO, which they ask for at once and then every 10 s.
        await _replica_in_sync(replica_port)
        sentinels = []
        for n, port in enumerate(sentinel_ports):
            conf = _sentinel_conf(tmp_path / f"sentinel{n + 1}", port, primary_port)
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once; readiness awaited below
                [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(proc)
            sentinels.append(proc)
            await wait_for_redis(port)
        c = Cluster(primary, replica, sentinels, primary_port, replica_port, sentinel_ports)

        # Ready for a clean failover: every Sentinel knowing the replica and the other two (hello
        # messages, every 2 s), so any of them can win the election.
        watchers = [aioredis.Redis(port=p, socket_timeout=2) for p in sentinel_ports]
        try:

            async def watching() -> bool:
                for w in watchers:
                    if len(await w.sentinel_sentinels(MASTER)) < 2:
                        return False
                    replicas = await w.sentinel_slaves(MASTER)
                    if not any(r["port"] == replica_port and not r["is_sdown"] for r in replicas):
                        return False
                return True

            await _until("the Sentinels watching the pair (see sentinel*/sentinel.log)", watching, 20)
        finally:
            for w in watchers:
                await w.aclose()
        yield c
    finally:
        for proc in procs:
            if proc.poll() is None:
                sigkill(proc)


class PromotionWatch:
    """In a thread of its own (the test's event loop lags behind a storm): the moment any Sentinel
    names a primary other than `old_port`."""

    def __init__(self, sentinel_ports: list[int], old_port: int) -> None:
        self.ports, self.old_port = sentinel_ports, old_port
        self.at: float | None = None
        self.port: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        clients = [redis.Redis(port=p, socket_timeout=0.5, socket_connect_timeout=0.5) for p in self.ports]
        try:
            while not self._stop.is_set():
                for c in clients:
                    try:
                        addr = c.sentinel_get_master_addr_by_name(MASTER)
                    except redis.RedisError:
                        continue
                    if addr and int(addr[1]) != self.old_port:
                        self.at, self.port = time.monotonic(), int(addr[1])
                        return
                time.sleep(0.01)
        finally:
            for c in clients:
                c.close()


async def _plant_on_replica(cluster: Cluster, services: Services, day: date) -> int:
    """Make the replica's copy differ from the primary's, as a write it missed would: one more
    place booked on one slot of `day` (a day the storm does not touch), written on the replica
    alone. Returns the slot id."""
    primary, replica = cluster.server(cluster.primary_port), cluster.server(cluster.replica_port)
    try:
        # Every write so far has reached the replica, so none of them overwrites the planted one.
        assert await primary.execute_command("WAIT", 1, 5000) == 1
        victim = min(await availability_snapshot(services, day))
        await replica.config_set("replica-read-only", "no")
        await replica.hincrby(services.keys.day(day).slot(victim), "b", 1)
    finally:
        await primary.aclose()
        await replica.aclose()
    return victim


# -- the primary killed mid-storm -------------------------------------------------------------------

STORM_PATIENTS = 160
STORM_SLOTS, STORM_CAPACITY = 8, 10  # 80 places for 160 patients: the slots fill, the rest get 409
CLERKS = 16
KILL_AFTER_BOOKED = 15
RETRY_503_S = 0.1  # a clerk's retry after a 503 (Retry-After says 5 s; a test has no such patience)
RECOVERY_BOUND_S = 20.0  # kill -> first booking through the promoted replica
STORM_BOUND_S = 45.0
ROOM = "SENTINEL-CT"

Answer = tuple[float, float, httpx.Response]  # (sent, answered, response), monotonic seconds


async def test_primary_killed_mid_storm_the_replica_takes_over_and_the_index_is_rebuilt(
    cluster: Cluster, seeded_db: CloneDb, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx: not a line per request. Set first, since set_level also sets the capturing handler's level.
    caplog.set_level(logging.WARNING, logger="httpx")
    caplog.set_level(logging.INFO)
    url = cluster.url
    svc = await Services.open(make_settings(seeded_db.url, url, "hysent", HY_RATE_LIMITS="0"), seeded_db.url, url)
    hub = Hub(svc.redis, svc.keys.events_prefix)
    try:
        await svc.pool_admin.generate()
        await svc.reconciler.reconcile_all()  # as start-up leaves it: built on the primary
        await sweep_once(svc)  # nothing left for the sweep after the failover but the failover
        day, other = future_day(svc, 2), future_day(svc, 3)
        slot_ids = await dedicated_slots(svc, day, ROOM, STORM_SLOTS, STORM_CAPACITY)
        horizon = svc.reconciler.horizon()
        today = svc.reconciler.today()
        await svc.queues.state(ROOM, today)  # a room queue loaded in Redis: rebuilt after the failover
        before = {d: await availability_snapshot(svc, d) for d in horizon if d != day}
        await hub.start()
        assert hub.ready.is_set()
        token = await token_for(svc, "clerk")
        spare = STORM_SLOTS * (STORM_CAPACITY + 1)  # to fill the slots to the last place afterwards
        patients = await new_patients_with_orders(svc.pool, STORM_PATIENTS + spare, ["CT-HEAD"])
        storm, later = patients[:STORM_PATIENTS], patients[STORM_PATIENTS:]
        victim = await _plant_on_replica(cluster, svc, other)
        old_run_id, _ = await svc.store.server_identity()

        answers: list[Answer] = []
        booked = 0
        queue = iter(enumerate(storm))
        watch = PromotionWatch(cluster.sentinel_ports, cluster.primary_port)
        async with (
            serve_app(svc) as base,
            httpx.AsyncClient(
                base_url=base,
                headers={"authorization": f"Bearer {token}"},
                timeout=60,
                limits=httpx.Limits(max_connections=2 * CLERKS, max_keepalive_connections=0),
            ) as client,
        ):
            t0 = time.monotonic()
            deadline = t0 + STORM_BOUND_S

            async def clerk() -> None:
                """Books patient after patient; a 503 is retried (it booked nothing)."""
                nonlocal booked
                for n, (pid, [oid]) in queue:
                    body = booking_body(pid, oid, slot_ids[n % STORM_SLOTS])
                    while True:
                        sent = time.monotonic()
                        r = await client.post("/api/v1/appointments", json=body)
                        answers.append((sent, time.monotonic(), r))
                        booked += r.status_code == 201
                        if r.status_code != 503 or sent > deadline:
                            break
                        await asyncio.sleep(RETRY_503_S)

            with hub.subscription("sentinel:probe") as sub:
                clerks = [asyncio.create_task(clerk()) for _ in range(CLERKS)]
                while booked < KILL_AFTER_BOOKED and not all(t.done() for t in clerks):  # noqa: ASYNC110
                    await asyncio.sleep(0.002)
                watch.start()
                tk = time.monotonic()
                sigkill(cluster.primary)  # mid-storm: bookings in every step of the path
                killed_at = booked
                try:
                    await asyncio.wait_for(asyncio.gather(*clerks), STORM_BOUND_S + 15)
                finally:
                    watch.stop()
                storm_s = time.monotonic() - t0

                # Every answer a booking, a 409 or a clear 503; every patient answered in the end.
                statuses = [r.status_code for _, _, r in answers]
                assert set(statuses) <= {201, 409, 503}, sorted(set(statuses))
                for _, _, r in answers:
                    if r.status_code == 503:
                        assert_clear_503(r)
                    elif r.status_code == 409:
                        assert r.json()["code"] == "slot_unavailable", r.text
                ok, refused, unavailable = statuses.count(201), statuses.count(409), statuses.count(503)
                assert ok + refused == STORM_PATIENTS, "some patients were still getting 503 at the storm's bound"
                assert unavailable > 0 and ok >= killed_at >= KILL_AFTER_BOOKED

                # The Sentinels promoted the replica, and bookings went through it within the bound.
                assert watch.at is not None and watch.port == cluster.replica_port, "no promotion seen"
                after_kill = [a for a in answers if a[0] > tk and a[2].status_code == 201]
                assert after_kill, "no booking succeeded after the kill"
                first_ok = min(done for _, done, _ in after_kill)
                last_503 = max(done for _, done, r in answers if r.status_code == 503)
                print(
                    f"\nprimary SIGKILL {tk - t0:.2f}s into the storm, after {killed_at} bookings; promotion seen "
                    f"{watch.at - tk:.2f}s after the kill; first booking through the new primary "
                    f"{first_ok - tk:.2f}s after the kill ({first_ok - watch.at:+.2f}s from the promotion); last 503 "
                    f"{last_503 - tk:.2f}s after the kill. {ok} x 201 ({ok - killed_at} after the kill), "
                    f"{refused} x 409, {unavailable} x 503 in {len(answers)} requests, {storm_s:.2f}s"
                )
                assert first_ok - tk < RECOVERY_BOUND_S
                assert (await svc.store.server_identity())[0] != old_run_id

                # Nothing oversold, nothing lost: PostgreSQL holds exactly the bookings answered 201.
                per_slot, live = await postgres_outcome(svc, slot_ids)
                answered = {
                    a["appointment_id"] for _, _, r in answers if r.status_code == 201 for a in r.json()["appointments"]
                }
                assert live == answered and sum(per_slot.values()) == ok

                # The hub lost its subscription with the old primary and resubscribed on the new one.
                async def hub_ready() -> bool:
                    return hub.ready.is_set()

                await _until("the hub back on the new primary", hub_ready, 10)
                seen = await asyncio.wait_for(sub.get(), 5)
                assert seen is not None and seen[0] == RESYNC
                seq = await svc.publisher.publish("sentinel:probe", {"event": "after-failover"})
                assert seq is not None
                got = await asyncio.wait_for(sub.get(), 5)
                while got is not None and got[0] == RESYNC:
                    got = await asyncio.wait_for(sub.get(), 5)
                assert got is not None and got[0] == seq

            # The promoted replica's copy is not the primary's: the planted counter is there (a
            # missed write would look the same), and maybe holds and counters of the storm's last
            # moments. Nothing is missing, so only a check of the server itself can tell.
            assert (await availability_snapshot(svc, other))[victim] != before[other][victim]
            index, stale = await redis_disagreements(svc, day)
            holds = await svc.store.live_hold_ids(day)
            unconfirmed = 0  # booked in PostgreSQL, still a hold (or nothing) in the patient's entry
            for b in index.booked:
                unconfirmed += "|b|" not in (await svc.store.patient_entries(day, b.patient_id)).get(b.slot_id, "")
            assert await svc.reconciler.missing_days() == []
            assert f"redis primary of {MASTER!r} moved from 127.0.0.1:{cluster.primary_port}" in caplog.text

            # One background sweep, nobody asking: a server the index was not built on -> the
            # horizon and the loaded room queue rebuilt from PostgreSQL.
            caplog.clear()
            t1 = time.monotonic()
            await sweep_once(svc)
            heal_s = time.monotonic() - t1
            # The rebuild keeps the holds of the storm's last moments (a hold in flight survives a
            # rebuild: reconcile.lua); past their expiry the reaper asks PostgreSQL about each.
            kept = await svc.store.live_hold_ids(day)
            reaped = await reap_expired(svc.pool, svc.store, svc.reconciler, int((time.time() + 3600) * 1000))
            assert reaped.confirmed + reaped.released + reaped.vanished >= len(kept)
            await assert_redis_matches_postgres(svc, day)
            assert {d: await availability_snapshot(svc, d) for d in horizon if d != day} == before
            assert "redis index was built on server" in caplog.text
            assert f"queue {ROOM} {today} rebuilt from PostgreSQL" in caplog.text
            after = await availability_snapshot(svc, day)
            assert {sid: after[sid]["booked"] for sid in slot_ids} == per_slot
            run_id, built_on = await svc.store.server_identity()
            assert built_on == run_id
            print(
                f"before the sweep the new primary disagreed with PostgreSQL on {len(stale)} storm slot(s) and "
                f"{unconfirmed} booking(s) not confirmed, {len(holds)} hold(s) left "
                f"({len(kept)} kept by the rebuild for the reaper), plus the planted counter; "
                f"one sweep rebuilt {len(horizon)} days in {heal_s:.2f}s"
            )

            # Bookings work to the last place: each slot's places left are taken, then it is FULL.
            await book_every_place_left(client, svc, day, slot_ids, per_slot, iter(later), STORM_CAPACITY)
    finally:
        await hub.close()
        await svc.close()


# -- every process role on the Sentinel URL -----------------------------------------------------------


async def test_every_process_role_follows_the_sentinels(
    cluster: Cluster, seeded_db: CloneDb, redis_prefix: str
) -> None:
    url = cluster.url

    # The client's pool waits for a free connection: 12 commands that hold theirs 0.2 s each
    # share 2 connections and all succeed (a plain pool would fail with "Too many connections").
    small = create_redis(url, 2, 5.0)
    try:
        t = time.monotonic()
        got = await asyncio.gather(*(small.blpop([f"{redis_prefix}:none:{n}"], timeout=0.2) for n in range(12)))
        assert got == [None] * 12 and time.monotonic() - t >= 1.0
    finally:
        await small.aclose()

    # `serve` (web, and its background loop) prepares the database and builds the index through
    # the Sentinels, then serves.
    async with running_worker(seeded_db.url, url, redis_prefix, HY_RATE_LIMITS="0") as (base, _):
        svc = await Services.open(make_settings(seeded_db.url, url, redis_prefix), seeded_db.url, url)
        try:
            day, other = future_day(svc, 2), future_day(svc, 3)
            before = await availability_snapshot(svc, other)
            run_id, built_on = await svc.store.server_identity()
            assert built_on == run_id  # the start-up rebuild recorded the primary
            victim = await _plant_on_replica(cluster, svc, other)
            token = await token_for(svc, "clerk")
            async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token}"}) as client:
                assert (await client.get("/ready")).status_code == 200
                tk = time.monotonic()
                sigkill(cluster.primary)

                async def not_ready() -> bool:
                    return (await client.get("/ready")).status_code == 503

                async def ready() -> bool:
                    return (await client.get("/ready")).status_code == 200

                await _until("/ready answering 503 with the primary gone", not_ready, 10)
                await _until("/ready back through the promoted replica", ready, RECOVERY_BOUND_S)
                back_s = time.monotonic() - tk

                # The process's own background sweep (every 5 s) notices the new server and rebuilds
                # the index: the planted counter goes, and the record names the new primary.
                async def repaired() -> bool:
                    try:
                        now_on, built_for = await svc.store.server_identity()
                        return built_for == now_on and (await availability_snapshot(svc, other)) == before
                    except CacheUnavailable:
                        return False

                await _until("the serve process's sweep rebuilding the index", repaired, 20)
                repaired_s = time.monotonic() - tk
                run_id2, _ = await svc.store.server_identity()
                assert run_id2 != run_id  # the promoted replica, whose index the process rebuilt
                assert (await availability_snapshot(svc, other))[victim] == before[victim]

                (pid, [oid]), *_ = await new_patients_with_orders(svc.pool, 1, ["CT-HEAD"])
                slot = (await open_slots(svc, "CT-HEAD", day))[0]
                r = await client.post("/api/v1/appointments", json=booking_body(pid, oid, slot["id"]))
                assert r.status_code == 201, r.text
                await assert_redis_matches_postgres(svc, day)
        finally:
            await svc.close()

    # A command through the Sentinels, after the failover.
    env = {**os.environ, "DATABASE_URL": seeded_db.url, "REDIS_URL": url, "HY_REDIS_PREFIX": redis_prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "reconcile",
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert f"{day}: " in out.decode()
    print(
        f"\nserve process: /ready back {back_s:.2f}s after the primary's SIGKILL; its own sweep rebuilt the "
        f"index {repaired_s:.2f}s after it; `python -m app reconcile` ran through the Sentinels"
    )


# -- the same over TLS ------------------------------------------------------------------------------


def _certificates(folder: Path) -> dict[str, Path]:
    """The demo CA and a certificate it signed for localhost and 127.0.0.1, the address the
    Sentinels announce (scripts/make-demo-certs, as an operator would make them for a trial)."""
    subprocess.run([str(PROJECT_ROOT / "scripts" / "make-demo-certs"), str(folder)], check=True, capture_output=True)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


async def test_the_platform_books_through_sentinels_over_tls_and_follows_a_failover(
    tmp_path: Path, seeded_db: CloneDb, redis_prefix: str
) -> None:
    """rediss+sentinel://: a primary and a replica that speak TLS only (no plain port), replicating
    over TLS, and a Sentinel that speaks TLS only. `serve` on that URL books; the primary killed,
    the Sentinel promotes the replica and `serve` books through it, still over TLS. The same URL
    without TLS reaches nothing."""
    assert REDIS_SERVER is not None
    files = _certificates(tmp_path / "tls")
    tls_server = ["--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"])]
    tls_server += ["--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no", "--tls-replication", "yes"]
    client_tls = {"ssl": True, "ssl_ca_certs": str(files["ca"])}
    primary_port, replica_port, sentinel_port = free_ports(3)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        primary = await start_redis(
            primary_port, "--port", "0", "--tls-port", str(primary_port), *tls_server, password=PASSWORD, tls=client_tls
        )
        procs.append(primary)
        replica_args = ["--port", "0", "--tls-port", str(replica_port), *tls_server]
        replica_args += ["--replicaof", "127.0.0.1", str(primary_port)]
        procs.append(await start_redis(replica_port, *replica_args, password=PASSWORD, tls=client_tls))
        await _replica_in_sync(replica_port, client_tls)

        folder = tmp_path / "sentinel"
        conf = _sentinel_conf(folder, 0, primary_port, quorum=1)
        conf.write_text(
            conf.read_text()
            + "\n".join(
                [
                    f"tls-port {sentinel_port}",
                    f"tls-cert-file {files['cert']}",
                    f"tls-key-file {files['key']}",
                    f"tls-ca-cert-file {files['ca']}",
                    "tls-auth-clients no",
                    "tls-replication yes",  # how a Sentinel reaches the servers: over TLS
                    "",
                ]
            )
        )
        sentinel_proc = subprocess.Popen(  # noqa: ASYNC220 - started once; readiness awaited below
            [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(sentinel_proc)
        await wait_for_redis(sentinel_port, tls=client_tls)
        watcher = aioredis.Redis(port=sentinel_port, socket_timeout=2, **client_tls)
        try:

            async def knows_the_replica() -> bool:
                return any(
                    r["port"] == replica_port and not r["is_sdown"] for r in await watcher.sentinel_slaves(MASTER)
                )

            await _until("the Sentinel watching the pair over TLS", knows_the_replica, 20)
        finally:
            await watcher.aclose()

        tls_url = f"rediss+sentinel://:{PASSWORD}@127.0.0.1:{sentinel_port}/{MASTER}/0?ssl_ca_certs={files['ca']}"
        plain = create_redis(tls_url.replace("rediss+sentinel", "redis+sentinel").partition("?")[0], 2, 1.0)
        try:
            with pytest.raises(redis.RedisError):  # no plain port anywhere: the platform needs TLS here
                await plain.ping()
        finally:
            await plain.aclose()

        async with running_worker(seeded_db.url, tls_url, redis_prefix, HY_RATE_LIMITS="0") as (base, _):
            svc = await Services.open(make_settings(seeded_db.url, tls_url, redis_prefix), seeded_db.url, tls_url)
            try:
                day = future_day(svc, 2)
                slot_ids = await dedicated_slots(svc, day, ROOM, 2, 5)
                (p1, [o1]), (p2, [o2]) = await new_patients_with_orders(svc.pool, 2, ["CT-HEAD"])
                token = await token_for(svc, "clerk")
                async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token}"}) as client:
                    first = await client.post("/api/v1/appointments", json=booking_body(p1, o1, slot_ids[0]))
                    assert first.status_code == 201, first.text
                    sigkill(primary)

                    async def books() -> bool:
                        r = await client.post("/api/v1/appointments", json=booking_body(p2, o2, slot_ids[1]))
                        assert r.status_code in (201, 503), r.text
                        return r.status_code == 201

                    await _until("a booking through the promoted replica, over TLS", books, RECOVERY_BOUND_S)
                assert (await svc.redis.connection_pool.get_master_address())[1] == replica_port
                booked, _ = await postgres_outcome(svc, slot_ids)
                assert booked == {slot_ids[0]: 1, slot_ids[1]: 1}

                async def agree() -> bool:  # a write the replica missed is `serve`'s sweep to rebuild
                    return not (await redis_disagreements(svc, day))[1]

                await _until("Redis agreeing with PostgreSQL on the promoted replica", agree, 20)
                await assert_redis_matches_postgres(svc, day)
            finally:
                await svc.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                sigkill(proc)
