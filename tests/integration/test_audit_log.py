"""The audit log (sql/0014): append-only by the database itself, kept at least six months, read
only by the auditor, whose searches and exports are themselves recorded."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from app.api.audit import csv_cell
from app.db import audit_repo
from app.main import create_app
from app.services import Services
from tests.helpers import actor_for, token_for

_INSERT = (
    "INSERT INTO audit_log (actor_role, action, object_type, object_id, patient_id)"
    " VALUES ('doctor', $1, 'patient', '1', $2) RETURNING id"
)


async def _expect_refused(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute(sql, *args)


async def test_audit_rows_cannot_be_changed_or_deleted_even_by_a_superuser(db_conn: asyncpg.Connection) -> None:
    """The tests connect as the superuser `postgres`: privileges do not bind it, the triggers do."""
    assert await db_conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row_id = await db_conn.fetchval(_INSERT, "read", 7)
    await _expect_refused(db_conn, "UPDATE audit_log SET action = 'nothing' WHERE id = $1", row_id)
    await _expect_refused(db_conn, "UPDATE audit_log SET at = at - interval '1 year'")
    await _expect_refused(db_conn, "DELETE FROM audit_log WHERE id = $1", row_id)
    await _expect_refused(db_conn, "TRUNCATE audit_log")
    # The purge's flag does not open recent rows, whoever sets it.
    async with db_conn.transaction():
        await db_conn.execute("SET LOCAL huiyue.audit_purge = 'on'")
        await _expect_refused(db_conn, "DELETE FROM audit_log WHERE id = $1", row_id)
    # An insert cannot backdate its row: the database stamps the time.
    old_id = await db_conn.fetchval(
        "INSERT INTO audit_log (at, actor_role, action, object_type, object_id)"
        " VALUES (now() - interval '2 years', 'doctor', 'read', 'patient', '1') RETURNING id"
    )
    assert await db_conn.fetchval("SELECT at > now() - interval '1 minute' FROM audit_log WHERE id = $1", old_id)
    assert await db_conn.fetchval("SELECT count(*) FROM audit_log") == 2
    assert await db_conn.fetchval("SELECT action FROM audit_log WHERE id = $1", row_id) == "read"


async def test_the_application_role_can_neither_change_nor_switch_off_the_log(db_conn: asyncpg.Connection) -> None:
    """A non-superuser role that does not own the table, as production runs the app (docs/audit-log.md),
    even when granted every privilege on the table by mistake."""
    role = f"hy_t_app_{uuid.uuid4().hex[:8]}"
    await db_conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        await db_conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        await db_conn.execute(f'GRANT ALL ON audit_log TO "{role}"')
        await db_conn.execute(f'GRANT EXECUTE ON FUNCTION audit_purge(integer) TO "{role}"')
        row_id = await db_conn.fetchval(_INSERT, "read", 7)
        await db_conn.execute(f'SET ROLE "{role}"')
        try:
            assert await db_conn.fetchval(_INSERT, "update", 8) > row_id  # it can write rows...
            await _expect_refused(db_conn, "UPDATE audit_log SET action = 'x' WHERE id = $1", row_id)  # ...only
            await _expect_refused(db_conn, "DELETE FROM audit_log WHERE id = $1", row_id)
            await _expect_refused(db_conn, "TRUNCATE audit_log")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="owner"):
                await db_conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db_conn.execute("SET session_replication_role = replica")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await db_conn.execute("DROP TABLE audit_log")
            assert await audit_repo.purge(db_conn, keep_days=0) == 0  # nothing six months old yet
        finally:
            await db_conn.execute("RESET ROLE")
        assert await db_conn.fetchval("SELECT count(*) FROM audit_log WHERE action IN ('read', 'update')") == 2
    finally:
        await db_conn.execute(f'DROP OWNED BY "{role}"')
        await db_conn.execute(f'DROP ROLE "{role}"')


async def test_purge_removes_only_rows_past_the_retention_and_never_younger_than_six_months(
    db_conn: asyncpg.Connection,
) -> None:
    # Old rows can only be made by a superuser switching triggers off (replica mode): test set-up only.
    await db_conn.execute("SET session_replication_role = replica")
    try:
        for days in (400, 200, 170, 1):
            await db_conn.execute(
                "INSERT INTO audit_log (at, actor_role, action, object_type, object_id)"
                " VALUES (now() - make_interval(days => $1), 'doctor', 'read', 'patient', $2)",
                days,
                str(days),
            )
    finally:
        await db_conn.execute("SET session_replication_role = origin")

    async def left() -> list[str]:
        rows = await db_conn.fetch("SELECT object_id FROM audit_log WHERE action = 'read' ORDER BY at")
        return [r["object_id"] for r in rows]

    assert await audit_repo.purge(db_conn, keep_days=365) == 1
    assert await left() == ["200", "170", "1"]
    assert await audit_repo.purge(db_conn, keep_days=7) == 1  # asked for 7 days: six months are kept all the same
    assert await left() == ["170", "1"]
    assert await audit_repo.purge(db_conn) == 0
    purges = await db_conn.fetch("SELECT actor_role, detail FROM audit_log WHERE action = 'purge' ORDER BY id")
    assert [p["detail"]["deleted"] for p in purges] == [1, 1, 0]
    assert {p["actor_role"] for p in purges} == {"system"}
    # Without the function, even a row past the retention stays.
    await db_conn.execute("SET session_replication_role = replica")
    try:
        await db_conn.execute(
            "INSERT INTO audit_log (at, actor_role, action, object_type, object_id)"
            " VALUES (now() - interval '1 year', 'doctor', 'read', 'patient', 'old')"
        )
    finally:
        await db_conn.execute("SET session_replication_role = origin")
    await _expect_refused(db_conn, "DELETE FROM audit_log WHERE object_id = 'old'")


async def test_the_auditor_role_is_held_alone(db_conn: asyncpg.Connection) -> None:
    assert await db_conn.fetchval("SELECT name_zh FROM role WHERE code = 'auditor'") == "审计员"
    await db_conn.execute("INSERT INTO hospital VALUES ('hx', 'X', 'X')")
    ids = await db_conn.fetch(
        "INSERT INTO staff_user (hospital_id, username, display_name, password_hash)"
        " VALUES ('hx', 'a1', 'A', '-'), ('hx', 'a2', 'B', '-') RETURNING id"
    )
    await db_conn.execute("INSERT INTO staff_role VALUES ($1, 'auditor')", ids[0]["id"])
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute("INSERT INTO staff_role VALUES ($1, 'sys_admin')", ids[0]["id"])
    await db_conn.execute("INSERT INTO staff_role VALUES ($1, 'sys_admin')", ids[1]["id"])
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute("INSERT INTO staff_role VALUES ($1, 'auditor')", ids[1]["id"])
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute("UPDATE staff_role SET user_id = $1 WHERE user_id = $2", ids[0]["id"], ids[1]["id"])


# --------------------------------------------------------------------------------------------------
# The auditor's API
# --------------------------------------------------------------------------------------------------


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, "", "", background=False, services=services)
    app.state.services = services  # ASGITransport does not run the lifespan
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hy.test") as c:
        yield c


async def _auth(services: Services, username: str) -> dict[str, str]:
    return {"authorization": f"Bearer {await token_for(services, username)}"}


async def test_only_the_auditor_reads_the_log(services: Services, client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/audit", "/api/v1/audit/export"):
        assert (await client.get(path)).status_code == 401
        for user in ("admin", "doctor", "clerk", "deptadmin", "depthead", "patient"):
            r = await client.get(path, headers=await _auth(services, user))
            assert r.status_code == 403, (path, user, r.status_code)
            assert r.json()["code"] == "forbidden"
    r = await client.get("/api/v1/audit", headers=await _auth(services, "auditor"))
    assert r.status_code == 200, r.text


async def test_the_auditor_searches_by_patient_actor_action_and_time(
    services: Services, client: httpx.AsyncClient
) -> None:
    doctor, clerk = await actor_for(services, "doctor"), await actor_for(services, "clerk")
    pid_a, pid_b = 900_001, 900_002
    await audit_repo.record(services.pool, doctor, "read", "patient.orders", str(pid_a), pid_a, {"n": 1})
    await audit_repo.record(services.pool, doctor, "update", "appointment", "55", pid_a)
    await audit_repo.record(services.pool, clerk, "read", "patient.orders", str(pid_b), pid_b)
    headers = await _auth(services, "auditor")

    async def entries(**params: str | int | None) -> list[dict[str, object]]:
        r = await client.get("/api/v1/audit", params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] >= len(body["items"])
        items: list[dict[str, object]] = body["items"]
        return items

    by_a = await entries(patient_id=pid_a)
    assert [(e["action"], e["object_type"]) for e in by_a] == [("update", "appointment"), ("read", "patient.orders")]
    first = by_a[1]
    assert first["actor_username"] == "doctor" and first["actor_role"] == "doctor" and first["actor_name"]
    assert first["terminal"] == "pytest" and first["detail"] == {"n": 1} and first["patient_id"] == pid_a
    assert "+08:00" in str(first["at"])  # shown in the hospital's zone

    assert {e["patient_id"] for e in await entries(actor_id=clerk.user_id, object_type="patient.orders")} == {pid_b}
    assert [e["object_id"] for e in await entries(patient_id=pid_a, action="update")] == ["55"]
    assert [e["object_id"] for e in await entries(object_id=str(pid_b))] == [str(pid_b)]
    assert len(await entries(patient_id=pid_a, limit=1)) == 1
    assert len(await entries(patient_id=pid_a, limit=1, offset=1)) == 1

    zone = ZoneInfo(services.settings.booking.timezone)
    today = datetime.now(zone).date()
    by_doctor = {"patient_id": pid_a, "actor_id": doctor.user_id}  # the auditor's own searches name pid_a too
    assert len(await entries(**by_doctor, to=today.isoformat())) == 2  # a date is the whole day
    assert await entries(**by_doctor, to=(today - timedelta(days=1)).isoformat()) == []
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert await entries(**by_doctor, **{"from": tomorrow, "to": tomorrow}) == []
    since = (datetime.now(zone) - timedelta(hours=1)).replace(tzinfo=None).isoformat(timespec="seconds")
    assert len(await entries(**by_doctor, **{"from": since})) == 2  # no offset: the hospital's zone
    assert len(await entries(patient_id=pid_a)) > 2  # ...as the rows below show

    # Every search is itself in the log, under the auditor's name, with its filters.
    rows = await services.pool.fetch(
        "SELECT actor_role, detail FROM audit_log WHERE action = 'query' AND object_type = 'audit_log'"
        " AND patient_id = $1 ORDER BY id",
        pid_a,
    )
    assert rows and {r["actor_role"] for r in rows} == {"auditor"}
    assert rows[0]["detail"]["patient_id"] == pid_a and rows[0]["detail"]["returned"] == 2


async def test_bad_queries_are_refused(services: Services, client: httpx.AsyncClient) -> None:
    headers = await _auth(services, "auditor")
    for params in (
        {"from": "2026-02-01", "to": "2026-01-01"},
        {"from": "2026-13-45"},
        {"from": "yesterday"},
        {"limit": "0"},
        {"limit": "5000"},
        {"patient_id": "-1"},
        {"colour": "red"},
    ):
        r = await client.get("/api/v1/audit", params=params, headers=headers)
        assert r.status_code == 422, (params, r.status_code, r.text)
    r = await client.get("/api/v1/audit/export", params={"from": "2024-01-01", "to": "2026-01-01"}, headers=headers)
    assert r.status_code == 422 and "366" in r.json()["title"]


async def test_the_auditor_exports_csv_for_excel(services: Services, client: httpx.AsyncClient) -> None:
    doctor = await actor_for(services, "doctor")
    pid = 900_003
    await audit_repo.record(services.pool, doctor, "read", "patient", '=HYPERLINK("x")', pid, {"q": "张三"})
    await audit_repo.record(services.pool, doctor, "print_slip", "appointment", "77", pid)
    today = datetime.now(ZoneInfo(services.settings.booking.timezone)).date().isoformat()
    r = await client.get(
        "/api/v1/audit/export",
        params={"from": today, "to": today, "patient_id": pid},
        headers=await _auth(services, "auditor"),
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="audit-')
    assert r.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM
    table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    header, rows = table[0], table[1:]
    assert header[0] == "编号 id" and "时间 at" in header and "患者ID patient_id" in header
    # Oldest first; the export itself, recorded before the first row went out, is the last row.
    assert [row[header.index("操作 action")] for row in rows] == ["read", "print_slip", "export"]
    first = dict(zip(header, rows[0], strict=True))
    assert first["对象ID object_id"] == '\'=HYPERLINK("x")'  # never a formula in Excel
    assert first["详情 detail"] == '{"q":"张三"}'
    assert first["操作人账号 actor_username"] == "doctor" and first["患者ID patient_id"] == str(pid)
    assert first["时间 at"].endswith("+08:00")
    exported = await services.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'export' AND actor_role = 'auditor' AND patient_id = $1", pid
    )
    assert exported == 1


def test_csv_cells() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    assert csv_cell(None, zone) == ""
    assert csv_cell(-5, zone) == "-5"  # numbers are numbers
    assert csv_cell("-5", zone) == "'-5"  # text that a spreadsheet would evaluate is not
    assert csv_cell("@SUM(A1)", zone) == "'@SUM(A1)"
    assert csv_cell({"a": [1]}, zone) == '{"a":[1]}'
    assert csv_cell(datetime.fromisoformat("2026-01-01T00:00:00+00:00"), zone) == "2026-01-01T08:00:00+08:00"
