"""Plain-SQL migrations: sql/NNNN_description.sql, applied in order, each in its own transaction,
recorded in schema_migration. An advisory lock keeps two starting processes from racing."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg
import msgspec

from app.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

SQL_DIR = PROJECT_ROOT / "sql"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 7_310_001


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    path: Path


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 0001_name.sql, got {path.name!r}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, sql_dir: Path = SQL_DIR) -> list[int]:
    """Apply the pending migrations; returns the versions applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migration (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        applied = []
        for m in discover(sql_dir):
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migration (version, name) VALUES ($1, $2)", m.version, m.name)
            logger.info("applied migration %04d_%s", m.version, m.name)
            applied.append(m.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
