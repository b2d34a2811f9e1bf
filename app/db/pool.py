"""The PostgreSQL pool and the translation of database errors into the project's own errors.

Only app/db/ imports asyncpg.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson

from app.errors import (
    AppError,
    AppointmentNotLive,
    DatabaseUnavailable,
    HoldExpired,
    NotFound,
    OrderNotBookable,
    OrderStateConflict,
    PatientChanged,
    SlotLocked,
    SlotUnavailable,
    ValidationFailed,
)
from app.settings import DatabaseSettings

logger = logging.getLogger(__name__)

Pool = asyncpg.Pool
Connection = asyncpg.Connection
Record = asyncpg.Record

# Codes raised by the booking functions in sql/0002_booking_functions.sql.
_RAISED: dict[str, type[AppError]] = {
    "SLOT_FULL": SlotUnavailable,
    "SLOT_LOCKED": SlotLocked,
    "ORDER_NOT_BOOKABLE": OrderNotBookable,
    "EXAM_NOT_ON_RESOURCE": ValidationFailed,
    "HOLD_EXPIRED": HoldExpired,
    "APPOINTMENT_NOT_LIVE": AppointmentNotLive,
    "PATIENT_CHANGED": PatientChanged,
    "ORDER_STATE": OrderStateConflict,
    "ORDER_NOT_FOUND": NotFound,
}

_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,  # a connection the server dropped while a query was starting on it
    ConnectionError,
    OSError,
    TimeoutError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def _light_reset(conn: asyncpg.Connection) -> None:
    """Pool connections are never given session state (no SET, LISTEN, cursors or advisory
    locks: migrations use their own connection), so the default reset query -- a fifth round trip
    per booking -- is skipped. asyncpg still rolls back any transaction left open."""


async def create_pool(settings: DatabaseSettings, dsn: str) -> asyncpg.Pool:
    async with database_errors():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            command_timeout=settings.command_timeout_s,
            init=_init_connection,
            reset=_light_reset,
        )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    async with database_errors():
        conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Translate asyncpg errors into AppErrors at the database boundary."""
    try:
        yield
    except asyncpg.RaiseError as exc:
        error = _RAISED.get(str(exc.args[0]) if exc.args else "")
        if error is None:
            raise
        extra = {"state": exc.detail} if error is OrderStateConflict else {}
        raise error(detail=f"{exc.args[0]}: {exc.detail or ''}", **extra) from exc
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "appointment_one_live_per_order":
            raise OrderNotBookable(detail="order already has a live appointment") from exc
        raise
    except _UNAVAILABLE as exc:
        logger.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable(detail=f"postgres: {type(exc).__name__}") from exc
