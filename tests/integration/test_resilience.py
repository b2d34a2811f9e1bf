"""Resilience under load (the load-and-resilience issue, parts 4 and 5), in CI's short form.

* Redis killed (SIGKILL) in the middle of a booking storm through HTTP: every answer is a booking,
  a clear 503 or a 409; PostgreSQL holds exactly the bookings answered 201, no slot over capacity.
  Redis restarted EMPTY on the same port: one background sweep rebuilds every day of the horizon
  by itself (`Reconciler.reconcile_missing`), to the slot, and bookings work again.
* A real worker process (`python -m app serve`) killed with SIGKILL while bookings are in flight:
  the holds it left expire and one reaper pass after their expiry (plus the reaper's grace) clears
  every one of them — released, or confirmed when PostgreSQL had committed — and PostgreSQL and
  Redis agree.

tests/integration/test_faults.py covers the single-booking cases (Redis unreachable from the start,
crashes between the steps of one booking, an emptied Redis rebuilt by an explicit reconcile).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
import redis

from app.background import sweep_once
from app.booking.reaper import reap_expired
from app.services import Services
from tests.conftest import CloneDb, Servers, make_settings
from tests.helpers import (
    assert_clear_503,
    assert_redis_matches_postgres,
    availability_snapshot,
    book_every_place_left,
    booking_body,
    dedicated_slots,
    future_day,
    new_patients_with_orders,
    postgres_outcome,
    token_for,
)
from tests.live_server import REDIS_SERVER, free_port, running_worker, serve_app, sigkill, start_redis

# -- Redis killed mid-storm, back empty -------------------------------------------------------------

STORM_ATTEMPTS = 400
STORM_SLOTS, STORM_CAPACITY = 10, 5  # 50 places
KILL_AFTER_BOOKED = 10


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")
async def test_redis_killed_mid_storm_then_back_empty_heals_itself(seeded_db: CloneDb) -> None:
    port = free_port()
    redis_proc = await start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    svc = await Services.open(make_settings(seeded_db.url, url, "hykill", HY_RATE_LIMITS="0"), seeded_db.url, url)
    try:
        await svc.pool_admin.generate()
        await svc.reconciler.reconcile_all()  # as start-up and `python -m app reconcile` leave it
        await sweep_once(svc)  # quota releases due now happen before the snapshot, not in the sweep below
        day = future_day(svc, 2)
        slot_ids = await dedicated_slots(svc, day, "KILL-REDIS-CT", STORM_SLOTS, STORM_CAPACITY)
        horizon = svc.reconciler.horizon()
        assert await svc.reconciler.missing_days() == []
        before = {d: await availability_snapshot(svc, d) for d in horizon if d != day}
        token = await token_for(svc, "clerk")
        patients = await new_patients_with_orders(svc.pool, STORM_ATTEMPTS + 60, ["CT-HEAD"])
        storm, later = patients[:STORM_ATTEMPTS], patients[STORM_ATTEMPTS:]
        headers = {"authorization": f"Bearer {token}"}
        booked_ok = 0

        async with (
            serve_app(svc) as base,
            httpx.AsyncClient(
                base_url=base,
                headers=headers,
                timeout=60,
                # A fresh connection per request: no race with the server closing an idle keep-alive one.
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
            ) as client,
        ):

            async def attempt(n: int, pid: int, oid: int) -> httpx.Response:
                nonlocal booked_ok
                ts = time.monotonic()
                r = await client.post("/api/v1/appointments", json=booking_body(pid, oid, slot_ids[n % STORM_SLOTS]))
                r.extensions["took"] = time.monotonic() - ts
                booked_ok += r.status_code == 201
                return r

            t0 = time.monotonic()
            tasks = [asyncio.create_task(attempt(n, pid, oid)) for n, (pid, [oid]) in enumerate(storm)]
            while booked_ok < KILL_AFTER_BOOKED and not all(t.done() for t in tasks):  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            sigkill(redis_proc)  # mid-storm: bookings in every step of the path
            killed_at = booked_ok
            tk = time.monotonic()
            answers = await asyncio.gather(*tasks)
            drained_s = time.monotonic() - tk
            storm_s = time.monotonic() - t0
            took = sorted(r.extensions["took"] for r in answers if r.status_code == 503)

            statuses = [r.status_code for r in answers]
            assert set(statuses) <= {201, 409, 503}, sorted(set(statuses))
            for r in answers:
                if r.status_code == 503:
                    assert_clear_503(r)
                elif r.status_code == 409:
                    assert r.json()["code"] == "slot_unavailable", r.text
            ok, refused, unavailable = statuses.count(201), statuses.count(409), statuses.count(503)
            print(
                f"\nredis SIGKILL {tk - t0:.2f}s in, after {killed_at} bookings: {ok} x 201, {refused} x 409,"
                f" {unavailable} x 503 of {STORM_ATTEMPTS} in {storm_s:.2f}s (the rest answered {drained_s:.2f}s"
                f" after the kill; 503 latency median {took[len(took) // 2]:.2f}s, max {took[-1]:.2f}s)"
            )
            assert unavailable > 0 and ok >= killed_at

            # Nothing oversold, nothing lost: PostgreSQL holds exactly the bookings answered 201.
            per_slot, live = await postgres_outcome(svc, slot_ids)
            answered = {a["appointment_id"] for r in answers if r.status_code == 201 for a in r.json()["appointments"]}
            assert live == answered and sum(per_slot.values()) == ok

            # Still down: a clear 503, nothing written.
            pid, [oid] = later[0]
            ts = time.monotonic()
            down = await client.post("/api/v1/appointments", json=booking_body(pid, oid, slot_ids[0]))
            print(f"one booking while Redis is down: {down.status_code} in {(time.monotonic() - ts) * 1000:.0f} ms")
            assert down.status_code == 503
            assert_clear_503(down)
            assert await svc.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", oid) == "ordered"

            # Back, but empty (no persistence): every day of the horizon is missing, and bookings
            # are refused (the slots are not in the index), never taken past PostgreSQL's count.
            redis_proc = await start_redis(port)
            assert await svc.reconciler.missing_days() == horizon
            empty = await client.post("/api/v1/appointments", json=booking_body(pid, oid, slot_ids[0]))
            assert empty.status_code in (409, 503), empty.text
            assert await svc.pool.fetchval("SELECT status FROM exam_order WHERE id = $1", oid) == "ordered"

            # One background sweep, nobody asking: the whole horizon is rebuilt, to the slot.
            t1 = time.monotonic()
            await sweep_once(svc)
            heal_s = time.monotonic() - t1
            assert await svc.reconciler.missing_days() == []
            await assert_redis_matches_postgres(svc, day)
            assert {d: await availability_snapshot(svc, d) for d in horizon if d != day} == before
            after = await availability_snapshot(svc, day)
            assert {sid: after[sid]["booked"] for sid in slot_ids} == per_slot
            print(f"sweep after the empty restart rebuilt {len(horizon)} days in {heal_s:.2f}s")

            # Bookings work again: each slot's places left are taken, then it answers FULL.
            await book_every_place_left(client, svc, day, slot_ids, per_slot, iter(later[1:]), STORM_CAPACITY)
    finally:
        await svc.close()
        if redis_proc.poll() is None:
            sigkill(redis_proc)


# -- a worker killed mid-booking --------------------------------------------------------------------

WORKER_ATTEMPTS = 300
WORKER_SLOTS, WORKER_CAPACITY = 20, 10  # 200 places: the kill lands while bookings still succeed
HOLDS_AT_KILL, BOOKED_AT_KILL = 10, 20


def _kill_when_holds_are_live(
    proc: subprocess.Popen[bytes], redis_url: str, holds_key: str, slot_keys: list[str], seen: dict[str, int]
) -> None:
    """In a thread of its own (the test's event loop lags behind a storm of its own requests): SIGKILL
    the worker the moment Redis shows it holding HOLDS_AT_KILL places uncommitted and BOOKED_AT_KILL
    booked. Gives up when the worker exits or after 30 s."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with client.pipeline(transaction=False) as pipe:
                pipe.zcard(holds_key)
                for key in slot_keys:
                    pipe.hget(key, "b")
                holds, *taken = pipe.execute()
            booked = sum(int(b or 0) for b in taken) - holds  # every hold here takes one place
            if holds >= HOLDS_AT_KILL and booked >= BOOKED_AT_KILL:
                os.kill(proc.pid, signal.SIGKILL)
                seen.update(holds=holds, booked=booked)
                return
            time.sleep(0.001)
    finally:
        client.close()


async def test_worker_sigkilled_mid_bookings_leaves_holds_the_reaper_clears(
    services: Services, seeded_db: CloneDb, servers: Servers, redis_prefix: str
) -> None:
    day = future_day(services, 2)
    slot_ids = await dedicated_slots(services, day, "KILL-WORKER-CT", WORKER_SLOTS, WORKER_CAPACITY)
    patients = await new_patients_with_orders(services.pool, WORKER_ATTEMPTS, ["CT-HEAD"])
    token = await token_for(services, "clerk")
    k = services.keys.day(day)
    seen: dict[str, int] = {}

    # A small pool makes commits queue behind one another, so many holds are in flight at the kill.
    async with (
        running_worker(seeded_db.url, servers.redis, redis_prefix, HY_RATE_LIMITS="0", HY_DB_POOL_MAX="2") as (
            base,
            proc,
        ),
        httpx.AsyncClient(
            base_url=base,
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=WORKER_ATTEMPTS),
        ) as client,
    ):
        killer = threading.Thread(
            target=_kill_when_holds_are_live,
            args=(proc, servers.redis, k.holds, [k.slot(s) for s in slot_ids], seen),
            daemon=True,
        )
        killer.start()
        outcomes = await asyncio.gather(
            *(
                client.post("/api/v1/appointments", json=booking_body(pid, oid, slot_ids[n % WORKER_SLOTS]))
                for n, (pid, [oid]) in enumerate(patients)
            ),
            return_exceptions=True,
        )
        await asyncio.to_thread(killer.join, 35)
        assert seen and proc.wait(5) == -signal.SIGKILL, "the storm ended before the kill"

    responses = [o for o in outcomes if isinstance(o, httpx.Response)]
    cut = [o for o in outcomes if not isinstance(o, httpx.Response)]
    assert cut and all(isinstance(e, httpx.TransportError) for e in cut), {type(e).__name__ for e in cut}
    assert {r.status_code for r in responses} <= {201, 409}, {r.status_code for r in responses}
    ok = [a["appointment_id"] for r in responses if r.status_code == 201 for a in r.json()["appointments"]]

    left = await services.redis.zrange(k.holds, 0, -1, withscores=True)
    assert len(left) >= HOLDS_AT_KILL
    last_expiry_ms = int(max(score for _, score in left))
    assert last_expiry_ms <= (time.time() + services.settings.booking.hold_ttl_s) * 1000
    grace_ms = 5_000

    # Before they expire, the reaper leaves them alone (a live worker might still commit them).
    early = await reap_expired(
        services.pool, services.store, services.reconciler, int(time.time() * 1000), grace_ms=grace_ms
    )
    assert early.released == early.confirmed == early.vanished == 0
    # Once every hold has expired (plus the reaper's grace), sweeps clear them all: the background
    # runs one every 5 s, each taking up to 100 holds of a day.
    passes = []
    while True:
        report = await reap_expired(
            services.pool, services.store, services.reconciler, last_expiry_ms + grace_ms + 1, grace_ms=grace_ms
        )
        if not (report.released or report.confirmed or report.vanished):
            break
        passes.append(report)
    assert len(passes) <= -(-len(left) // 100)
    assert sum(p.released + p.confirmed + p.vanished for p in passes) == len(left)
    for d in services.reconciler.horizon():
        assert await services.store.live_hold_ids(d) == [], d

    # PostgreSQL and Redis agree; every booking answered 201 is there, none over capacity; every
    # order is booked exactly when it has a live appointment.
    await assert_redis_matches_postgres(services, day)
    _, live = await postgres_outcome(services, slot_ids)
    assert set(ok) <= live
    assert await services.pool.fetchval(
        "SELECT count(*) FROM exam_order WHERE id = ANY($1::bigint[]) AND status <> 'ordered'",
        [oid for _, [oid] in patients],
    ) == len(live)
    released = sum(p.released for p in passes)
    confirmed = sum(p.confirmed for p in passes)
    vanished = sum(p.vanished for p in passes)
    print(
        f"\nworker SIGKILL at {seen['holds']} holds / {seen['booked']} booked: {len(ok)} x 201, "
        f"{sum(r.status_code == 409 for r in responses)} x 409, {len(cut)} cut off; {len(left)} holds left -> "
        f"{len(passes)} reaper pass(es): released {released}, confirmed {confirmed} (committed, never answered), "
        f"vanished {vanished} (dropped by the day's rebuild after a confirm); {len(live)} booked in PostgreSQL"
    )
