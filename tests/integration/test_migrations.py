"""The migrations apply in order to an empty database, once."""

from __future__ import annotations

import asyncpg

from app.db.migrate import discover, migrate
from app.db.pool import connect
from tests.conftest import CloneDb, Servers, with_database


async def test_all_migrations_apply_to_an_empty_database_and_rerun_is_a_no_op(
    servers: Servers, admin_conn: asyncpg.Connection
) -> None:
    name = "hy_t_migrations_fresh"
    await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    conn = await connect(with_database(servers.database, name))
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in discover()]
        assert applied[0] == 1
        assert await migrate(conn) == []
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        for table in (
            "hospital",
            "campus",
            "department",
            "resource",
            "exam_type",
            "exam_capability",
            "slot_template",
            "slot",
            "slot_lock",
            "patient",
            "exam_order",
            "appointment",
            "order_event",
            "outbox",
            "staff_user",
            "role",
            "staff_role",
            "staff_session",
            "audit_log",
            "schema_migration",
        ):
            assert table in tables, table
    finally:
        await conn.close()
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_slot_table_refuses_booked_over_capacity(empty_db: CloneDb) -> None:
    conn = await connect(empty_db.url)
    try:
        await conn.execute("INSERT INTO hospital VALUES ('hx', 'X', 'X')")
        await conn.execute("INSERT INTO campus VALUES ('c', 'hx', 'C')")
        await conn.execute(
            "INSERT INTO department (id, hospital_id, campus_id, name, category)"
            " VALUES ('d', 'hx', 'c', 'D', 'radiology')"
        )
        await conn.execute(
            "INSERT INTO resource (id, hospital_id, department_id, campus_id, kind, modality, name) "
            "VALUES ('r', 'hx', 'd', 'c', 'device', 'CT', 'R')"
        )
        slot_id = await conn.fetchval(
            "INSERT INTO slot (hospital_id, resource_id, day, starts_at, ends_at, capacity) "
            "VALUES ('hx', 'r', '2030-01-01', '2030-01-01 08:00+08', '2030-01-01 08:30+08', 1) RETURNING id"
        )
        await conn.execute("UPDATE slot SET booked = 1 WHERE id = $1", slot_id)
        try:
            await conn.execute("UPDATE slot SET booked = 2 WHERE id = $1", slot_id)
        except asyncpg.CheckViolationError:
            pass
        else:
            raise AssertionError("PostgreSQL accepted booked > capacity")
    finally:
        await conn.close()
