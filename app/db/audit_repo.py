"""SQL for the audit log: writing a row, the auditor's search and export, and the retention purge.

The table is append-only by the database's own triggers (sql/0014_audit_append_only.sql): nothing
here, nor anything else, can change or delete a row; old rows leave only through audit_purge().
The queries are static SQL (every filter is a parameter that may be NULL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from app.db.pool import database_errors
from app.security.actor import Actor

# Six calendar months are at most 184 days; the database never keeps less than six months anyway.
DEFAULT_KEEP_DAYS = 184


class AuditFilter(msgspec.Struct, frozen=True):
    """Rows with start <= at < end, narrowed by every filter that is not None."""

    start: datetime
    end: datetime
    patient_id: int | None = None
    actor_id: int | None = None
    actor_role: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None

    def args(self) -> tuple[Any, ...]:
        return (
            self.start,
            self.end,
            self.patient_id,
            self.actor_id,
            self.actor_role,
            self.action,
            self.object_type,
            self.object_id,
        )

    def described(self) -> dict[str, Any]:
        """The filter as it is recorded in the audit row of the query itself."""
        out: dict[str, Any] = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        for name in ("patient_id", "actor_id", "actor_role", "action", "object_type", "object_id"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


# The same filter in each statement, written out: no SQL is assembled at run time.
_SEARCH = """SELECT a.id, a.at, a.actor_id, u.username AS actor_username, u.display_name AS actor_name, a.actor_role,
       a.action, a.object_type, a.object_id, a.patient_id, a.ip, a.terminal, a.detail
  FROM audit_log a LEFT JOIN staff_user u ON u.id = a.actor_id
     WHERE a.at >= $1 AND a.at < $2
       AND ($3::bigint IS NULL OR a.patient_id = $3)
       AND ($4::bigint IS NULL OR a.actor_id = $4)
       AND ($5::text IS NULL OR a.actor_role = $5)
       AND ($6::text IS NULL OR a.action = $6)
       AND ($7::text IS NULL OR a.object_type = $7)
       AND ($8::text IS NULL OR a.object_id = $8)
 ORDER BY a.at DESC, a.id DESC LIMIT $9 OFFSET $10"""

_COUNT = """SELECT count(*) FROM audit_log a
     WHERE a.at >= $1 AND a.at < $2
       AND ($3::bigint IS NULL OR a.patient_id = $3)
       AND ($4::bigint IS NULL OR a.actor_id = $4)
       AND ($5::text IS NULL OR a.actor_role = $5)
       AND ($6::text IS NULL OR a.action = $6)
       AND ($7::text IS NULL OR a.object_type = $7)
       AND ($8::text IS NULL OR a.object_id = $8)"""

_EXPORT = """SELECT a.id, a.at, a.actor_id, u.username AS actor_username, u.display_name AS actor_name, a.actor_role,
       a.action, a.object_type, a.object_id, a.patient_id, a.ip, a.terminal, a.detail
  FROM audit_log a LEFT JOIN staff_user u ON u.id = a.actor_id
     WHERE a.at >= $1 AND a.at < $2
       AND ($3::bigint IS NULL OR a.patient_id = $3)
       AND ($4::bigint IS NULL OR a.actor_id = $4)
       AND ($5::text IS NULL OR a.actor_role = $5)
       AND ($6::text IS NULL OR a.action = $6)
       AND ($7::text IS NULL OR a.object_type = $7)
       AND ($8::text IS NULL OR a.object_id = $8)
 ORDER BY a.at, a.id"""


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    patient_id: int | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row: who (account and role), from where (address and terminal), what, on whom.
    The database stamps the time."""
    async with database_errors():
        await conn.execute(
            """INSERT INTO audit_log (actor_id, actor_role, action, object_type, object_id, patient_id, ip,
                                      terminal, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            actor.user_id,
            actor.role,
            action,
            object_type,
            object_id,
            patient_id,
            actor.ip,
            actor.terminal,
            detail or {},
        )


async def search(
    conn: asyncpg.Connection | asyncpg.Pool, where: AuditFilter, limit: int, offset: int
) -> tuple[int, list[asyncpg.Record]]:
    """(rows matching in all, one page of them newest first)."""
    async with database_errors():
        total = await conn.fetchval(_COUNT, *where.args())
        rows = await conn.fetch(_SEARCH, *where.args(), limit, offset)
    return int(total), rows


async def export(pool: asyncpg.Pool, where: AuditFilter, batch: int = 500) -> AsyncIterator[list[asyncpg.Record]]:
    """The matching rows oldest first, `batch` at a time, read through a cursor on a connection of
    its own: an export of months of rows never sits in memory whole."""
    async with database_errors(), pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(_EXPORT, *where.args())
        while True:
            rows = await cursor.fetch(batch)
            if not rows:
                return
            yield rows


async def purge(conn: asyncpg.Connection | asyncpg.Pool, keep_days: int = DEFAULT_KEEP_DAYS) -> int:
    """Delete the rows older than `keep_days` days (never younger than six calendar months: the
    database holds that floor); returns how many went. The purge is itself recorded in the log."""
    async with database_errors():
        return int(await conn.fetchval("SELECT audit_purge($1)", keep_days))
