"""Backup and restore on the real servers (docs/operations.md): `scripts/backup` dumps a database
with bookings, a cancellation and a check-in (pg_dump -Fc); `scripts/restore` loads it into a new,
empty database (pg_restore), clears the Redis keys of its prefix and runs `python -m app reconcile`.
The restored database must hold the same bookings, order history and audit rows, and the Redis
index rebuilt from it must match it — and the original's index."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.booking.service import BookItem
from app.db import audit_repo
from app.services import Services
from app.settings import PROJECT_ROOT
from tests.conftest import CloneDb, Servers, make_settings, with_database
from tests.helpers import (
    actor_for,
    assert_redis_matches_postgres,
    availability_snapshot,
    future_day,
    new_patients_with_orders,
    open_slots,
)

SCRIPTS = PROJECT_ROOT / "scripts"
ROOM, EXAM = "CT1", "CT-HEAD"


async def _run(script: str, *args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPTS / script),
        *args,
        env={**os.environ, "HY_PYTHON": sys.executable, **env},
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"scripts/{script} failed ({proc.returncode}):\n{text}"
    return text


async def _book(services: Services, day: date, count: int) -> list[dict[str, Any]]:
    """`count` new patients, each booked into a slot of ROOM on `day` by the desk."""
    clerk = await actor_for(services, "clerk")
    slots = [s for s in await open_slots(services, EXAM, day, limit=400) if s["resource_id"] == ROOM]
    out = []
    for pid, (order,) in await new_patients_with_orders(services.pool, count, [EXAM]):
        slot = slots.pop(0)
        (appt,) = await services.booking.book(clerk, pid, "desk", [BookItem(order, int(slot["id"]))])
        out.append({"patient_id": pid, "order_id": order, "appointment_id": appt.appointment_id, "slot": slot})
    return out


async def _records(pool: asyncpg.Pool, day: date) -> dict[str, Any]:
    """What a restore must bring back, as plain data."""

    async def rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await pool.fetch(sql, *args)]

    return {
        "appointments": await rows(
            "SELECT id, order_id, patient_id, slot_id, status, pool, hold_id FROM appointment ORDER BY id"
        ),
        "orders": await rows("SELECT id, status, accession_no, study_uid, paid_at FROM exam_order ORDER BY id"),
        "order_events": await rows(
            "SELECT id, order_id, event, from_status, to_status, actor_role, channel, reason, at"
            " FROM order_event ORDER BY id"
        ),
        "slots": await rows("SELECT id, booked, capacity, status, quotas FROM slot WHERE day = $1 ORDER BY id", day),
        "queue": await rows(
            "SELECT appointment_id, resource_id, ticket, priority_class, state, checked_in_at FROM queue_entry"
            " ORDER BY appointment_id"
        ),
        "audit": await rows(
            "SELECT id, at, actor_id, actor_role, action, object_type, object_id, patient_id, ip, terminal, detail"
            " FROM audit_log ORDER BY id"
        ),
        "outbox": await pool.fetchval("SELECT count(*) FROM outbox"),
        "patients": await rows("SELECT id, mrn, name, id_number_enc, phone_enc FROM patient ORDER BY id"),
        "migrations": await rows("SELECT version FROM schema_migration ORDER BY version"),
    }


def _archive_facts(archive: Path) -> tuple[int, int, bool]:
    """(size, mode, whether the .sha256 beside it exists)."""
    st = archive.stat()
    return st.st_size, st.st_mode, Path(f"{archive}.sha256").is_file()


async def _drop_keys(client: aioredis.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


@pytest.fixture
async def restored_db(servers: Servers, admin_conn: asyncpg.Connection) -> AsyncIterator[CloneDb]:
    """A new, empty database (not from the migrated templates), dropped after the test."""
    name = f"hy_restored_{uuid.uuid4().hex[:12]}"
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    yield CloneDb(with_database(servers.database, name), name)
    await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_backup_restored_into_an_empty_database_has_the_same_bookings_and_rebuilds_redis(
    services: Services,
    seeded_db: CloneDb,
    restored_db: CloneDb,
    servers: Servers,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    day = future_day(services, 2)
    clerk = await actor_for(services, "clerk")
    booked = await _book(services, day, 4)
    cancelled, checked_in = booked[1], booked[2]
    await services.booking.cancel(clerk, cancelled["appointment_id"], "desk", "患者要求取消")
    await services.orders.apply(clerk, checked_in["order_id"], "pay", "", "desk")
    clock = checked_in["slot"]["starts_at"].timestamp() - 600
    services.queues.clock = lambda: clock
    await services.queues.check_in(clerk, checked_in["appointment_id"], "desk")
    await audit_repo.record(
        services.pool, clerk, "print_slip", "appointment", str(booked[0]["appointment_id"]), booked[0]["patient_id"]
    )
    before = await _records(services.pool, day)
    assert [a[4] for a in before["appointments"][-4:]] == ["booked", "cancelled", "booked", "booked"]
    assert before["queue"] and before["audit"] and before["order_events"]
    await assert_redis_matches_postgres(services, day)

    # Backup: pg_dump -Fc through the script, with its checksum.
    archive = tmp_path / "huiyue.dump"
    printed = await _run("backup", str(archive), env={"DATABASE_URL": seeded_db.url})
    size, mode, checksum = _archive_facts(archive)
    assert size > 0 and checksum, printed
    assert mode & 0o077 == 0  # personal data: readable by its owner only

    # Restore into the empty database, with a fresh Redis prefix holding a stale key from "before"
    # (a room queue marked loaded but empty): the script clears the prefix, then reconciles.
    prefix = f"hyr{uuid.uuid4().hex[:10]}"
    stale = f"{prefix}:{{h1:{day.isoformat()}}}:q:{ROOM}:ok"
    await redis_client.set(stale, "1")
    try:
        printed = await _run(
            "restore",
            str(archive),
            env={"DATABASE_URL": restored_db.url, "REDIS_URL": servers.redis, "HY_REDIS_PREFIX": prefix},
        )
        assert "Redis index rebuilt" in printed, printed
        assert await redis_client.exists(stale) == 0

        settings = make_settings(restored_db.url, servers.redis, prefix)
        restored = await Services.open(settings, restored_db.url, servers.redis)
        try:
            assert await _records(restored.pool, day) == before
            # The index the script's reconcile built matches the restored PostgreSQL, and shows
            # every channel exactly as the original's index does.
            await assert_redis_matches_postgres(restored, day)
            assert await availability_snapshot(restored, day) == await availability_snapshot(services, day)
            # The room queue comes back from queue_entry on first use.
            restored.queues.clock = lambda: clock
            original_view = await services.queues.view(ROOM, day)
            restored_view = await restored.queues.view(ROOM, day)
            original_view.pop("seq"), restored_view.pop("seq")
            assert restored_view == original_view
            assert [e["appointment_id"] for e in restored_view["waiting"]] == [checked_in["appointment_id"]]
            # Sequences came back too: the restored database goes on booking with new ids.
            (again,) = await _book(restored, day, 1)
            assert again["appointment_id"] > max(a[0] for a in before["appointments"])
            await assert_redis_matches_postgres(restored, day)
        finally:
            await restored.close()
    finally:
        await _drop_keys(redis_client, prefix)


async def test_restore_refuses_a_database_that_is_not_empty(
    seeded_db: CloneDb, servers: Servers, tmp_path: Path
) -> None:
    archive = tmp_path / "huiyue.dump"
    await _run("backup", str(archive), env={"DATABASE_URL": seeded_db.url})
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPTS / "restore"),
        str(archive),
        env={**os.environ, "HY_PYTHON": sys.executable, "DATABASE_URL": seeded_db.url, "REDIS_URL": servers.redis},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode != 0
    assert "restore only into an empty database" in out.decode()
