"""Test fixtures on the real servers: PostgreSQL and Redis from DATABASE_URL / REDIS_URL, or the
embedded ones when those are not set (exactly like the platform itself).

Isolation: every test gets its own PostgreSQL database cloned from a template (an empty migrated
one, or one with the demo hospital and its slots), and its own Redis key prefix.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.db.migrate import migrate
from app.db.pool import connect
from app.demo.data import PATIENTS
from app.demo.seed import seed_demo
from app.embedded import EmbeddedServers, database_url
from app.security.idcard import is_valid_id_number
from app.services import Services
from app.settings import PROJECT_ROOT, Settings, load_settings

# Per test session, so two sessions on one server (a developer's and CI's) never share templates.
_SESSION = uuid.uuid4().hex[:8]
EMPTY_TEMPLATE = f"hy_test_empty_{_SESSION}"
SEEDED_TEMPLATE = f"hy_test_seeded_{_SESSION}"


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    parts = urlsplit(url)
    if parts.netloc.endswith("@") or parts.netloc == "":
        return database_url(url, name)  # socket form: postgresql://user:@/db?host=/dir
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class Servers:
    def __init__(self, database: str, redis: str) -> None:
        self.database = database
        self.redis = redis


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    db, rd = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    embedded = None
    if not db or not rd:
        embedded = EmbeddedServers(Path(os.environ.get("HY_TEST_DATA_DIR", PROJECT_ROOT / ".data" / "test")))
        if not db:
            db = embedded.start_postgres()
        if not rd:
            rd = embedded.start_valkey()
    try:
        yield Servers(db, rd)
    finally:
        if embedded is not None:
            embedded.stop()


async def _recreate(admin: asyncpg.Connection, name: str, template: str | None = None) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    clause = f' TEMPLATE "{template}"' if template else ""
    await admin.execute(f'CREATE DATABASE "{name}"{clause}')


@pytest.fixture(scope="session")
async def admin_conn(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(servers.database)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def templates(servers: Servers, admin_conn: asyncpg.Connection) -> AsyncIterator[dict[str, str]]:
    """Build the two template databases once per session (and drop them after it)."""
    await _recreate(admin_conn, EMPTY_TEMPLATE)
    conn = await connect(with_database(servers.database, EMPTY_TEMPLATE))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    await _recreate(admin_conn, SEEDED_TEMPLATE, EMPTY_TEMPLATE)
    conn = await connect(with_database(servers.database, SEEDED_TEMPLATE))
    try:
        await seed_demo(conn)
    finally:
        await conn.close()
    yield {"empty": EMPTY_TEMPLATE, "seeded": SEEDED_TEMPLATE}
    for name in (SEEDED_TEMPLATE, EMPTY_TEMPLATE):
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CloneDb:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name


async def _clone(servers: Servers, admin: asyncpg.Connection, template: str) -> CloneDb:
    name = f"hy_t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return CloneDb(with_database(servers.database, name), name)


async def _drop(admin: asyncpg.Connection, db: CloneDb) -> None:
    await admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture
async def empty_db(
    servers: Servers, admin_conn: asyncpg.Connection, templates: dict[str, str]
) -> AsyncIterator[CloneDb]:
    db = await _clone(servers, admin_conn, templates["empty"])
    yield db
    await _drop(admin_conn, db)


@pytest.fixture
async def seeded_db(
    servers: Servers, admin_conn: asyncpg.Connection, templates: dict[str, str]
) -> AsyncIterator[CloneDb]:
    db = await _clone(servers, admin_conn, templates["seeded"])
    yield db
    await _drop(admin_conn, db)


@pytest.fixture
async def db_conn(empty_db: CloneDb) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a freshly migrated, empty database."""
    conn = await connect(empty_db.url)
    yield conn
    await conn.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"hyt{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(servers: Servers, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis)
    yield client
    # Leave the shared server as we found it: only this test's keys go.
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=f"{redis_prefix}:*", count=1000)
        if keys:
            await client.delete(*keys)
        if cursor == 0:
            break
    await client.aclose()


def make_settings(db_url: str, redis_url: str, prefix: str, **env: str) -> Settings:
    return load_settings(
        {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "HY_REDIS_PREFIX": prefix, "HY_DB_POOL_MAX": "20", **env}
    )


@pytest.fixture
async def services(
    seeded_db: CloneDb, servers: Servers, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Services]:
    """The services on a demo-hospital database with slots generated for the horizon."""
    settings = make_settings(seeded_db.url, servers.redis, redis_prefix)
    svc = await Services.open(settings, seeded_db.url, servers.redis)
    await svc.pool_admin.generate()
    yield svc
    await svc.close()


# -- no personal data in the logs ------------------------------------------------------------------
#
# Every record any logger emits during a test (INFO and up, before any masking filter) is scanned
# for what must never be logged: a valid ID number, a mobile number, a patient's full name (the demo
# hospital's patients and the tests' own). A test whose code logged one fails.

_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
# Not inside a run of letters and digits (like the ID number above): a hex id such as a hold id
# "…b465b14628202146-0" holds eleven digits that only look like a mobile number.
_MOBILE = re.compile(r"(?<![0-9A-Za-z])1[3-9]\d{9}(?![0-9A-Za-z])")
_TEST_NAME = re.compile(r"测试患者\d+")
_NAMES = sorted({p.name for p in PATIENTS if len(p.name) >= 2}, key=len, reverse=True)


def personal_data_in(text: str) -> list[str]:
    found = [m for m in _ID_NUMBER.findall(text) if is_valid_id_number(m)]
    found += _MOBILE.findall(text) + _TEST_NAME.findall(text)
    found += [name for name in _NAMES if name in text]
    return found


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_personal_data_in_logs() -> Iterator[None]:
    root = logging.getLogger()
    handler, level = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    leaks = []
    for record in handler.records:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = str(record.msg)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for item in personal_data_in(text):
            leaks.append(f"{record.name}: {item!r} in {text[:200]!r}")
    assert not leaks, "personal data in log lines:\n" + "\n".join(leaks[:20])
